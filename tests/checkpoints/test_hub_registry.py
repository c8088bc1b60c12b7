"""The two data files behind OpenCLIP's names, checked against open_clip itself so they cannot drift.

- ``pretrained.json``: regenerated from open_clip's table (``tests/helpers/pretrained_registry.py``) and compared
  with the shipped file; every entry checked field by field against ``open_clip.pretrained.get_pretrained_cfg``,
  and the table checked to be complete for every aliased model.
- ``open_clip_names.json``: every alias builds the model of OpenCLIP's ``model_configs/<name>.json`` (CLIP: the
  ``model_cfg`` open_clip would need for clipforge's config; SigLIP: the JSON and the timm image tower it names,
  built on the meta device).
"""

from __future__ import annotations

import dataclasses
import os

import pytest
import torch

open_clip = pytest.importorskip("open_clip")
from open_clip.model import CLIPTextCfg, CLIPVisionCfg  # noqa: E402
from open_clip.pretrained import get_pretrained_cfg, list_pretrained  # noqa: E402

from clipforge.checkpoints import hub  # noqa: E402
from clipforge.checkpoints.open_clip import open_clip_model_cfg  # noqa: E402
from clipforge.models.config import CLIPConfig  # noqa: E402
from clipforge.models.presets import list_presets  # noqa: E402
from helpers import pretrained_registry  # noqa: E402

ALIASES = hub.open_clip_aliases()
REGISTRY = hub.pretrained_registry()
SIGLIP = sorted(name for name in ALIASES if "SigLIP" in name)


def test_the_shipped_registry_is_what_the_generator_makes() -> None:
    shipped = pretrained_registry.REGISTRY.read_text(encoding="utf-8")
    assert pretrained_registry.render(pretrained_registry.build_registry()) == shipped, \
        "pretrained.json is stale: run tests/helpers/pretrained_registry.py"


@pytest.mark.parametrize(("model", "tag"), hub.list_pretrained(), ids=lambda x: str(x))
def test_every_entry_is_open_clips(model: str, tag: str) -> None:
    """Repository and files as OpenCLIP's ``download_pretrained`` finds them, and every fact it applies."""
    cfg, entry = get_pretrained_cfg(model, tag), REGISTRY[model][tag]
    repo, filename = os.path.split(cfg["hf_hub"])
    filename = filename or open_clip.constants.HF_WEIGHTS_NAME
    assert entry["repo"] == repo
    assert entry["files"] == [*open_clip.pretrained._get_safe_alternatives(filename), filename]
    assert entry["quick_gelu"] == cfg.get("quick_gelu", False)
    assert tuple(entry["mean"]) == tuple(cfg["mean"]) and tuple(entry["std"]) == tuple(cfg["std"])
    assert (entry["resize_mode"], entry["interpolation"]) == (cfg["resize_mode"], cfg["interpolation"])
    assert entry["model_config"] == model and open_clip.get_model_config(model) is not None
    # What clipforge applies: its transforms resize bicubic, and know both resize modes.
    assert entry["interpolation"] == "bicubic" and entry["resize_mode"] in hub.RESIZE_MODES


def test_the_registry_is_complete_for_every_aliased_model() -> None:
    theirs = {(m, t) for m, t in list_pretrained() if m in ALIASES and get_pretrained_cfg(m, t).get("hf_hub")}
    assert set(hub.list_pretrained()) == theirs
    with_weights = {m for m, _ in list_pretrained()}
    unsupported = set(hub._data("pretrained.json")["unsupported_models"])
    assert with_weights == set(REGISTRY) | unsupported and not set(REGISTRY) & unsupported
    assert hub._data("pretrained.json")["url_only"] == []  # open_clip 3.3.0 has every weight on the Hub


def test_every_alias_names_an_open_clip_config_and_a_registered_preset() -> None:
    for name, alias in ALIASES.items():
        assert open_clip.get_model_config(name) is not None, name
        if "SigLIP" not in name or any(p.startswith("SigLIP") for p in list_presets()):
            assert alias["preset"] in list_presets(), name
        assert set(alias) <= {"preset", "overrides"}, name


def _open_clip_cfg(name: str) -> dict:
    """OpenCLIP's model config with its dataclass defaults filled in, as ``open_clip.model.CLIP`` reads it."""
    cfg = open_clip.get_model_config(name)
    return {"embed_dim": cfg["embed_dim"], "quick_gelu": cfg.get("quick_gelu", False),
            "vision_cfg": {**dataclasses.asdict(CLIPVisionCfg()), **cfg["vision_cfg"]},
            "text_cfg": {**dataclasses.asdict(CLIPTextCfg()), **cfg["text_cfg"]}}


@pytest.mark.parametrize("name", sorted(n for n in ALIASES if "SigLIP" not in n))
def test_clip_aliases_build_open_clips_model(name: str) -> None:
    config = hub.build_named_config(name)
    assert isinstance(config, CLIPConfig)
    ours, theirs = open_clip_model_cfg(config), _open_clip_cfg(name)
    for tower in ("vision_cfg", "text_cfg"):
        for key, value in ours[tower].items():
            assert theirs[tower][key] == value, (tower, key)
    assert ours["embed_dim"] == theirs["embed_dim"]
    if name in list_presets():  # RN50…: clipforge's preset wins, OpenAI's QuickGELU (docs/checkpoints.md)
        assert ours["quick_gelu"] and not theirs["quick_gelu"]
    else:
        assert ours["quick_gelu"] == theirs["quick_gelu"]


def _timm_tower(model_name: str) -> dict:
    import timm

    with torch.device("meta"):
        trunk = timm.create_model(model_name, pretrained=False)
    block = trunk.blocks[0]
    act = "gelu_tanh" if getattr(block.mlp.act, "approximate", None) in ("tanh", None) else "gelu"
    return {"width": trunk.embed_dim, "layers": len(trunk.blocks), "heads": block.attn.num_heads,
            "hidden": block.mlp.fc1.out_features, "patch_size": trunk.patch_embed.patch_size[0], "act": act}


@pytest.mark.parametrize("name", SIGLIP)
def test_siglip_aliases_build_open_clips_model(name: str) -> None:
    pytest.importorskip("timm")
    if not any(p.startswith("SigLIP") for p in list_presets()):
        pytest.skip("this build registers no SigLIP presets")
    config = hub.build_named_config(name)
    cfg = open_clip.get_model_config(name)
    vision, text = cfg["vision_cfg"], cfg["text_cfg"]
    trunk = _timm_tower(vision["timm_model_name"])
    v, t = config.vision, config.text
    assert config.embed_dim == cfg["embed_dim"] and v.image_size == vision["image_size"]
    assert (v.width, v.layers, v.heads, v.patch_size) == (trunk["width"], trunk["layers"], trunk["heads"],
                                                          trunk["patch_size"])
    assert int(v.width * v.mlp_ratio) == trunk["hidden"]
    assert (v.act or config.act) == trunk["act"]
    assert (t.context_length, t.vocab_size, t.width, t.heads, t.layers) == (
        text["context_length"], text["vocab_size"], text["width"], text["heads"], text["layers"])
    assert int(t.width * t.mlp_ratio) == int(text["width"] * text.get("mlp_ratio", 4.0))
    text_act = "gelu_tanh" if (text.get("act_kwargs") or {}).get("approximate") == "tanh" else "gelu"
    assert config.act == text_act
    assert not t.causal and text["no_causal_mask"] and t.pool == text["pool_type"] == "last"
    assert t.proj_bias == text.get("proj_bias", False) and config.norm_eps == text["norm_kwargs"]["eps"]
