"""Label smoothing of CLIP's contrastive targets: the formula, chunked = plain, and the config."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from clipforge.config import ConfigError
from clipforge.train import load_config, parse_overrides
from clipforge.train.loss import clip_loss


def _features(n: int = 6, m: int = 10, d: int = 8) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    rows = [F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1) for _ in range(2)]
    columns = [F.normalize(torch.randn(m, d, generator=g, dtype=torch.float64), dim=-1) for _ in range(2)]
    return (*rows, *columns)


def _by_hand(logits: torch.Tensor, labels: torch.Tensor, eps: float) -> torch.Tensor:
    log_p = logits.log_softmax(dim=1)
    target = torch.full_like(log_p, eps / logits.shape[1])
    target[torch.arange(len(labels)), labels] += 1 - eps
    return -(target * log_p).sum(dim=1).mean()


@pytest.mark.parametrize("chunk_size", [None, 4])
def test_smoothed_targets_match_the_formula_in_both_directions(chunk_size: int | None):
    images, texts, image_columns, text_columns = _features()
    scale, eps, offset = torch.tensor(7.0, dtype=torch.float64), 0.2, 3
    loss = clip_loss(images, texts, scale, image_columns=image_columns, text_columns=text_columns, offset=offset,
                     chunk_size=chunk_size, label_smoothing=eps)
    labels = torch.arange(offset, offset + len(images))
    expected = (_by_hand(scale * images @ text_columns.T, labels, eps)
                + _by_hand(scale * texts @ image_columns.T, labels, eps)) / 2
    assert abs(loss.item() - expected.item()) < 1e-6
    plain = clip_loss(images, texts, scale, image_columns=image_columns, text_columns=text_columns, offset=offset)
    assert abs(loss.item() - plain.item()) > 1e-3  # the smoothing is applied, not ignored


def test_smoothing_needs_the_softmax_loss_and_a_fraction():
    with pytest.raises(ConfigError, match="label_smoothing smooths"):
        load_config(None, parse_overrides(["loss=siglip", "label_smoothing=0.1"]))
    with pytest.raises(ConfigError, match=r"label_smoothing must lie in \[0, 1\)"):
        load_config(None, parse_overrides(["label_smoothing=1.0"]))
    assert load_config(None, parse_overrides(["label_smoothing=0.1"])).label_smoothing == 0.1
