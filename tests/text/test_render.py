"""The Unifont renderer: big_vision's render_unifont pixel for pixel, the improved mode's rules, any input safe."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from clipforge.text.render import RenderConfig, UnifontRenderer, glyph_extents
from clipforge.text.unifont import BLANK, load_unifont

GOLDEN = Path(__file__).parents[1] / "assets" / "render_golden_224.npz"
BG, INK = 127, 0


def renderer(size: int = 224, **kwargs) -> UnifontRenderer:
    return UnifontRenderer(RenderConfig(image_size=size, **kwargs))


def ink(image: np.ndarray) -> np.ndarray:
    """bool (H, W): where one rendered RGB image has ink."""
    return image[..., 0] == INK


def glyph_columns(font, cp: int, first: int, width: int) -> np.ndarray:
    """bool (16, width): the glyph cell's columns [first, first + width), blank past the cell."""
    cell = np.zeros((16, 32), dtype=bool)
    cell[:, :16] = font.columns[cp].T
    return cell[:, first : first + width]


# --- big_vision compatibility ---------------------------------------------------------------------------


def test_matches_big_vision_golden_pixels() -> None:
    golden = np.load(GOLDEN, allow_pickle=False)
    captions = [str(c) for c in golden["captions"]]
    images = renderer().render(captions)
    assert images.shape == (20, 224, 224, 3) and images.dtype == np.uint8
    assert (images == images[..., :1]).all()  # grey repeated to three channels
    for caption, image, expected in zip(captions, images, golden["images"]):
        mismatched = int((image[..., 0] != expected).sum())
        assert mismatched == 0, f"{caption[:40]!r}: {mismatched} pixels differ"


def test_font_table() -> None:
    font = load_unifont()
    assert int((font.advance > 0).sum()) == 57086  # every line of the packaged file
    assert font.advance[ord("a")] == 8 and font.advance[ord("東")] == 16 and font.advance[0xE000] == 0
    assert not font.columns[BLANK].any() and font.first_ink[ord(" ")] == -1
    assert font.first_ink[ord("m")] == 1 and font.last_ink[ord("m")] == 7


def test_trim_narrow_wide_and_inkless_glyphs() -> None:
    font = load_unifont()
    first, width = glyph_extents(font, "big_vision")
    r = renderer(64, lower=False)
    for ch in "imW.東Ω":  # narrow, full-width and 1-column glyphs
        cp = ord(ch)
        f_ink, l_ink = font.first_ink[cp], font.last_ink[cp]
        f = max(f_ink - 1, 0)
        assert (first[cp], width[cp]) == (f, min(max(l_ink + 1, f + 4), 16) - f), ch
        image = ink(r.render(ch)[0])
        expected = np.zeros((64, 64), dtype=bool)
        expected[:16, : width[cp]] = glyph_columns(font, cp, f, width[cp])
        assert np.array_equal(image, expected), ch
    assert width[ord(" ")] == 4 and first[ord(" ")] == 0  # no ink: 4 blank columns
    # A character without a glyph (private-use U+E000, a surrogate, an astral emoji) is 4 blank columns.
    a_width = int(width[ord("a")])
    reference = ink(r.render("a b")[0])
    for missing in ("\ue000", "\ud800", "\U0001f600"):
        image = ink(r.render(f"a{missing}b")[0])
        assert np.array_equal(image, reference), repr(missing)
    assert not ink(r.render("\ue000\U0001f600")[0]).any()
    assert reference[:, a_width + 4 :].any() and not reference[:, a_width : a_width + 4 + first[ord("b")]].any()


def test_exactly_full_row_starts_the_next_row() -> None:
    # 'm' is 8 columns wide, so the divisor is 64 - 8 = 56 and the 7th 'm' (running sum 56) opens row 1.
    r = renderer(64)
    assert glyph_extents(r.font, "big_vision")[1][ord("m")] == 8
    six, seven = ink(r.render("m" * 6)[0]), ink(r.render("m" * 7)[0])
    assert six[:16, :48].any() and not six[16:].any()
    assert np.array_equal(seven[:16], six[:16])
    assert np.array_equal(seven[16:32, :8], six[:16, :8]) and not seven[16:32, 8:].any()


