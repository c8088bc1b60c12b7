"""OpenCLIP's SigLIP checkpoints (``CustomTextCLIP``: a timm image tower and open_clip's text tower) → clipforge.

Each reference is built by open_clip itself from a model config (as ``open_clip_config.json`` carries it), with a
timm ViT registered here at tiny shapes (open_clip's ``TimmModel`` builds a registered timm name with its default
size), every tensor perturbed so no symmetric initial value hides a swapped mapping, and saved the way the
``hf-hub:timm/ViT-*-SigLIP*`` repos hold it: ``open_clip_model.safetensors`` beside ``open_clip_config.json``.
The towers' activations differ per config (exact GELU in both, as OpenCLIP's SigLIP; tanh-GELU text, as its
SigLIP 2; tanh-GELU in both, as its g-opt), so a wrong per-tower activation fails the 1e-5 check.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

open_clip = pytest.importorskip("open_clip")
timm = pytest.importorskip("timm")
from timm.models import register_model  # noqa: E402
from timm.models.vision_transformer import VisionTransformer  # noqa: E402

import clipforge  # noqa: E402
from clipforge.checkpoints import convert, detect_format, load_any  # noqa: E402
from clipforge.checkpoints.native import CheckpointError  # noqa: E402
from clipforge.checkpoints.open_clip import load_open_clip  # noqa: E402
from clipforge.checkpoints.open_clip_siglip import timm_vision_facts  # noqa: E402
from clipforge.models.factory import build_config  # noqa: E402

TOL = 1e-5
TINY_VIT = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, class_token=False, global_pool="map")


def _register(name: str, **args: Any) -> None:
    """Registers a timm model ``name`` building a ``VisionTransformer(**args)`` (what timm's SigLIP defs are)."""
    def build(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
        keep = {k: v for k, v in kwargs.items() if k in ("num_classes", "global_pool", "patch_drop_rate")}
        return VisionTransformer(**(args | keep))

    build.__name__ = name
    if not timm.is_model(name):
        register_model(build)


_register("vit_cftest_siglip_32", **TINY_VIT)  # timm's default: exact GELU
_register("vit_cftest_siglip_tanh_32", **TINY_VIT, act_layer="gelu_tanh")  # as timm's g-opt def

TEXT = {"context_length": 12, "vocab_size": 500, "width": 48, "heads": 3, "layers": 2, "no_causal_mask": True,
        "proj_bias": True, "pool_type": "last", "norm_kwargs": {"eps": 1e-6}}
VISION = {"image_size": 32, "timm_model_name": "vit_cftest_siglip_32", "timm_model_pretrained": False,
          "timm_pool": "map", "timm_proj": "none"}
TINY = {
    "siglip": {"embed_dim": 64, "init_logit_bias": -10, "custom_text": True, "vision_cfg": VISION, "text_cfg": TEXT},
    "siglip2": {"embed_dim": 64, "init_logit_bias": -10, "custom_text": True, "vision_cfg": VISION,
                "text_cfg": TEXT | {"act_kwargs": {"approximate": "tanh"}}},
    "gopt": {"embed_dim": 64, "init_logit_bias": -10, "custom_text": True,
             "vision_cfg": VISION | {"timm_model_name": "vit_cftest_siglip_tanh_32"},
             "text_cfg": TEXT | {"act_kwargs": {"approximate": "tanh"}}},
}
PREPROCESS = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "interpolation": "bicubic", "resize_mode": "squash"}


def reference_model(model_cfg: dict[str, Any], seed: int = 0) -> torch.nn.Module:
    """open_clip's own build of ``model_cfg`` with every float tensor perturbed."""
    torch.manual_seed(seed)
    kwargs = {k: v for k, v in copy.deepcopy(model_cfg).items() if k != "custom_text"}
    model = open_clip.CustomTextCLIP(**kwargs)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point() and name != "logit_scale":
                tensor.add_(0.02 * torch.randn_like(tensor))
    return model.eval()


def save_hub_dir(model: torch.nn.Module, model_cfg: dict[str, Any], directory: Path) -> Path:
    """The ``hf-hub:timm/...`` layout: ``open_clip_model.safetensors`` + ``open_clip_config.json``."""
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(directory / "open_clip_model.safetensors"))
    meta = {"model_cfg": model_cfg, "preprocess_cfg": PREPROCESS}
    (directory / "open_clip_config.json").write_text(json.dumps(meta))
    return directory


