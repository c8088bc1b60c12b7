"""The Unifont renderer reproduces big_vision's render_unifont pixel for pixel, and never fails on input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from clipforge.text.render import RenderConfig, UnifontRenderer, ascii_lower

GOLDEN = Path(__file__).parent / "assets" / "render_golden_224.npz"


@pytest.fixture(scope="module")
def renderer() -> UnifontRenderer:
    return UnifontRenderer()


def test_matches_big_vision_golden_pixels(renderer: UnifontRenderer) -> None:
    golden = np.load(GOLDEN, allow_pickle=False)
    for caption, expected in zip(golden["captions"], golden["images"]):
        image = renderer.render(str(caption))[0]
        assert image.shape == (224, 224, 3)
        assert (image == image[..., :1]).all()
        mismatched = int((image[..., 0] != expected).sum())
        assert mismatched == 0, f"{caption!r}: {mismatched} pixels differ"


def small() -> UnifontRenderer:
    return UnifontRenderer(RenderConfig(image_size=64))


def columns_with_ink(image: np.ndarray) -> np.ndarray:
    return np.nonzero((image[..., 0] == 0).any(axis=0))[0]


def test_narrow_glyph_trim_and_min_width(renderer: UnifontRenderer) -> None:
    glyphs, first, width = renderer.glyphs, renderer.first, renderer.width
    ink = glyphs[ord("i")].any(axis=0).nonzero()[0]
    assert first[ord("i")] == max(ink[0] - 1, 0)
    assert first[ord("i")] + width[ord("i")] == max(ink[-1] + 1, first[ord("i")] + 4)
    assert width[ord(" ")] == 4 and first[ord(" ")] == 0  # no ink: 4 blank columns
    assert width[0x10000] == 4 and not glyphs[0x10000].any()  # outside the font: blank, no replacement glyph
    assert width[ord("東")] > 8  # a wide glyph keeps its full width
    assert (width >= 1).all() and (first + width <= 16).all()


def test_ascii_only_lowercasing(renderer: UnifontRenderer) -> None:
    assert ascii_lower("ABC Москва É") == "abc Москва É"
    assert np.array_equal(renderer.render("HELLO"), renderer.render("hello"))
    assert not np.array_equal(renderer.render("МОСКВА"), renderer.render("москва"))
    upper = UnifontRenderer(RenderConfig(lower=False))
    assert not np.array_equal(upper.render("HELLO"), upper.render("hello"))


def test_rows_wrap_words_and_overflow_is_dropped() -> None:
    r = small()
    one_row = r.render("ab")[0]
    assert (one_row[16:, :, 0] == 127).all() and (one_row[:16, :, 0] == 0).any()
    long = r.render("abcdefghijklmnopqrstuvwxyz" * 3)[0]
    rows_with_ink = [(long[y : y + 16, :, 0] == 0).any() for y in range(0, 64, 16)]
    assert all(rows_with_ink)  # 78 letters overflow 4 rows of 64 px: every row filled, the rest dropped
    assert np.array_equal(long, r.render("abcdefghijklmnopqrstuvwxyz" * 10)[0])


def test_row_break_rule_exactly() -> None:
    r = small()
    # "m" glyphs: find how many fit per row with the floor(cumsum / (W - max_width)) rule and check row 2 starts.
    w = int(r.width[ord("m")])
    per_row = next(k for k in range(1, 20) if np.floor(np.float32((k + 1) * w) / np.float32(64 - w)) >= 1)
    image = r.render("m" * (per_row + 1))[0]
    assert (image[16:32, :, 0] == 0).any() and not (image[16:32, w + 1 :, 0] == 0).any()


def test_colours_config_and_errors() -> None:
    r = UnifontRenderer(RenderConfig(image_size=32, background=255, ink=10))
    image = r.render("x")[0]
    assert set(np.unique(image)) == {10, 255}
    for bad in ({"mode": "fancy"}, {"image_size": 8}, {"ink": 300}, {"max_chars": 0}):
        with pytest.raises(ValueError, match="render\\."):
            RenderConfig(**bad)
    with pytest.raises(ValueError, match="unknown field 'colour'"):
        RenderConfig.from_dict({"colour": 3})
    assert RenderConfig.from_dict(RenderConfig().to_dict()) == RenderConfig()
    with pytest.raises(FileNotFoundError, match="no-font.hex"):
        UnifontRenderer(font_path="/no-font.hex")


def test_tensor_output_and_determinism(renderer: UnifontRenderer) -> None:
    out = renderer(["a photo of a dog", ""])
    assert out.shape == (2, 3, 224, 224) and out.dtype == torch.uint8
    assert torch.equal(out, renderer(["a photo of a dog", ""]))
    assert (out[1] == 127).all()
    assert np.array_equal(out.permute(0, 2, 3, 1).numpy(), renderer.render(["a photo of a dog", ""]))


def test_huge_and_strange_input(renderer: UnifontRenderer) -> None:
    import time

    t0 = time.perf_counter()
    image = renderer.render("x" * 10_000_000)[0]
    assert time.perf_counter() - t0 < 5  # cut to max_chars before any work
    assert (image[..., 0] == 0).any()
    for text in ["\u0301\u0301e\u0301", "שלום עולם", "مرحبا", "😀🇫🇷", "\x00\x1b\n\t", "\ud800"]:
        assert renderer.render(text).shape == (1, 224, 224, 3)


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=300))
def test_any_unicode_renders(text: str) -> None:
    image = small().render(text)
    assert image.shape == (1, 64, 64, 3) and image.dtype == np.uint8
    assert set(np.unique(image)) <= {0, 127}