def test_words_are_split_and_overflow_is_dropped() -> None:
    r = renderer(64)
    lay = r.layout(["ab abcdefgh"])  # big_vision fills rows glyph by glyph, splitting the word
    word_rows = set(lay.row[3:].tolist())
    assert len(word_rows) == 2
    alphabet = "abcdefghijklmnopqrstuvwxyz"
    long = ink(r.render(alphabet * 3)[0])
    assert all(long[y : y + 16].any() for y in range(0, 64, 16))  # four rows full, the rest dropped
    assert np.array_equal(long, ink(r.render(alphabet * 30)[0]))
    assert r.layout([alphabet * 30]).row.max() == 3


def test_max_chars_and_ascii_only_lowercasing() -> None:
    r = renderer()
    assert np.array_equal(r.render("x" * 768 + "y" * 50), r.render("x" * 768))
    tall = renderer(512)  # 32 rows: room for 768 blank 4-column glyphs and one more
    assert ink(tall.render(" " * 767 + "x")[0]).any() and not ink(tall.render(" " * 768 + "x")[0]).any()
    assert np.array_equal(renderer(max_chars=3).render("abcdef"), r.render("abc"))
    assert np.array_equal(r.render("HELLO World"), r.render("hello world"))
    for capitals, small in (("МОСКВА", "москва"), ("É", "é"), ("ΚΕΦΑΛΑΙΑ", "κεφαλαια")):
        assert not np.array_equal(r.render(capitals), r.render(small)), capitals  # TF lower-cases ASCII only
    upper = renderer(lower=False)
    assert not np.array_equal(upper.render("HELLO"), upper.render("hello"))


def test_colours_and_small_sizes() -> None:
    image = renderer(32, background=255, ink=10).render("x")[0]
    assert set(np.unique(image).tolist()) == {10, 255}
    for size in (16, 17, 31, 40):
        for text in ("東京", "a photo of a dog", ""):
            out = renderer(size).render(text)
            assert out.shape == (1, size, size, 3) and set(np.unique(out).tolist()) <= {BG, INK}


# --- config and font errors -----------------------------------------------------------------------------


def test_config_validation_and_round_trip() -> None:
    bad = {"mode": "fancy", "image_size": 8, "ink": 300, "background": -1, "max_chars": 0, "lower": 1,
           "monospace": True}
    for name, value in bad.items():
        with pytest.raises(ValueError, match=f"render\\.{name}"):
            RenderConfig(**{name: value})
    with pytest.raises(ValueError, match="render.image_size"):
        RenderConfig(image_size=True)
    with pytest.raises(ValueError, match="unknown field 'colour'"):
        RenderConfig.from_dict({"colour": 3})
    config = RenderConfig(image_size=96, mode="improved", lower=False, background=200, ink=30, monospace=True)
    assert RenderConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert RenderConfig.from_dict({}) == RenderConfig()


def test_font_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no-font.hex"):
        UnifontRenderer(font_path=tmp_path / "no-font.hex")
    corrupt = tmp_path / "corrupt.hex.gz"
    corrupt.write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match="corrupt.hex.gz"):
        UnifontRenderer(font_path=corrupt)
    bad_line = tmp_path / "bad.hex"
    bad_line.write_text("0041:00000000000000000000000000000000\n0042:XYZ\n")
    with pytest.raises(ValueError, match="bad.hex: line 2"):
        UnifontRenderer(font_path=bad_line)
    tiny = tmp_path / "tiny.hex.gz"
    tiny.write_bytes(gzip.compress(b"0041:0000000018242442427E424242420000\n"))
    r = UnifontRenderer(RenderConfig(image_size=16, lower=False), font_path=tiny)
    assert ink(r.render("A")[0]).any() and not ink(r.render("B")[0]).any()