def assert_parity(reference: torch.nn.Module, model: torch.nn.Module, model_cfg: dict[str, Any]) -> None:
    size, text_cfg = model_cfg["vision_cfg"]["image_size"], model_cfg["text_cfg"]
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(3, 3, size, size, generator=gen)
    tokens = torch.randint(0, text_cfg["vocab_size"], (3, text_cfg["context_length"]), generator=gen)
    with torch.no_grad():
        ref_img, ref_txt = reference.encode_image(images), reference.encode_text(tokens)
        img, txt = model.encode_image(images), model.encode_text(tokens)
        assert img.shape == ref_img.shape and txt.shape == ref_txt.shape
        assert (img - ref_img).abs().max() <= TOL
        assert (txt - ref_txt).abs().max() <= TOL
        ref_img, ref_txt, ref_scale, ref_bias = reference(images, tokens)  # normalised features, exp(scale), bias
        out = model(images, tokens)
        assert (out.image_features - ref_img).abs().max() <= TOL
        assert (out.text_features - ref_txt).abs().max() <= TOL
        assert torch.allclose(out.logit_scale, ref_scale) and torch.allclose(out.logit_bias, ref_bias)


@pytest.mark.parametrize("kind", list(TINY))
def test_features_match_open_clip(kind: str, tmp_path: Path) -> None:
    model_cfg = TINY[kind]
    reference = reference_model(model_cfg)
    directory = save_hub_dir(reference, model_cfg, tmp_path / kind)
    assert detect_format(directory) == "open_clip"
    model = load_any(directory)
    config = model.config
    assert config.family == "siglip" and config.max_logit_scale is None and config.image_resize == "squash"
    image_act, text_act = {"siglip": ("gelu", "gelu"), "siglip2": ("gelu", "gelu_tanh"),
                           "gopt": ("gelu_tanh", "gelu_tanh")}[kind]
    assert (config.vision.act or config.act, config.text.act or config.act) == (image_act, text_act)
    assert (config.vision.heads, config.text.heads, config.text.causal, config.text.pool) == (4, 3, False, "last")
    assert_parity(reference, model, model_cfg)


def test_a_wrong_activation_would_be_caught(tmp_path: Path) -> None:
    """The parity check can fail: the SigLIP 2 reference read with exact GELU in the text tower is off by > 1e-5."""
    reference = reference_model(TINY["siglip2"])
    directory = save_hub_dir(reference, TINY["siglip2"], tmp_path / "m")
    model = load_any(directory, act="gelu")
    with pytest.raises(AssertionError):
        assert_parity(reference, model, TINY["siglip2"])


def test_tokenizer_is_recorded_by_vocabulary_and_file(tmp_path: Path) -> None:
    cfg = copy.deepcopy(TINY["siglip2"])
    directory = save_hub_dir(reference_model(cfg), cfg, tmp_path / "m")
    config, _ = load_open_clip(directory)
    assert config.tokenizer == {"kind": "sentencepiece", "style": "siglip"}  # a 500-piece vocabulary
    (directory / "tokenizer.model").write_bytes(b"placeholder")  # only its name is looked at here
    config, _ = load_open_clip(directory)
    assert config.tokenizer == {"kind": "sentencepiece", "style": "siglip", "file": "tokenizer.model"}


