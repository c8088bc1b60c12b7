"""Robust decoding: each bad image or caption maps to its reason; good images decode reduced, never too small."""

from __future__ import annotations

import random

import numpy as np
import pytest
from PIL import Image

from clipforge.data.decode import (
    BadSample,
    DecodeLimits,
    decode_image,
    decode_pair,
    decode_text,
    draft_size,
    sample_captions,
)
from helpers.images import corrupt_png, encode, noise, png_bomb

LIMITS = DecodeLimits(max_pixels=100_000, min_side=8, max_aspect=20)


@pytest.mark.parametrize(("data", "reason"), [
    (b"", "empty"),
    (b"<html>404 not found</html>" * 20, "not_image"),
    (bytes(np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8)), "not_image"),
    (encode(noise(64, 64))[:1500], "truncated"),
    (encode(noise(64, 64))[:30], "truncated"),  # the header alone: PIL says "Truncated File Read"
    (png_bomb(100_000, 100_000), "too_large"),  # beyond PIL's own bomb limit
    (encode(noise(400, 300), "PNG"), "too_large"),  # a real image above this test's 100k-pixel limit
    (encode(noise(200, 8)), "bad_size"),  # aspect 25
    (encode(noise(6, 6)), "bad_size"),
    (corrupt_png(), "corrupt"),
])
def test_bad_images_are_named(data, reason):
    with pytest.raises(BadSample) as e:
        decode_image(data, LIMITS, min_size=32)
    assert e.value.reason == reason


@pytest.mark.parametrize(("data", "reason"), [
    (b"caption \xff\xfe", "bad_text"), (b"  \n\t\n", "no_caption"), (b"", "no_caption"),
    ("caption \udcff", "bad_text"),  # a CSV read with surrogateescape carries bad bytes like this
])
def test_bad_captions_are_named(data, reason):
    with pytest.raises(BadSample) as e:
        decode_text(data)
    assert e.value.reason == reason


def test_jpeg_reduce_on_decode_keeps_the_needed_side():
    image = noise(1000, 700)
    decoded = decode_image(encode(image), LIMITS.__class__(), min_size=100)
    # draft picks 1/4 (250 x 175 >= 100); the box reduce stops while the shorter side is >= 2 x 100... here < 2x
    assert decoded.size == (250, 175) and decoded.mode == "RGB"
    assert min(decode_image(encode(noise(1000, 700), "PNG"), DecodeLimits(), min_size=100).size) >= 200
    assert decode_image(encode(image), DecodeLimits()).size == (1000, 700)  # no min_size: full size


def test_transparent_images_composite_on_white():
    image = Image.new("RGBA", (16, 16), (255, 0, 0, 0))
    decoded = decode_image(encode(image, "PNG"), DecodeLimits())
    assert decoded.mode == "RGB" and decoded.getpixel((3, 3)) == (255, 255, 255)


def test_draft_size_covers_the_smallest_random_crop():
    assert draft_size(224, augment=False) == 224
    side = draft_size(224, augment=True)
    assert side * (0.9 * 0.75) ** 0.5 >= 224 > (side - 1) * (0.9 * 0.75) ** 0.5


def test_captions_from_txt_lines_or_json_and_one_picked_per_sample():
    sample = {"__key__": "k", "jpg": encode(noise(32, 32)), "txt": b"a cat\n\nthe cat \n a small cat"}
    assert sample_captions(sample) == ["a cat", "the cat", "a small cat"]
    picks = {decode_pair(sample, DecodeLimits(), None, random.Random(i))[1] for i in range(60)}
    assert picks == {"a cat", "the cat", "a small cat"}
    assert decode_pair(sample, DecodeLimits(), None, random.Random(5))[1] == \
        decode_pair(sample, DecodeLimits(), None, random.Random(5))[1]  # seeded: the same pick again
    assert sample_captions({"json": b'{"captions": ["x", "y"]}'}) == ["x", "y"]
    assert sample_captions({"json": b'{"caption": "z"}'}) == ["z"]
    with pytest.raises(BadSample, match="no_caption"):
        sample_captions({"json": b"not json"})


def test_incomplete_sample_next_to_tar_damage_is_a_broken_member():
    sample = {"__key__": "k", "txt": b"a caption", "__broken__": True}
    with pytest.raises(BadSample) as e:
        decode_pair(sample, DecodeLimits(), None, random.Random(0))
    assert e.value.reason == "broken_member"
    with pytest.raises(BadSample) as e:
        decode_pair({"__key__": "k", "txt": b"a caption"}, DecodeLimits(), None, random.Random(0))
    assert e.value.reason == "no_image"


def _png_with_bad_ihdr_crc() -> bytes:
    data = bytearray(encode(noise(32, 32), "PNG"))
    data[29] ^= 0xFF  # the IHDR chunk's CRC (8 signature + 4 length + 4 type + 13 data bytes)
    return bytes(data)


def _jpeg_frame(edit) -> bytes:
    data = bytearray(encode(noise(32, 32)))
    edit(data, data.find(b"\xff\xc0"))  # the baseline frame header: length, precision, height, width, components
    return bytes(data)


def _no_components(data: bytearray, sof: int) -> None:
    data[sof + 9] = 0


def _zero_height(data: bytearray, sof: int) -> None:
    data[sof + 5:sof + 7] = b"\x00\x00"