# --- both paths, determinism ----------------------------------------------------------------------------

MIXED = ["a photo of a dog", "", "Москва — столица", "東京タワー", "שלום עולם (abc) 123", "😀 e\u0301 \x00\t",
         "word " * 200, "x" * 5000]


@pytest.mark.parametrize("config", [RenderConfig(), RenderConfig(mode="improved"),
                                    RenderConfig(image_size=40, mode="improved", monospace=True, lower=False),
                                    RenderConfig(image_size=17, background=3, ink=250)], ids=str)
def test_numpy_and_torch_paths_agree(config: RenderConfig) -> None:
    r = UnifontRenderer(config)
    images = r.render(MIXED)
    tensor = r(MIXED)
    assert tensor.shape == (len(MIXED), 3, config.image_size, config.image_size) and tensor.dtype == torch.uint8
    assert np.array_equal(tensor.permute(0, 2, 3, 1).numpy(), images)
    assert np.array_equal(r.render(MIXED), images)  # deterministic
    singles = np.concatenate([r.render(t) for t in MIXED])
    assert np.array_equal(singles, images)  # a text renders the same alone or in a batch
    assert r([]).shape == (0, 3, config.image_size, config.image_size) and r.render([]).shape[0] == 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_torch_path_on_gpu() -> None:
    for config in (RenderConfig(), RenderConfig(mode="improved")):
        r = UnifontRenderer(config)
        out = r(MIXED, device="cuda")
        assert out.device.type == "cuda"
        assert np.array_equal(out.permute(0, 2, 3, 1).cpu().numpy(), r.render(MIXED))


# --- improved mode --------------------------------------------------------------------------------------


def improved(size: int = 64, **kwargs) -> UnifontRenderer:
    return renderer(size, mode="improved", **kwargs)


def rows_of_words(r: UnifontRenderer, text: str) -> list[set[int]]:
    lay = r.layout([text])
    cps = lay.glyph.tolist()
    rows, words, current = lay.row.tolist(), [], set()
    for cp, row in zip(cps, rows):
        if cp == 0x20:
            words.append(current)
            current = set()
        else:
            current.add(row)
    return [*words, current]


def test_improved_wraps_between_words() -> None:
    r = improved(64)
    text = "ab abcdefgh cat dog mouse"
    words = rows_of_words(r, text)
    assert all(len(rows) == 1 for rows in words)  # every word on one row
    assert [min(rows) for rows in words] == sorted(min(rows) for rows in words)
    lay = r.layout([text])
    assert (lay.x + lay.width <= 64).all()
    assert (r.layout(["m" * 40]).row.max()) == 3  # a word longer than a row is split, overflow dropped
    assert len(set(r.layout(["mmmmmmmmmmmmmmmm"]).row.tolist())) == 2


def test_improved_right_to_left() -> None:
    r = improved(224)
    lay = r.layout(["abc אבג 12"])
    x = dict(zip(lay.glyph.tolist(), lay.x.tolist()))
    assert x[ord("a")] < x[ord("b")] < x[ord("c")] < x[ord("ג")] < x[ord("ב")] < x[ord("א")]  # Hebrew reversed
    assert x[ord("1")] < x[ord("2")]  # digits keep their order
    lay = r.layout(["אבג (12)"])  # a right-to-left paragraph: right-aligned, brackets mirrored
    x = dict(zip(lay.glyph.tolist(), lay.x.tolist()))
    assert x[ord("א")] > x[ord("ב")] > x[ord("ג")] > x[ord("2")] > x[ord("1")]
    right = max(x[cp] + int(r.width[cp]) for cp in x)
    assert right == 224
    assert x[ord("(")] < x[ord("1")] < x[ord(")")]  # logical "(" is drawn as ")": the screen shows "(12) גבא"


