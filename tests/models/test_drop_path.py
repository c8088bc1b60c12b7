"""Stochastic depth (``vision.drop_path``, ``text.drop_path``): off in eval mode, per-sample at training time."""

from __future__ import annotations

import pytest
import torch

import clipforge
from clipforge.config import ConfigError
from clipforge.models.layers import drop_path

TINY = {"embed_dim": 32, "vision": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 3, "heads": 2},
        "text": {"width": 32, "heads": 2, "layers": 3, "context_length": 16}}


def _pair(rate: float) -> tuple[torch.nn.Module, torch.nn.Module]:
    plain = clipforge.create_model("tiny-vit", **TINY)
    dropping = clipforge.create_model("tiny-vit", **{**TINY, "vision": {**TINY["vision"], "drop_path": rate},
                                                     "text": {**TINY["text"], "drop_path": rate}})
    dropping.load_state_dict(plain.state_dict())  # the same parameters: drop_path adds none
    return plain, dropping


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(16, 3, 32, 32, generator=g), torch.randint(1, 1000, (16, 16), generator=g)


def _same_in_eval_mode(plain: torch.nn.Module, other: torch.nn.Module) -> None:
    images, texts = _inputs()
    plain.eval()
    other.eval()
    assert torch.equal(plain.encode_image(images), other.encode_image(images))
    assert torch.equal(plain.encode_text(texts), other.encode_text(texts))


def test_eval_mode_is_untouched_and_training_drops_per_sample():
    plain, dropping = _pair(0.5)
    images, texts = _inputs()
    _same_in_eval_mode(plain, dropping)
    plain.train()
    dropping.train()
    assert torch.equal(plain.encode_image(images), plain.encode_image(images))  # rate 0: deterministic
    a, b = dropping.encode_image(images), dropping.encode_image(images)
    assert (a - b).abs().max() > 1e-4  # random at training time
    assert not torch.equal(dropping.encode_text(texts), dropping.encode_text(texts))


def test_rates_rise_linearly_over_the_blocks():
    _, dropping = _pair(0.3)
    assert [b.drop_path for b in dropping.visual.transformer.blocks] == pytest.approx([0.0, 0.15, 0.3])
    assert [b.drop_path for b in dropping.text.transformer.blocks] == pytest.approx([0.0, 0.15, 0.3])


def test_the_dropped_fraction_and_the_expectation():
    torch.manual_seed(0)
    branch = torch.ones(20_000, 4, 8)
    out = drop_path(branch, 0.25, training=True)
    dropped = (out[:, 0, 0] == 0).float().mean().item()
    assert abs(dropped - 0.25) < 0.02
    per_sample = out.flatten(1)
    assert torch.equal(per_sample.amin(dim=1), per_sample.amax(dim=1))  # a sample is dropped or kept whole
    assert abs(out.mean().item() - 1.0) < 0.03  # kept samples are scaled by 1 / (1 - rate)
    assert torch.equal(drop_path(branch, 0.25, training=False), branch)


def test_a_rate_of_one_is_refused():
    with pytest.raises(ConfigError, match=r"vision.drop_path and vision.dropout must be in \[0, 1\)"):
        clipforge.create_model("tiny-vit", vision={"drop_path": 1.0})
    with pytest.raises(ConfigError, match=r"text.drop_path and text.dropout must be in \[0, 1\)"):
        clipforge.create_model("tiny-vit", text={"drop_path": -0.1})


def test_residual_dropout_is_off_in_eval_mode_and_per_element_in_training():
    plain = clipforge.create_model("tiny-vit", **TINY)
    dropping = clipforge.create_model("tiny-vit", **{**TINY, "vision": {**TINY["vision"], "dropout": 0.3},
                                                     "text": {**TINY["text"], "dropout": 0.3}})
    dropping.load_state_dict(plain.state_dict())  # dropout adds no parameters
    _, texts = _inputs()
    _same_in_eval_mode(plain, dropping)
    dropping.train()
    assert all(b.dropout == 0.3 for b in dropping.visual.transformer.blocks)
    torch.manual_seed(0)
    branch = dropping.visual.transformer.blocks[0]._drop(torch.ones(64, 16, 32))
    assert abs((branch == 0).float().mean().item() - 0.3) < 0.02  # elements, not whole samples
    assert not torch.equal(dropping.encode_text(texts), dropping.encode_text(texts))
    with pytest.raises(ConfigError, match="text.dropout"):
        clipforge.create_model("tiny-vit", **{**TINY, "text": {**TINY["text"], "dropout": 1.0}})