def test_clipforge_load_reads_the_directory_and_its_sentencepiece_model(tmp_path: Path) -> None:
    """``clipforge.load`` of a hub directory with ``spiece.model``: the model, its squash transform and SigLIP's
    tokenizer from that file; ``convert`` to clipforge's format carries the file along."""
    sentencepiece = pytest.importorskip("sentencepiece")
    from helpers.spm import train_spm

    spiece = train_spm(tmp_path / "m", "siglip")
    cfg = copy.deepcopy(TINY["siglip"])
    cfg["text_cfg"]["vocab_size"] = sentencepiece.SentencePieceProcessor(model_file=str(spiece)).get_piece_size()
    reference = reference_model(cfg)
    directory = save_hub_dir(reference, cfg, tmp_path / "m")
    model, _, tokenizer = clipforge.load(directory)
    tokens = tokenizer(["a photo of a cat", "Two dogs, playing!"])
    assert tokens.shape == (2, TEXT["context_length"]) and int(tokens[0, -1]) == 1  # padded with </s>
    with torch.no_grad():
        assert (model.encode_text(tokens) - reference.encode_text(tokens)).abs().max() <= TOL
    out = convert(directory, tmp_path / "native", to="clipforge")
    assert (out / "spiece.model").read_bytes() == spiece.read_bytes()
    again, _, again_tokenizer = clipforge.load(out)
    assert torch.equal(again_tokenizer(["a photo of a cat"]), tokens[:1])
    for key, value in model.state_dict().items():
        assert torch.equal(value, again.state_dict()[key]), key


def test_a_bare_weights_file_is_read_with_announced_guesses(tmp_path: Path) -> None:
    model_cfg = TINY["siglip"]
    reference = reference_model(model_cfg)
    directory = save_hub_dir(reference, model_cfg, tmp_path / "m")
    (directory / "open_clip_config.json").unlink()
    with pytest.warns(UserWarning, match="guessed"):
        config, state = load_open_clip(directory / "open_clip_model.safetensors")
    # No config: bidirectional, last-token pooling, exact GELU (OpenCLIP's SigLIP), heads width // 64 (no preset).
    assert (config.text.causal, config.text.pool, config.act, config.vision.act) == (False, "last", "gelu", None)
    assert (config.vision.heads, config.text.heads) == (1, 1)
    with pytest.warns(UserWarning, match="1 image heads; 1 text heads guessed") as record:
        config, _ = load_open_clip(directory, act="gelu_tanh")  # the activation is known now, the heads are not
    assert "act" not in str(record[0].message).split("guessed")[0]
    assert (config.act, config.vision.act, config.text.act) == ("gelu_tanh", None, None)
    with pytest.warns(UserWarning, match="heads guessed"):
        assert set(state) == set(load_any(directory, act="gelu").state_dict())


def test_a_bare_weights_file_is_detected_as_open_clip(tmp_path: Path) -> None:
    """OpenCLIP's SigLIP keys (``text.token_embedding``, ``visual.trunk.*``) name the format even without a directory,
    with DDP's ``module.`` prefix too."""
    model_cfg = TINY["siglip"]
    reference = reference_model(model_cfg)
    directory = save_hub_dir(reference, model_cfg, tmp_path / "m")
    file = directory / "open_clip_model.safetensors"
    alone = tmp_path / "weights.safetensors"
    alone.write_bytes(file.read_bytes())
    assert detect_format(alone) == "open_clip"
    prefixed = tmp_path / "ddp.safetensors"
    save_file({f"module.{k}": v.contiguous() for k, v in reference.state_dict().items()}, str(prefixed))
    assert detect_format(prefixed) == "open_clip"
    with pytest.warns(UserWarning, match="guessed"):
        model = load_any(alone)
    assert model.config.family == "siglip"


