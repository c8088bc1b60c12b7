"""The cost of a model config, known before building: exact parameter counts, and refusal beyond the limits."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import clipforge
from clipforge.config import ConfigError
from clipforge.models import factory
from clipforge.models.factory import build_config, build_model
from clipforge.models.size import (
    ACTIVATION_ENV,
    MAX_PARAMS,
    PARAMS_ENV,
    activation_bytes,
    check_model_size,
    parameter_count,
)

SHAPES: list[tuple[str, dict[str, Any]]] = [  # every option that changes the parameter set
    ("tiny-vit", {"vision": {"pool": "map", "class_token": False, "ln_pre": False, "patch_bias": True,
                             "proj_bias": True}}),
    ("tiny-vit", {"vision": {"stem": "conv", "patch_size": 16}, "init_logit_bias": -10.0}),
    ("tiny-vit", {"vision": {"stem": "conv", "patch_size": 2, "image_size": 32, "width": 40, "heads": 5},
                  "text": {"vocab_size": 1000, "mlp_ratio": 2.7}}),
    ("tiny-vit", {"vision": {"mlp_ratio": 4.3637, "pool": "mean"}, "embed_dim": 96}),
    ("tiny-rn", {"vision": {"layers": [2, 1, 3, 1], "width": 24, "heads": 12, "image_size": 96}}),
    ("tiny-rn", {"vision": {"width": 17, "heads": 1, "norm": "group"}}),
    ("clippo-tiny-rn", {"vision": {"layers": [1, 2, 1, 2]}}),
    ("clippo-tiny", {"vision": {"pool": "cls", "class_token": True}}),
]


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", clipforge.list_models())
def test_parameter_count_is_exact_for_every_preset(name: str) -> None:
    with torch.device("meta"):
        model = clipforge.create_model(name)
    assert parameter_count(model.config) == n_params(model)
    check_model_size(model.config)  # every preset, ViT-bigG/14 included, is within the default limits
    assert activation_bytes(model.config) < 256 * 2**20  # SigLIP 2 So400m/16 at 512 px: 1,024 tokens, 104 MiB


@pytest.mark.parametrize(("name", "overrides"), SHAPES)
def test_parameter_count_is_exact_for_other_shapes(name: str, overrides: dict[str, Any]) -> None:
    model = build_model(build_config(name, **overrides), device="meta")
    assert parameter_count(model.config) == n_params(model)


HOSTILE = [  # (overrides of ViT-B/32 or RN50, the part the error must name)
    ("ViT-B/32", {"vision": {"width": 65536, "heads": 64}}, "vision blocks"),
    ("ViT-B/32", {"vision": {"layers": 10**9}}, "vision blocks"),
    ("ViT-B/32", {"text": {"layers": 10**9}}, "text blocks"),
    ("ViT-B/32", {"text": {"vocab_size": 10**12}}, "text token embedding"),
    ("ViT-B/32", {"text": {"context_length": 10**9}}, "text positions"),
    ("ViT-B/32", {"vision": {"image_size": 10**6, "patch_size": 10**6}}, "vision patch embedding"),
    ("ViT-B/32", {"vision": {"image_size": 10**6, "patch_size": 8}}, "vision positions"),
    ("ViT-B/32", {"vision": {"image_size": 224 * 50, "patch_size": 14}}, "attention scores"),
    ("ViT-B/32", {"vision": {"mlp_ratio": 1e300}}, "vision blocks"),
    ("ViT-B/32", {"embed_dim": 10**10}, "projection"),
    ("RN50", {"vision": {"image_size": 32 * 10**5}}, "attention pool"),
    ("RN50", {"vision": {"layers": [10**9, 1, 1, 1]}}, "vision stages"),
    ("RN50", {"vision": {"image_size": 32 * 1024, "width": 8, "heads": 8}}, "vision stem"),
]


@pytest.mark.parametrize(("name", "overrides", "part"), HOSTILE)
def test_a_config_that_allocates_the_world_is_refused_before_building(
        name: str, overrides: dict[str, Any], part: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def never(config: Any) -> None:
        raise AssertionError("the model was built")

    monkeypatch.setitem(factory.MODEL_CLASSES, "clip", never)
    with pytest.raises(ConfigError, match=rf"(parameters|bytes of activations per sample), over the limit.*{part}"):
        clipforge.create_model(name, **overrides)


def test_a_non_finite_mlp_width_is_refused() -> None:
    with pytest.raises(ConfigError, match="vision.mlp_ratio.*not finite"):
        clipforge.create_model("ViT-B/32", vision={"mlp_ratio": 1e308})


def test_the_limits_are_overridable_and_skipped_on_meta(monkeypatch: pytest.MonkeyPatch) -> None:
    config = build_config("tiny-vit")
    n = parameter_count(config)
    with pytest.raises(ConfigError, match=f"over the limit of 1,000 .*{PARAMS_ENV}"):
        build_model(config, max_params=1000)
    build_model(config, max_params=n)  # at the limit is fine
    with pytest.raises(ConfigError, match=ACTIVATION_ENV):
        build_model(config, max_activation_bytes=1000)
    assert n_params(build_model(config, device="meta", max_params=1000)) == n  # meta allocates nothing
    with torch.device("meta"):
        assert n_params(build_model(config, max_params=1000)) == n
    monkeypatch.setenv(PARAMS_ENV, "1e3")
    with pytest.raises(ConfigError, match="over the limit of 1,000"):
        clipforge.create_model("tiny-vit")
    monkeypatch.setenv(PARAMS_ENV, str(n))
    clipforge.create_model("tiny-vit")
    monkeypatch.setenv(PARAMS_ENV, "lots")
    with pytest.raises(ConfigError, match=f"{PARAMS_ENV}: expected a positive number, got 'lots'"):
        clipforge.create_model("tiny-vit")
    monkeypatch.setenv(PARAMS_ENV, "nan")
    with pytest.raises(ConfigError, match=PARAMS_ENV):
        clipforge.create_model("tiny-vit")
    monkeypatch.setenv(PARAMS_ENV, "2e10")  # raising the limit lets an 11-billion-parameter config through
    big = build_config("ViT-bigG/14", vision={"layers": 270})
    assert MAX_PARAMS < parameter_count(big) < 2e10
    check_model_size(big)
    monkeypatch.delenv(PARAMS_ENV)
    with pytest.raises(ConfigError, match="vision blocks"):
        check_model_size(big)
    with pytest.raises(ConfigError, match="positive integer"):
        check_model_size(config, max_params=0)


def test_huge_integers_are_refused_by_the_config_loader() -> None:
    with pytest.raises(ConfigError, match=r"vision.layers: \d+ is out of range"):
        clipforge.create_model("tiny-vit", vision={"layers": 2**64})
    with pytest.raises(ConfigError, match="vision.layers: expected an integer, got float"):
        clipforge.create_model("tiny-vit", vision={"layers": 1e9})
