"""Fuzz targets over the text processors: the BPE tokenizer, the Unifont renderer and the ftfy-like clean-up.

Properties, for any string (long space-free runs, control characters, emoji, astral and lone-surrogate code points
where the target takes them):
- BPE: an int64 ``(N, context_length)`` tensor, ids inside the vocabulary, start-of-text first, end-of-text once
  after the kept ids, zeros after it; work bounded per text (no more than ``max_chars`` characters reach the
  clean-up, no more bytes than those reach the merges, and OpenAI's quadratic loop only sees short pre-tokens);
- renderer: a uint8 ``(N, 3, H, W)`` tensor of the configured size holding only the ink and background values,
  equal to ``render``'s numpy painting;
- clean-up: ``fix_text`` equals ``ftfy.fix_text`` and ``clean`` returns lower-cased, space-collapsed text,
  neither raising.

Saved cases (``regressions/text/*.json``: ``{"target": "bpe" | "render" | "cleanup", "text": ..., "repeat": n,
"prefix": ..., "suffix": ...}``, the input being ``prefix + text * repeat + suffix``) are replayed on every run.
"""

from __future__ import annotations

import json
from functools import cache, lru_cache
from pathlib import Path

import ftfy
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from clipforge.text import bpe, cleanup
from clipforge.text.bpe import MAX_CHARS, BPETokenizer
from clipforge.text.render import RenderConfig, UnifontRenderer
from conftest import regression_cases

CASES = regression_cases("text")

# Text as captions go wrong: any characters, long runs of one character or a short pattern, control and format
# characters, emoji sequences, HTML entities and mojibake fragments, mixed.
FRAGMENTS = ["&amp;", "&#x1F600;", "&lt;b&gt;", "Ã©", "â€™", "\x1b[31m", "\r\n", "\x85", "\u200b", "\ufeff",
             "👍🏽", "🇫🇷", "e\u0301", "ﬁ", "Ｆ", "'s", "<|endoftext|>", "١٢٣", "\u05e9\u05dc\u05d5\u05dd", " ", "\t"]
runs = st.builds(lambda piece, n: piece * n, st.text(min_size=1, max_size=3), st.integers(1, 20_000))
text_strategy = st.one_of(
    st.text(max_size=200),
    runs,
    st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=20), runs), max_size=8).map("".join),
)
with_surrogates = st.one_of(text_strategy, st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF),
                                                   min_size=1, max_size=5).map(lambda s: "a" + s + "b"))


def case_text(path: Path) -> tuple[str, str]:
    """(target, input) of a saved case."""
    case = json.loads(path.read_text(encoding="utf-8"))
    return case["target"], case.get("prefix", "") + case["text"] * case.get("repeat", 1) + case.get("suffix", "")


@lru_cache(maxsize=1)
def tokenizer() -> BPETokenizer:
    return BPETokenizer()


def check_bpe(texts: list[str], context_length: int, monkeypatch: pytest.MonkeyPatch) -> None:
    tok = tokenizer()
    cleaned: list[int] = []
    merged: list[tuple[str, int]] = []
    clean, heap, loop = bpe.clean, tok._bpe_heap, tok._bpe_loop
    monkeypatch.setattr(bpe, "clean", lambda t: cleaned.append(len(t)) or clean(t))
    monkeypatch.setattr(tok, "_bpe_heap", lambda w: merged.append(("heap", len(w))) or heap(w))
    monkeypatch.setattr(tok, "_bpe_loop", lambda w: merged.append(("loop", len(w))) or loop(w))
    ids = tok(texts, context_length=context_length)
    monkeypatch.undo()
    assert ids.dtype == torch.int64 and ids.shape == (len(texts), context_length)
    assert ((ids >= 0) & (ids < tok.vocab_size)).all()
    assert (ids[:, 0] == tok.sot_token_id).all()
    for row in ids.tolist():
        end = row.index(tok.eot_token_id)
        assert row.count(tok.eot_token_id) == 1 and tok.sot_token_id not in row[1:end]
        assert not any(row[end + 1:])
    # Bounded work: the clean-up sees at most max_chars characters per text, the merges at most 4 bytes of each,
    # and OpenAI's O(n²) loop only short pre-tokens.
    assert all(n <= MAX_CHARS for n in cleaned)
    assert sum(n for _, n in merged) <= 4 * MAX_CHARS * len(texts)
    assert all(n < bpe._HEAP_MIN for kind, n in merged if kind == "loop")


@given(st.lists(text_strategy, min_size=1, max_size=4), st.sampled_from([2, 8, 77]))
def test_fuzz_bpe(texts: list[str], context_length: int) -> None:
    with pytest.MonkeyPatch.context() as monkeypatch:
        check_bpe(texts, context_length, monkeypatch)


@cache
def renderer(size: int, mode: str, monospace: bool) -> UnifontRenderer:
    return UnifontRenderer(RenderConfig(image_size=size, mode=mode, monospace=monospace))  # type: ignore[arg-type]


RENDERERS = [(16, "big_vision", False), (40, "big_vision", False), (32, "improved", False), (48, "improved", True)]


def check_render(texts: list[str | bytes], size: int, mode: str, monospace: bool) -> None:
    r = renderer(size, mode, monospace)
    pixels = r(texts)
    assert pixels.dtype == torch.uint8 and pixels.shape == (len(texts), 3, size, size)
    assert set(torch.unique(pixels).tolist()) <= {r.config.ink, r.config.background}
    assert np.array_equal(r.render(texts), pixels.permute(0, 2, 3, 1).numpy())


@given(st.lists(st.one_of(with_surrogates, st.binary(max_size=64)), min_size=1, max_size=3),
       st.sampled_from(RENDERERS))
def test_fuzz_render(texts: list[str | bytes], setting: tuple[int, str, bool]) -> None:
    check_render(texts, *setting)


def check_cleanup(text: str) -> None:
    fixed = cleanup.fix_text(text)
    assert fixed == ftfy.fix_text(text)
    cleaned = cleanup.clean(text)
    assert isinstance(cleaned, str) and cleaned == cleaned.strip() and "  " not in cleaned


@given(with_surrogates.map(lambda t: t[:4000]))  # ftfy itself is the reference, so keep its work small
def test_fuzz_cleanup(text: str) -> None:
    check_cleanup(text)


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_regression_cases(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target, text = case_text(path)
    if target == "bpe":
        check_bpe([text, "a photo of a cat"], 77, monkeypatch)
    elif target == "render":
        for setting in RENDERERS:
            check_render([text, text.encode("utf-8", "surrogatepass")], *setting)
    elif target == "cleanup":
        check_cleanup(text[:MAX_CHARS])
    else:
        pytest.fail(f"{path.name}: unknown target {target!r}")


def test_regression_cases_are_present() -> None:
    assert {case_text(p)[0] for p in CASES} == {"bpe", "render", "cleanup"}