def test_bad_configs_get_clear_errors(tmp_path: Path) -> None:
    model_cfg = TINY["siglip"]
    reference = reference_model(model_cfg)
    directory = save_hub_dir(reference, model_cfg, tmp_path / "m")
    meta = json.loads((directory / "open_clip_config.json").read_text())
    for text_cfg, message in [({"norm_kwargs": {}}, "norm_kwargs.eps=1e-05"),
                              ({"pool_type": "first"}, "pool_type='first'"),
                              ({"embed_cls": True}, "text_cfg.embed_cls=True"),
                              ({"act_kwargs": {"inplace": True}}, "act_kwargs"),
                              ({"heads": "3"}, r"text_cfg.heads: expected a non-negative integer, got '3'"),
                              ({"heads": 5}, "describe no valid SigLIP model"),  # 5 does not divide 48
                              ({"eos_id": True, "pool_type": "eos"}, "text_cfg.eos_id")]:
        broken = copy.deepcopy(meta)
        broken["model_cfg"]["text_cfg"] |= text_cfg
        (directory / "open_clip_config.json").write_text(json.dumps(broken))
        with pytest.raises(CheckpointError, match=message):
            load_open_clip(directory)
    broken = copy.deepcopy(meta)
    broken["model_cfg"]["vision_cfg"]["timm_model_name"] = ["vit"]
    (directory / "open_clip_config.json").write_text(json.dumps(broken))
    with pytest.raises(CheckpointError, match="timm_model_name: expected a string"):
        load_open_clip(directory)
    (directory / "open_clip_config.json").write_text(json.dumps(meta))
    state = dict(reference.state_dict())
    state["visual.trunk.extra.weight"] = torch.zeros(2)
    save_file({k: v.contiguous() for k, v in state.items()}, str(directory / "open_clip_model.safetensors"))
    with pytest.raises(CheckpointError, match=r"unexpected key 'visual.trunk.extra.weight'"):
        load_open_clip(directory)
    del state["visual.trunk.extra.weight"], state["visual.trunk.attn_pool.kv.bias"]
    save_file({k: v.contiguous() for k, v in state.items()}, str(directory / "open_clip_model.safetensors"))
    with pytest.raises(CheckpointError, match=r"missing key 'visual.trunk.attn_pool.kv.bias'"):
        load_open_clip(directory)


def test_timm_facts_of_the_released_image_towers() -> None:
    """Heads, activation and default size of timm's SigLIP defs, read off the defs on the meta device."""
    assert timm_vision_facts("vit_base_patch16_siglip_224", "x") == {"heads": 12, "act": "gelu", "image_size": 224}
    assert timm_vision_facts("vit_so400m_patch14_siglip_384", "x") == {"heads": 16, "act": "gelu",
                                                                       "image_size": 384}
    assert timm_vision_facts("vit_giantopt_patch16_siglip_256", "x") == {"heads": 16, "act": "gelu_tanh",
                                                                         "image_size": 256}
    assert timm_vision_facts("no_such_model", "x") is None
    with pytest.raises(CheckpointError, match="class token"):
        timm_vision_facts("vit_tiny_patch16_224", "x")


@pytest.mark.slow
@pytest.mark.parametrize(("name", "preset"), [("ViT-B-16-SigLIP", "SigLIP-B/16"),
                                              ("ViT-B-16-SigLIP2", "SigLIP2-B/16")])
def test_released_configs_match_open_clip(name: str, preset: str, tmp_path: Path) -> None:
    """OpenCLIP's released SigLIP B/16 configs at full size (random weights): features within 1e-5, and the
    config read from ``open_clip_config.json`` has the preset's shapes."""
    model_cfg = open_clip.get_model_config(name)
    reference = reference_model(model_cfg)
    model = load_any(save_hub_dir(reference, model_cfg, tmp_path / "m"))
    expected = build_config(preset)
    for field in ("image_size", "patch_size", "width", "layers", "heads", "mlp_ratio"):
        assert getattr(model.config.vision, field) == getattr(expected.vision, field), field
    for field in ("vocab_size", "context_length", "width", "layers", "heads", "causal", "pool", "proj_bias"):
        assert getattr(model.config.text, field) == getattr(expected.text, field), field
    assert model.config.tokenizer == expected.tokenizer
    assert_parity(reference, model, model_cfg)


def test_the_fallback_table_without_timm_agrees_with_timm_for_every_siglip_tower() -> None:
    """Without timm, heads and activation come from a table by the name; it must say what timm builds."""
    import timm

    from clipforge.checkpoints.open_clip_siglip import _named_vision_facts

    names = [n for n in timm.list_models("vit_*_siglip_*") if _named_vision_facts(n) is not None]
    assert len(names) > 10
    for name in names:
        facts = timm_vision_facts(name, "test")
        assert facts is not None
        assert _named_vision_facts(name) == {"heads": facts["heads"], "act": facts["act"]}, name
