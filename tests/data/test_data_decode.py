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