@pytest.mark.parametrize(("data", "reason"), [
    (_png_with_bad_ihdr_crc(), "corrupt"),
    (_jpeg_frame(_no_components), "corrupt"),
    (_jpeg_frame(_zero_height), "corrupt"),
    (b"\x89PNG\r\n\x1a\n" + bytes(40), "corrupt"),  # the signature of an accepted format, then nothing readable
    (b"\xff\xd8\xff garbage", "corrupt"),
    (encode(noise(32, 32), "GIF")[:20], "corrupt"),
    (encode(noise(32, 32), "PNG")[:20], "truncated"),  # the header cut short
])
def test_broken_headers_of_an_accepted_format_are_corrupt_not_not_image(data, reason):
    """A recognised format with broken data is ``corrupt`` (or ``truncated``); PIL alone calls these unidentified."""
    with pytest.raises(BadSample) as e:
        decode_image(data, LIMITS)
    assert e.value.reason == reason


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the IM format, saved here
@pytest.mark.parametrize("fmt", ["ICO", "EPS", "PDF", "TGA", "PCX", "PPM", "SGI", "DDS", "QOI", "IM", "SPIDER"])
def test_formats_outside_the_accepted_list_are_not_images(fmt):
    data = encode(noise(32, 32), fmt)
    with pytest.raises(BadSample) as e:
        decode_image(data, LIMITS)
    assert e.value.reason == "not_image"
    if fmt not in ("EPS", "PDF"):  # PIL writes PDF but cannot read it; EPS needs Ghostscript
        assert decode_image(data, DecodeLimits(formats=(fmt,))).size == (32, 32)  # what the list lets in


def test_the_accepted_formats_are_configurable_and_checked():
    png = encode(noise(32, 32), "PNG")
    with pytest.raises(BadSample) as e:
        decode_image(png, DecodeLimits(formats=("JPEG",)))
    assert e.value.reason == "not_image"
    for fmt in ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"):
        assert decode_image(encode(noise(24, 20), fmt), DecodeLimits()).size == (24, 20)
    with pytest.raises(ValueError, match="formats"):
        DecodeLimits(formats=("JPG",)).validate()
    with pytest.raises(ValueError, match="max_json_depth"):
        DecodeLimits(max_json_depth=0).validate()


@pytest.mark.parametrize("error", [NotImplementedError("no"), TypeError("bad"), RecursionError("deep"),
                                   ZeroDivisionError("zero"), KeyError("k"), AttributeError("a")])
@pytest.mark.parametrize("stage", ["open", "load"])
def test_any_exception_of_a_decoder_is_a_corrupt_sample_with_its_class(monkeypatch, error, stage):
    """Pillow plugins raise more than OSError on hostile bytes; each is the sample's failure, never the run's."""
    from PIL import PngImagePlugin

    def fail(*_, **__):
        raise error

    monkeypatch.setattr(PngImagePlugin.PngImageFile, "_open" if stage == "open" else "load", fail)
    with pytest.raises(BadSample) as e:
        decode_image(encode(noise(32, 32), "PNG"), LIMITS)
    assert e.value.reason == "corrupt"
    assert type(error).__name__ in str(e.value) or (stage == "open" and "SyntaxError" in str(e.value))  # PIL wraps


def test_memory_errors_while_decoding_are_too_large(monkeypatch):
    from PIL import PngImagePlugin

    def fail(*_, **__):
        raise MemoryError

    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", fail)
    with pytest.raises(BadSample) as e:
        decode_image(encode(noise(32, 32), "PNG"), LIMITS)
    assert e.value.reason == "too_large"


@pytest.mark.parametrize(("sample", "reason"), [
    ({"json": b"[" * 100_000 + b"]" * 100_000}, "bad_text"),  # json.loads alone: RecursionError
    ({"json": b'{"a": ' * 40 + b'"x"' + b"}" * 40}, "bad_text"),  # deeper than max_json_depth=32
    ({"json": b'{"caption": "' + b"x" * 2_000_000 + b'"}'}, "too_large"),  # over max_json_bytes
    ({"json": b'{"caption": "' + b"x" * 100_000 + b'"}'}, "too_large"),  # a caption over max_text_bytes
    ({"txt": b"y" * 70_000}, "too_large"),
    ({"txt": 17}, "bad_text"),
    ({"json": b'{"caption": ["x", 3]}'}, "no_caption"),
])
def test_sidecars_are_bounded(sample, reason):
    with pytest.raises(BadSample) as e:
        sample_captions(sample)
    assert e.value.reason == reason


def test_json_brackets_inside_strings_do_not_count_as_nesting():
    assert sample_captions({"json": b'{"caption": "[[[[{{{{' + b"[" * 100 + b'", "x": [[1]]}'}) == \
        ["[[[[{{{{" + "[" * 100]
    assert sample_captions({"json": b'{"caption": "a \\" [[[["}'}) == ['a " [[[[']
    deep = b'{"caption": "ok", "x": ' + b"[" * 10 + b"]" * 10 + b"}"
    assert sample_captions({"json": deep}, limits=DecodeLimits(max_json_depth=11)) == ["ok"]
    with pytest.raises(BadSample, match="bad_text"):
        sample_captions({"json": deep}, limits=DecodeLimits(max_json_depth=10))


def test_an_image_field_without_bytes_is_not_an_image():
    with pytest.raises(BadSample) as e:
        decode_pair({"jpg": 5, "txt": b"x"}, DecodeLimits(), None, random.Random(0))
    assert e.value.reason == "not_image"


def test_files_over_max_image_bytes_are_refused_before_reading(tmp_path):
    from clipforge.data.decode import read_image

    path = tmp_path / "big.png"
    path.write_bytes(encode(noise(64, 64), "PNG"))
    assert read_image(path, DecodeLimits()).size == (64, 64)
    with pytest.raises(BadSample, match="too_large"):
        read_image(path, DecodeLimits(max_image_bytes=1000))
    with pytest.raises(BadSample, match="no_image"):
        read_image(tmp_path / "missing.png", DecodeLimits())