def test_improved_replacement_glyph_and_cleanup() -> None:
    r = improved(64)
    replacement = ink(r.render("\ufffd")[0])
    assert replacement.any()
    for missing in ("\U0001f600", "\ud800", "\ue000"):
        assert np.array_equal(ink(r.render(missing)[0]), replacement), repr(missing)
        assert not ink(renderer(64).render(missing)[0]).any()  # big_vision: blank
    assert np.array_equal(r.render("a\x00\u200bb"), r.render("ab"))  # control and format characters dropped
    assert np.array_equal(r.render("a\tb\nc"), r.render("a b c"))
    assert np.array_equal(r.render("МОСКВА É"), r.render("москва é"))  # Unicode lower-casing
    assert np.array_equal(r.render("e\u0301"), r.render("é"))  # NFC
    assert not np.array_equal(improved(64, lower=False).render("É"), r.render("É"))


def test_improved_monospace_and_proportional() -> None:
    mono = improved(224, monospace=True)
    lay = mono.layout(["ai東b"])
    assert lay.x.tolist() == [0, 8, 16, 32] and lay.width.tolist() == [8, 8, 16, 8]
    prop = improved(224)
    lay = prop.layout(["ai b"])
    font = prop.font
    assert lay.width.tolist()[2] == 4  # a space keeps the minimum width
    for cp, width in zip(lay.glyph.tolist()[:2], lay.width.tolist()):
        assert width == font.last_ink[cp] - font.first_ink[cp] + 2  # ink columns + 1 column of spacing
    assert prop.layout(["."]).width.tolist() == [4]  # a 2-column glyph is widened to 4
    image = ink(prop.render("..")[0])
    columns = np.flatnonzero(image.any(axis=0))
    assert columns.tolist() == [0, 1, 4, 5]  # trimmed to its ink, then spaced


# --- any input ------------------------------------------------------------------------------------------


def test_huge_and_strange_input() -> None:
    huge = "x" * 10_000_000
    for r in (renderer(), improved(224)):
        assert ink(r.render(huge)[0]).any()
        for text in ["\u0301\u0301e\u0301", "שלום עולם", "مرحبا", "😀🇫🇷", "\x00\x1b\n\t", "\ud800", "\U0010ffff"]:
            assert r.render(text).shape == (1, 224, 224, 3)
    assert renderer().render(b"bytes \xff").shape == (1, 224, 224, 3)


TRICKY = st.sampled_from(["\ud800", "\udfff", "\u0301", "\u200f", "\u202e", "א", "ب", "1", "(", " ", "\n", "東", "😀"])


@settings(max_examples=120, deadline=None)
@given(text=st.text(alphabet=st.one_of(st.characters(exclude_categories=()), TRICKY), max_size=200),
       size=st.sampled_from([16, 23, 48]), mode=st.sampled_from(["big_vision", "improved"]),
       monospace=st.booleans(), lower=st.booleans())
def test_any_unicode_renders(text: str, size: int, mode: str, monospace: bool, lower: bool) -> None:
    r = renderer(size, mode=mode, monospace=monospace and mode == "improved", lower=lower)
    image = r.render([text, text[::-1]])
    assert image.shape == (2, size, size, 3) and image.dtype == np.uint8
    assert set(np.unique(image).tolist()) <= {BG, INK}
    assert np.array_equal(r([text, text[::-1]]).permute(0, 2, 3, 1).numpy(), image)


@pytest.mark.parametrize("mode", ["big_vision", "improved"])
def test_long_text_and_bytes_are_cut_before_any_work(mode: str) -> None:
    """Issue #17: a text of millions of characters (or bytes) costs what its first ``max_chars`` characters cost;
    bytes are cut to 4 × max_chars before decoding, which gives the same characters as decoding them whole."""
    r = renderer(64, mode=mode, max_chars=40)
    text = "ab€😀 \u05e9" * 1_000_000
    assert np.array_equal(r.render(text), r.render(text[:40]))
    data = text.encode("utf-8")
    assert np.array_equal(r.render([data]), r.render([data.decode("utf-8")[:40]]))
    assert torch.equal(r([data, text]), r([text[:40], text[:40]]))
