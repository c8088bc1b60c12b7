"""Fuzzing the decoder (``clipforge.data.decode``): mutated valid images and random bytes, captions and json
sidecars give a result or a ``BadSample`` with a documented reason, never another exception, within small limits.

``error`` (an exception outside the decoder) must never come from the decoder itself: seeing it here is a bug.
Crashers found are kept under ``regressions/decode/`` (small files, replayed) or as ``@example``.
"""

from __future__ import annotations

import io
import json
import random
import resource

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from PIL import Image

from clipforge.data.decode import (
    REASONS,
    BadSample,
    DecodeLimits,
    decode_image,
    decode_pair,
    decode_text,
    sample_captions,
)
from fuzz.conftest import regression_cases

LIMITS = DecodeLimits(max_pixels=250_000, min_side=4, max_aspect=50, max_image_bytes=200_000, max_text_bytes=4096,
                      max_json_bytes=8192, max_json_depth=8)
DECODER_REASONS = set(REASONS) - {"error"}


def _seed_image(fmt: str, mode: str = "RGB") -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    image = Image.fromarray(pixels).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


SEEDS = {"jpeg": _seed_image("JPEG"), "png": _seed_image("PNG"), "png_rgba": _seed_image("PNG", "RGBA"),
         "webp": _seed_image("WEBP"), "gif": _seed_image("GIF", "P"), "bmp": _seed_image("BMP"),
         "tiff": _seed_image("TIFF")}


@st.composite
def mutated_images(draw) -> bytes:
    """A valid image with a few bytes replaced, a run inserted or deleted, and maybe cut short."""
    data = bytearray(SEEDS[draw(st.sampled_from(sorted(SEEDS)))])
    for _ in range(draw(st.integers(0, 6))):
        at = draw(st.integers(0, len(data) - 1))
        kind = draw(st.sampled_from(["set", "insert", "delete", "header"]))
        if kind == "set":
            data[at] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del data[at:at + draw(st.integers(1, 64))]
        else:  # the first 64 bytes hold the headers: where parsers are most fragile
            data[at % 64] = draw(st.sampled_from([0, 1, 0x7F, 0x80, 0xFF]))
        if not data:
            break
    if draw(st.booleans()):
        data = data[:draw(st.integers(0, len(data)))]
    return bytes(data)


def _check(call) -> object:
    """``call()``'s result, or ``None`` when it raised a ``BadSample`` of a decoder's reason."""
    try:
        return call()
    except BadSample as e:
        assert e.reason in DECODER_REASONS, e
        return None


@pytest.fixture(scope="module", autouse=True)
def bounded_memory():
    """The whole target stays within a small budget of resident memory (the limits are small)."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    yield
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 512, f"peak resident memory grew by {grown_mb:.0f} MB"


@given(mutated_images(), st.sampled_from([None, 8, 16]))
@example(b"\x89PNG\r\n\x1a\n" + bytes(40), None)
@example(b"\xff\xd8\xff", 8)
@example(b"GIF89a\xff\xff\xff\xff", None)
@example(b"II*\x00\x08\x00\x00\x00\xff\xff", None)
@example(b"RIFF\x00\x00\x00\x00WEBPVP8X", None)
@example(b"BM" + bytes(12) + b"\x28\x00\x00\x00" + b"\xff" * 30, None)
def test_mutated_images_decode_or_are_bad_samples(data, min_size):
    image = _check(lambda: decode_image(data, LIMITS, min_size))
    if image is not None:
        assert isinstance(image, Image.Image) and image.mode == "RGB"
        assert image.width * image.height <= LIMITS.max_pixels


@given(st.binary(max_size=2048))
def test_random_bytes_are_bad_samples(data):
    _check(lambda: decode_image(data, LIMITS))


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
                     lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children,
                                                                                         max_size=4), max_leaves=30)


@given(st.one_of(st.binary(max_size=6000), st.text(max_size=6000)))
@example(b"\xff" * 10)
@example("a\udcffb")
@example(b"x" * 5000)
def test_captions_are_lines_or_bad_samples(data):
    captions = _check(lambda: decode_text(data, LIMITS))
    if captions is not None:
        assert captions and all(c and c == c.strip() and "\n" not in c for c in captions)


@given(st.one_of(_json.map(lambda v: json.dumps({"caption": v, "captions": v})),
                 st.builds(lambda d: "[" * d + "]" * d, st.integers(0, 5000)),
                 st.binary(max_size=1000)))
@example(b'{"caption": "' + b"[" * 50 + b'"}')
@example(b"{" * 100_000)
def test_json_sidecars_give_captions_or_bad_samples(meta):
    captions = _check(lambda: sample_captions({"json": meta}, limits=LIMITS))
    if captions is not None:
        assert all(isinstance(c, str) and c for c in captions)


@given(st.dictionaries(st.sampled_from(["jpg", "png", "webp", "txt", "json", "cls", "__broken__"]),
                       st.one_of(mutated_images(), st.binary(max_size=200), st.text(max_size=50), st.integers()),
                       max_size=5), st.integers(0, 2**32))
def test_samples_decode_to_pairs_or_bad_samples(fields, seed):
    pair = _check(lambda: decode_pair({"__key__": "k", **fields}, LIMITS, 8, random.Random(seed)))
    if pair is not None:
        image, caption = pair
        assert image.mode == "RGB" and isinstance(caption, str) and caption


@pytest.mark.parametrize("case", regression_cases("decode"), ids=lambda p: p.name)
def test_saved_crashers_stay_fixed(case):
    data = case.read_bytes()
    _check(lambda: decode_image(data, LIMITS, 8))
    _check(lambda: decode_text(data, LIMITS))
    _check(lambda: sample_captions({"json": data}, limits=LIMITS))
