"""``trim_tokens`` is exact: a causal tower pooled at end-of-text gives the same features on the trimmed batch, and
every other kind of text input comes back untouched."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import clipforge
from clipforge.models.config import TextConfig
from clipforge.models.text import trim_tokens
from helpers.tiny import TINY_TEXT, padded_tokens, text_run_losses

TOL = 1e-5


def text_features(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.encode_text(tokens)


def assert_exact(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    trimmed = trim_tokens(tokens, model.config.text)
    assert trimmed.shape[1] < tokens.shape[1], "the test needs a batch that trimming shortens"
    full, short = text_features(model, tokens), text_features(model, trimmed)
    assert (full - short).abs().max().item() <= TOL
    return trimmed


def test_openai_rule_tower_is_exact_after_trimming() -> None:
    """The tiny-vit preset's text tower (end-of-text = the highest id, 0-padding): features equal within 1e-5."""
    torch.manual_seed(0)
    model = clipforge.create_model("tiny-vit").eval()
    text = model.config.text
    eot = text.vocab_size - 1
    tokens = padded_tokens([5, 11, 3, 17], text.context_length, text.vocab_size, eot)
    trimmed = assert_exact(model, tokens)
    assert trimmed.shape[1] == 24  # the longest caption holds 17 tokens: rounded up to a multiple of 8
    assert torch.equal(trimmed, tokens[:, :24])


@pytest.mark.parametrize("pad", [0, 7])
def test_eot_token_id_tower_is_exact_after_trimming(pad: int) -> None:
    """A custom vocabulary whose end-of-text (id 3) is not the highest id, padded with 0 or with another id: the
    argmax rule would read the wrong position, so this checks the trim follows the tower's own rule."""
    torch.manual_seed(0)
    model = clipforge.create_model("tiny-vit", text={**TINY_TEXT, "vocab_size": 64, "eot_token_id": 3}).eval()
    tokens = padded_tokens([6, 2, 9, 4], 40, 64, eot=3, low=4, high=64)
    if pad:
        tokens[tokens == 0] = pad
    trimmed = assert_exact(model, tokens)
    assert trimmed.shape[1] == 16


def test_trimming_rounds_to_the_multiple_and_never_grows() -> None:
    text = TextConfig(**TINY_TEXT)  # OpenAI rule
    eot = text.vocab_size - 1
    assert trim_tokens(padded_tokens([8, 3], 40, text.vocab_size, eot), text).shape[1] == 8
    assert trim_tokens(padded_tokens([9, 3], 40, text.vocab_size, eot), text).shape[1] == 16
    assert trim_tokens(padded_tokens([9, 3], 40, text.vocab_size, eot), text, multiple=1).shape[1] == 9
    full = padded_tokens([40, 3], 40, text.vocab_size, eot)  # a caption that fills the context: nothing to cut
    assert trim_tokens(full, text) is full or trim_tokens(full, text).shape[1] == 40
    near = padded_tokens([38, 3], 39, text.vocab_size, eot)  # rounding up to 40 is capped at the 39 there are
    assert trim_tokens(near, text).shape[1] == 39


def test_siglip_tower_is_returned_unchanged_and_would_not_be_exact() -> None:
    """SigLIP's bidirectional tower pooled at the last position pads on purpose: trim_tokens leaves its input
    alone, and cutting it anyway changes the features (so the rule is needed, not just harmless)."""
    torch.manual_seed(0)
    model = clipforge.create_model("siglip-tiny").eval()
    text = model.config.text
    assert not text.causal and text.pool == "last"
    tokens = padded_tokens([5, 9], text.context_length, text.vocab_size, eot=1, low=2, high=text.vocab_size)
    assert trim_tokens(tokens, text) is tokens
    cut = tokens[:, :16]
    assert (text_features(model, tokens) - text_features(model, cut)).abs().max().item() > 1e-3


@pytest.mark.parametrize("inputs", [torch.zeros(2, 3, 16, 64, dtype=torch.uint8), torch.zeros(2, 8),
                                    torch.zeros(3, dtype=torch.long)])
def test_clippo_and_other_inputs_are_returned_unchanged(inputs: torch.Tensor) -> None:
    """CLIPPO has no token tower (the loop passes ``None``); rendered pixels, floats and 1-D input pass through."""
    assert trim_tokens(inputs, None) is inputs
    assert trim_tokens(inputs, TextConfig(**TINY_TEXT)) is inputs


def test_clippo_model_has_no_token_config() -> None:
    """What the loop hands trim_tokens for a CLIPPO model: no ``text`` config, so the rendered text is untouched."""
    model = clipforge.create_model("clippo-tiny")
    assert getattr(model.config, "text", None) is None


def test_empty_batch_is_returned_whole() -> None:
    tokens = torch.zeros(0, 40, dtype=torch.long)
    assert trim_tokens(tokens, TextConfig(**TINY_TEXT)).shape == (0, 40)


def test_training_losses_match_with_and_without_trimming(tmp_path: Path, one_thread: Any,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Four fp32 steps on the synthetic world, trim_text true vs false: the same step losses within 1e-5 (the
    synthetic captions are far shorter than the 32-token context, so the trimmed run's text tower sees fewer)."""
    import clipforge.train.loop as loop

    widths: list[int] = []

    def recording_trim(tokens: torch.Tensor, config: TextConfig | None) -> torch.Tensor:
        out = trim_tokens(tokens, config)
        widths.append(out.shape[1])
        return out

    monkeypatch.setattr(loop, "trim_tokens", recording_trim)
    trimmed = text_run_losses(tmp_path, "trimmed", "trim_text=true")
    assert widths and max(widths) < 32, widths  # the loop did cut the batches
    padded = text_run_losses(tmp_path, "padded", "trim_text=false")
    assert len(widths) == 4  # and the untrimmed run never called it
    assert len(trimmed) == len(padded) == 4
    assert max(abs(a - b) for a, b in zip(trimmed, padded, strict=True)) <= TOL, (trimmed, padded)
