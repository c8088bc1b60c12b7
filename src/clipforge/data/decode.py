"""The one image decoder of clipforge (training, evaluation, embedding, classify): bad images and captions
become counted skips, never crashes.

Every way a sample can be bad maps to one *reason* (a short string: the key under which the training metrics
count it, and the first word of an evaluation's ``skipped`` entry)::

    empty        zero-byte image
    not_image    bytes that are no image format PIL knows (HTML error pages, random bytes)
    truncated    an image cut short (the file ends before the pixels do)
    corrupt      any other decoding failure (broken headers, bad Huffman tables, ...)
    too_large    more than ``max_pixels`` pixels: decompression bombs, absurd declared sizes
    bad_size     a side below ``min_side`` or an aspect ratio beyond ``max_aspect``
    no_image     a sample without any image field, or a listed image file that does not exist
    no_caption   a missing, empty or blank caption (or class label)
    bad_text     a caption that is not valid UTF-8, or a class label that is not an integer
    broken_member  an incomplete sample next to a damaged region of a tar shard

Beside them, two tar-level events are counted that are not samples: ``shard_errors`` (a shard that cannot
be opened or ends mid-member) and ``tar_holes`` (damaged regions skipped over to the next valid member).

**Transparency.** Images with an alpha channel (RGBA, LA, and P with a transparency index) are composited
on white (``DecodeLimits.alpha = "white"``, the default everywhere), so a transparent logo keeps its shape
rather than turning into whatever colour its invisible pixels hold. ``alpha = "drop"`` is PIL's
``convert("RGB")``, which discards the alpha channel: what OpenAI's preprocessing and torchvision's image
loader do, for reproducing published evaluations.

The size checks read only the image header (``Image.open`` is lazy), so a 100k × 100k PNG costs
microseconds, not gigabytes. JPEGs are decoded with ``Image.draft`` (libjpeg's DCT-domain
reduce-on-decode by 1/2, 1/4 or 1/8) to the smallest scale that still covers the output size, then
reduced by whole factors with ``Image.reduce`` (box filter) while at least twice that size: the final
bicubic resize then sees at most 2× its output, which is what makes this path fast.
"""

from __future__ import annotations

import io
import json
import math
import random
import struct  # struct.error: some PIL plugins let it escape on malformed headers
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from PIL import Image, UnidentifiedImageError

REASONS = ("empty", "not_image", "truncated", "corrupt", "too_large", "bad_size", "no_image", "no_caption",
           "bad_text", "broken_member")
IMAGE_FIELDS = ("jpg", "jpeg", "png", "webp")
ALPHA_RULES = ("white", "drop")


class BadSample(Exception):
    """A sample that cannot be used; ``reason`` is one of :data:`REASONS`.

    Args:
        reason: Why the sample is skipped.
        detail: A human-readable detail (file, error message).
    """

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True)
class DecodeLimits:
    """What a decodable image may look like (anything else is skipped), and how it becomes RGB.

    Attributes:
        max_pixels: Most pixels (width × height, read from the header before decoding). PIL's own
            decompression-bomb limit is 89,478,485; web images above 64 Mpx are almost always junk.
        min_side: Smallest width or height.
        max_aspect: Largest ratio of the longer side to the shorter (banners, 1-pixel lines).
        alpha: ``white``: composite transparent images on white; ``drop``: discard the alpha channel
            (OpenAI's ``convert("RGB")``; see the module docstring).
    """

    max_pixels: int = 64_000_000
    min_side: int = 8
    max_aspect: float = 20.0
    alpha: Literal["white", "drop"] = "white"

    def validate(self) -> DecodeLimits:
        """Returns ``self``; raises ``ValueError`` unless max_pixels and min_side are positive, max_aspect >= 1
        and alpha is ``white`` or ``drop``.

        (Not run on construction, so a config loader can turn the error into its own kind.)
        """
        if self.max_pixels <= 0 or self.min_side <= 0 or self.max_aspect < 1:
            raise ValueError(f"max_pixels and min_side must be positive, max_aspect >= 1; got {self}")
        if self.alpha not in ALPHA_RULES:
            raise ValueError(f"alpha must be one of {ALPHA_RULES}, got {self.alpha!r}")
        return self


