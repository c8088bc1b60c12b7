"""OpenCLIP's SigLIP layout (a timm image tower) through the hub names: ``hf-hub:`` hands the snapshot to format
detection like any other repository, and a pretrained tag builds its name's SigLIP config, per-tower activations
included. The reference is open_clip's own ``CustomTextCLIP`` around a timm ViT registered at tiny shapes, saved
with open_clip's ``save_for_hf`` into an offline hub cache."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch

open_clip = pytest.importorskip("open_clip")
timm = pytest.importorskip("timm")
pytest.importorskip("huggingface_hub")
from timm.models import register_model  # noqa: E402
from timm.models.vision_transformer import VisionTransformer  # noqa: E402

import clipforge  # noqa: E402
from clipforge.checkpoints import hub  # noqa: E402
from clipforge.models.presets import list_presets  # noqa: E402
from helpers import pretrained_registry  # noqa: E402
from helpers.hub_cache import add_directory, offline_hub, randomise, save_open_clip_repo  # noqa: E402

if "siglip-tiny" not in list_presets():
    pytest.skip("this build registers no SigLIP presets", allow_module_level=True)

TOL = 1e-5
TIMM_NAME = "vit_hubtest_siglip_32"
TEXT = {"context_length": 12, "vocab_size": 49408, "width": 48, "heads": 3, "layers": 2, "no_causal_mask": True,
        "proj_bias": True, "pool_type": "last", "norm_kwargs": {"eps": 1e-6}, "act_kwargs": {"approximate": "tanh"}}
# As OpenCLIP's SigLIP 2 B/16: timm's exact GELU in the image tower, tanh-GELU in the text tower.
MODEL_CFG = {"embed_dim": 64, "init_logit_bias": -10, "custom_text": True, "text_cfg": TEXT,
             "vision_cfg": {"image_size": 32, "timm_model_name": TIMM_NAME, "timm_model_pretrained": False,
                            "timm_pool": "map", "timm_proj": "none"}}
ALIAS = {"preset": "siglip-tiny", "overrides": {
    "embed_dim": 64, "act": "gelu_tanh",
    "vision": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 2, "heads": 4, "act": "gelu"},
    "text": {"context_length": 12, "vocab_size": 49408, "width": 48, "heads": 3, "layers": 2}}}
NAME, TAG, REPO = "tiny-hubtest-SigLIP2", "webli", "test-org/tiny-siglip"


def _register() -> None:
    def vit_hubtest_siglip_32(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
        keep = {k: v for k, v in kwargs.items() if k in ("num_classes", "global_pool")}
        return VisionTransformer(**({"img_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 4,
                                     "class_token": False, "global_pool": "map"} | keep))

    if not timm.is_model(TIMM_NAME):
        register_model(vit_hubtest_siglip_32)


@pytest.fixture(scope="module")
def reference_repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    _register()
    torch.manual_seed(0)
    kwargs = {k: v for k, v in copy.deepcopy(MODEL_CFG).items() if k != "custom_text"}
    model = randomise(open_clip.CustomTextCLIP(**kwargs))
    from open_clip.model import set_model_preprocess_cfg

    set_model_preprocess_cfg(model, {"size": 32, "mode": "RGB", "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5),
                                     "interpolation": "bicubic", "resize_mode": "squash", "fill_color": 0})
    return model, save_open_clip_repo(model, MODEL_CFG, tmp_path_factory.mktemp("siglip") / "repo")


@pytest.fixture
def cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, reference_repo: tuple[Any, Path]) -> Path:
    cache = offline_hub(monkeypatch, tmp_path / "hf")
    add_directory(cache, REPO, reference_repo[1])
    monkeypatch.setitem(open_clip.factory._MODEL_CONFIGS, NAME, MODEL_CFG)
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, NAME, {TAG: open_clip.pretrained._slpcfg(
        hf_hub=f"{REPO}/")})
    registry = {**hub.pretrained_registry(), NAME: {TAG: pretrained_registry.entry(NAME, TAG)}}
    aliases = {**hub.open_clip_aliases(), NAME: ALIAS}
    monkeypatch.setattr(hub, "pretrained_registry", lambda: registry)
    monkeypatch.setattr(hub, "open_clip_aliases", lambda: aliases)
    return cache


def assert_parity(reference: Any, model: torch.nn.Module) -> None:
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(2, 3, 32, 32, generator=generator)
    tokens = torch.randint(0, 49408, (3, 12), generator=generator)
    with torch.no_grad():
        assert (model.encode_image(images) - reference.encode_image(images)).abs().max() <= TOL
        assert (model.encode_text(tokens) - reference.encode_text(tokens)).abs().max() <= TOL


@pytest.mark.parametrize(("name", "pretrained"), [(f"hf-hub:{REPO}", None), (NAME, TAG), (f"{NAME}:{TAG}", None)])
def test_open_clip_siglip_loads_by_every_hub_name(cache: Path, reference_repo: tuple[Any, Path], name: str,
                                                  pretrained: str | None) -> None:
    reference, _ = reference_repo
    model, eval_tf, _ = clipforge.load(name, pretrained=pretrained)
    assert model.config.family == "siglip" and model.config.vision.act == "gelu" and model.config.act == "gelu_tanh"
    assert eval_tf.resize == "squash" and eval_tf.mean == (0.5, 0.5, 0.5)
    assert_parity(reference, model)
    # open_clip's own loading of the same cache entry agrees, so the cache is what OpenCLIP reads too.
    if pretrained is not None:
        theirs = open_clip.create_model(name, pretrained=pretrained)
        assert_parity(theirs.eval(), model)
