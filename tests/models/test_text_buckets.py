"""``length_buckets`` is exact: a causal tower pooled at end-of-text gives the same features and the same gradients
when each group of similar lengths runs cut to its own longest caption, and the rows come back in the batch's order."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import clipforge
from clipforge.models.config import TextConfig
from clipforge.models.text import TokenBuckets, length_buckets
from helpers.tiny import TINY_TEXT, padded_tokens, text_run_losses

TOL = 1e-5


def model_and_tokens(lengths: list[int], **text: Any) -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = clipforge.create_model("tiny-vit", text={**TINY_TEXT, **text})
    config = model.config.text
    eot = config.eot_token_id if config.eot_token_id is not None else config.vocab_size - 1
    low = 4 if config.eot_token_id is not None else 1
    return model, padded_tokens(lengths, config.context_length, config.vocab_size, eot, low=low,
                                high=config.vocab_size if config.eot_token_id is not None else None)


LENGTHS = [5, 17, 3, 9, 8, 23, 12, 1, 40, 16]  # buckets of 8, 16, 24 and the whole 40-token context


def test_buckets_group_by_rounded_length_and_invert_the_order() -> None:
    model, tokens = model_and_tokens(LENGTHS)
    buckets = length_buckets(tokens, model.config.text)
    assert isinstance(buckets, TokenBuckets) and len(buckets.inverse) == len(LENGTHS)
    assert [tuple(p.shape) for p in buckets.parts] == [(4, 8), (3, 16), (2, 24), (1, 40)]
    rows = torch.cat([torch.nn.functional.pad(p, (0, 40 - p.shape[1])) for p in buckets.parts])[buckets.inverse]
    assert torch.equal(rows, tokens)  # nothing but padding was cut, and the rows are back in order


@pytest.mark.parametrize("text", [{}, {"vocab_size": 64, "eot_token_id": 3}])
def test_features_and_gradients_equal_the_padded_tower(text: dict[str, Any]) -> None:
    """fp32 on the CPU: features within 1e-5 of the padded batch's, and every text parameter's gradient of a loss
    that weighs each row differently (so a row put back in the wrong place would show) within 1e-5 of its largest
    entry (the gradients reach ~20: summation order alone moves them by ~1e-6 relative)."""
    model, tokens = model_and_tokens(LENGTHS, **text)
    weights = torch.randn(len(LENGTHS), model.config.embed_dim, generator=torch.Generator().manual_seed(1))
    buckets = length_buckets(tokens, model.config.text)
    assert isinstance(buckets, TokenBuckets) and len(buckets.parts) > 1

    def features_and_grads(inputs: torch.Tensor | TokenBuckets) -> tuple[torch.Tensor, list[torch.Tensor]]:
        model.zero_grad(set_to_none=True)
        features = model.encode_text(inputs, normalize=True)
        (features * weights).sum().backward()
        return features.detach(), [p.grad.clone() for p in model.text.parameters()]

    full, full_grads = features_and_grads(tokens)
    grouped, grouped_grads = features_and_grads(buckets)
    assert (full - grouped).abs().max().item() <= TOL
    for a, b in zip(full_grads, grouped_grads, strict=True):
        assert (a - b).abs().max().item() <= TOL * max(1.0, a.abs().max().item())


def test_towers_that_pad_on_purpose_and_other_inputs_pass_through() -> None:
    siglip = clipforge.create_model("siglip-tiny").config.text
    tokens = padded_tokens([5, 9], siglip.context_length, siglip.vocab_size, eot=1, low=2, high=siglip.vocab_size)
    assert length_buckets(tokens, siglip) is tokens
    for inputs in (torch.zeros(2, 3, 16, 64, dtype=torch.uint8), torch.zeros(2, 8), torch.zeros(0, 40).long()):
        assert length_buckets(inputs, TextConfig(**TINY_TEXT)) is inputs
    assert length_buckets(tokens, None) is tokens  # CLIPPO: no token tower


def test_to_moves_every_part() -> None:
    model, tokens = model_and_tokens([3, 12])
    buckets = length_buckets(tokens, model.config.text)
    assert isinstance(buckets, TokenBuckets)
    moved = buckets.to("cpu", non_blocking=True)
    assert all(torch.equal(a, b) for a, b in zip(moved.parts, buckets.parts, strict=True))
    assert torch.equal(moved.inverse, buckets.inverse)


def test_training_losses_match_with_and_without_buckets(tmp_path: Path, one_thread: Any,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Four fp32 steps on the synthetic world, bucket_text true vs false: the same step losses within 1e-5, and the
    bucketed run's text tower did run more than one group a step."""
    import clipforge.train.loop as loop

    groups: list[int] = []

    def recording(tokens: torch.Tensor, config: TextConfig | None) -> torch.Tensor | TokenBuckets:
        out = length_buckets(tokens, config)
        groups.append(len(out.parts) if isinstance(out, TokenBuckets) else 1)
        return out

    monkeypatch.setattr(loop, "length_buckets", recording)
    grouped = text_run_losses(tmp_path, "grouped", "bucket_text=true")
    assert len(groups) == 4 and max(groups) > 1, groups
    padded = text_run_losses(tmp_path, "padded", "trim_text=false")
    assert len(grouped) == len(padded) == 4
    assert max(abs(a - b) for a, b in zip(grouped, padded, strict=True)) <= TOL, (grouped, padded)


def test_gradient_caching_trims_instead(tmp_path: Path, one_thread: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """bucket_text is for the plain step: with accum_steps 2 (GradCache splits the token ids) the run trims, as
    trim_text says, and trains."""
    import clipforge.train.loop as loop

    calls: list[int] = []
    monkeypatch.setattr(loop, "length_buckets", lambda tokens, config: calls.append(1) or tokens)
    losses = text_run_losses(tmp_path, "accum", "bucket_text=true", "accum_steps=2", "steps=2")
    assert not calls and len(losses) == 2