def check_size(width: int, height: int, limits: DecodeLimits) -> None:
    """Raises ``BadSample`` (``too_large`` or ``bad_size``) when a ``width`` × ``height`` image breaks ``limits``."""
    if width * height > limits.max_pixels:
        raise BadSample("too_large", f"{width}x{height} exceeds {limits.max_pixels} pixels")
    if min(width, height) < limits.min_side:
        raise BadSample("bad_size", f"{width}x{height} has a side below {limits.min_side}")
    if max(width, height) > limits.max_aspect * min(width, height):
        raise BadSample("bad_size", f"{width}x{height} has an aspect ratio beyond {limits.max_aspect}")


def open_image(data: bytes, limits: DecodeLimits) -> Image.Image:
    """Parses an image's header (no pixels decoded yet) and checks its size against ``limits``.

    Raises:
        BadSample: ``empty``, ``not_image``, ``too_large``, ``bad_size`` or ``corrupt``.
    """
    if not data:
        raise BadSample("empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit decides
            image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        raise BadSample("too_large", str(e)) from None
    except UnidentifiedImageError:
        raise BadSample("not_image", f"{len(data)} bytes of no known image format") from None
    except (OSError, ValueError, SyntaxError, struct.error, EOFError) as e:
        raise _failure(e) from None
    check_size(*image.size, limits)
    return image


def decode_image(data: bytes, limits: DecodeLimits, min_size: int | None = None) -> Image.Image:
    """Decodes image bytes to an RGB image, at least ``min_size`` on its shorter side if the original is.

    JPEGs use ``draft`` (reduce-on-decode); any format is then reduced by whole factors while it stays at
    least twice ``min_size``, so the caller's final resize works on at most 2× its output.

    Args:
        data: The encoded image.
        limits: Size limits, checked on the header before any pixel is decoded.
        min_size: The smallest shorter side the caller needs; ``None`` decodes at full size.

    Returns:
        The decoded RGB image.

    Raises:
        BadSample: With the reason (see the module docstring).
    """
    image = open_image(data, limits)
    try:
        if min_size is not None and image.format == "JPEG":
            image.draft("RGB", (min_size, min_size))  # both sides stay >= min_size
        image.load()
        image = _reduce(image, min_size) if min_size is not None else image
        return image if image.mode == "RGB" else to_rgb(image, limits.alpha)
    except OSError as e:
        raise _failure(e) from None
    except (ValueError, SyntaxError, EOFError, IndexError, struct.error, Image.DecompressionBombError) as e:
        raise BadSample("corrupt", f"{type(e).__name__}: {e}") from None


def _failure(error: Exception) -> BadSample:
    """``truncated`` when PIL's message says the data ended early, else ``corrupt``."""
    message = str(error).lower()
    cut_short = isinstance(error, OSError | EOFError) and ("truncated" in message or "end of file" in message)
    return BadSample("truncated" if cut_short else "corrupt", f"{type(error).__name__}: {error}")


def _reduce(image: Image.Image, min_size: int) -> Image.Image:
    """Box-reduces by the largest whole factor that keeps the shorter side at least ``2 · min_size``."""
    factor = min(image.size) // (2 * min_size)
    return image.reduce(factor) if factor >= 2 else image


def read_image(path: str | Path, limits: DecodeLimits, min_size: int | None = None) -> Image.Image:
    """Reads and decodes an image file (see :func:`decode_image`).

    Raises:
        BadSample: ``no_image`` when the file cannot be read (missing, a folder, unreadable), else as
            :func:`decode_image`.
    """
    try:
        data = Path(path).read_bytes()
    except (OSError, UnicodeEncodeError) as e:  # missing, a folder, unreadable, an unencodable name
        raise BadSample("no_image", f"cannot read {path}: {type(e).__name__}") from None
    return decode_image(data, limits, min_size)


def to_rgb(image: Image.Image, alpha: str = "white") -> Image.Image:
    """``image`` in RGB; with ``alpha="white"`` a transparent image (RGBA, LA, P with a transparency index) is
    composited on white, with ``"drop"`` its alpha channel is discarded (PIL's ``convert("RGB")``)."""
    transparent = image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info)
    if alpha == "white" and transparent:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def decode_text(data: bytes | str) -> list[str]:
    """The captions in a caption field: its non-blank lines, stripped (several lines = several captions).

    Raises:
        BadSample: ``bad_text`` (not UTF-8, or undecodable bytes carried in a ``str``) or ``no_caption``.
    """
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise BadSample("bad_text", str(e)) from None
    try:
        data.encode("utf-8")  # lone surrogates (csv read with surrogateescape) are undecodable bytes
    except UnicodeEncodeError as e:
        raise BadSample("bad_text", str(e)) from None
    captions = [line.strip() for line in data.splitlines() if line.strip()]
    if not captions:
        raise BadSample("no_caption", "blank caption")
    return captions


def sample_captions(sample: Mapping[str, object], caption_field: str = "txt") -> list[str]:
    """A tar sample's captions: the lines of ``caption_field``, else a ``captions`` list or ``caption`` in its json.

    Raises:
        BadSample: ``no_caption`` or ``bad_text``.
    """
    if caption_field in sample:
        return decode_text(sample[caption_field])  # type: ignore[arg-type]
    meta = sample.get("json")
    if isinstance(meta, bytes | str):
        try:
            record = json.loads(meta)
        except (ValueError, UnicodeDecodeError):
            record = None
        if isinstance(record, dict):
            value = record.get("captions", record.get("caption"))
            if isinstance(value, list) and all(isinstance(v, str) for v in value):
                return decode_text("\n".join(value))
            if isinstance(value, str):
                return decode_text(value)
    raise BadSample("no_caption", f"no {caption_field!r} field and no caption in json")


def sample_image_bytes(sample: Mapping[str, object], fields: Sequence[str] = IMAGE_FIELDS) -> bytes:
    """The bytes of a tar sample's first present image field.

    Raises:
        BadSample: ``no_image``.
    """
    for name in fields:
        if name in sample:
            return bytes(sample[name])  # type: ignore[call-overload]
    raise BadSample("no_image", f"none of the fields {list(fields)}")


def pick_caption(captions: Sequence[str], rng: random.Random) -> str:
    """One caption, uniformly at random (the only one when there is one; no rng draw then)."""
    return captions[0] if len(captions) == 1 else captions[rng.randrange(len(captions))]


def sample_parts(sample: Mapping[str, object], image_fields: Sequence[str] = IMAGE_FIELDS,
                 caption_field: str = "txt") -> tuple[bytes, list[str]]:
    """A tar sample's encoded image and captions, undecoded; an incomplete sample flagged ``__broken__``
    (next to tar damage) is ``broken_member`` rather than ``no_caption``/``no_image``.

    The caption is looked at first: it is cheap, and a sample without one is not worth decoding.

    Raises:
        BadSample: With the reason.
    """
    try:
        captions = sample_captions(sample, caption_field)
        return sample_image_bytes(sample, image_fields), captions
    except BadSample as e:
        raise broken_or(sample, e) from None


def broken_or(sample: Mapping[str, object], error: BadSample) -> BadSample:
    """``broken_member`` when ``sample`` is flagged ``__broken__`` (next to tar damage) and ``error`` says a part is
    missing (``no_caption``, ``no_image``); else ``error`` itself."""
    if sample.get("__broken__") and error.reason in ("no_caption", "no_image"):
        return BadSample("broken_member", f"{sample.get('__key__')}: incomplete next to tar damage")
    return error


def decode_pair(sample: Mapping[str, object], limits: DecodeLimits, min_size: int | None, rng: random.Random,
                image_fields: Sequence[str] = IMAGE_FIELDS, caption_field: str = "txt") -> tuple[Image.Image, str]:
    """A tar sample as ``(RGB image, caption)`` (see :func:`sample_parts` and :func:`decode_image`).

    Raises:
        BadSample: With the reason.
    """
    data, captions = sample_parts(sample, image_fields, caption_field)
    return decode_image(data, limits, min_size), pick_caption(captions, rng)


def draft_size(image_size: int, augment: bool, min_scale: float = 0.9, min_ratio: float = 3 / 4) -> int:
    """The shorter side to decode at so that the final crop is never upsampled.

    A random resized crop of area fraction ``s`` and aspect ``r`` spans ``sqrt(s · r)`` of one side of a
    square image; at the smallest, that side must still hold ``image_size`` pixels.
    """
    if not augment:
        return image_size
    return math.ceil(image_size / math.sqrt(min_scale * min_ratio))
