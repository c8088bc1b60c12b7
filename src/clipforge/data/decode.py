"""The one image decoder of clipforge (training, evaluation, embedding, classify): bad images and captions
become counted skips, never crashes.

Every way a sample can be bad maps to one *reason* (a short string: the key under which the training metrics
count it, and the first word of an evaluation's ``skipped`` entry)::

    empty        zero-byte image
    not_image    bytes that are no image of an accepted format (``DecodeLimits.formats``): HTML error pages,
                 random bytes, a PSD, ICO, EPS or PDF, an SVG
    truncated    an image of an accepted format cut short (the file ends before the header or the pixels do)
    corrupt      the format is recognised (by PIL or by its signature) but the data is broken: a bad header
                 (a PNG IHDR with a wrong CRC, a JPEG frame with no components), bad Huffman tables, and any
                 other exception the decoder raises (its class and message are the detail)
    too_large    more than ``max_pixels`` pixels (decompression bombs, absurd declared sizes), an encoded image
                 over ``max_image_bytes``, or a caption or json sidecar over ``max_text_bytes`` /
                 ``max_json_bytes``
    bad_size     a side below ``min_side`` or an aspect ratio beyond ``max_aspect``
    no_image     a sample without any image field, or a listed image file that does not exist
    no_caption   a missing, empty or blank caption (or class label)
    bad_text     a caption that is not valid UTF-8, a class label that is not an integer, or a json sidecar
                 nested deeper than ``max_json_depth``
    broken_member  an incomplete sample next to a damaged region of a tar shard
    error        any other exception met while turning one sample into a model input (outside the decoder:
                 a transform, a processor); its class and message are the detail. Counted and skipped like
                 the rest, so one sample never ends a run, but it is a bug or an unforeseen input: report it.

The decoder itself (:func:`decode_image`, :func:`decode_text`, :func:`sample_captions`, :func:`decode_pair`)
raises nothing but ``BadSample`` for an ``Exception`` (``KeyboardInterrupt`` and ``SystemExit`` pass); the
readers' loops catch every ``Exception`` at the sample boundary and count it (:func:`as_bad_sample`).

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
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from PIL import Image, UnidentifiedImageError

from clipforge.geometry import to_rgb  # the one alpha rule, shared with the eval transform and clipforge.deploy

REASONS = ("empty", "not_image", "truncated", "corrupt", "too_large", "bad_size", "no_image", "no_caption",
           "bad_text", "broken_member", "error")
IMAGE_FIELDS = ("jpg", "jpeg", "png", "webp")
ALPHA_RULES = ("white", "drop")
FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")  # what an image–text pipeline meets; PIL knows ~40 more
_SIGNATURES = {"JPEG": (b"\xff\xd8\xff",), "PNG": (b"\x89PNG\r\n\x1a\n",), "GIF": (b"GIF87a", b"GIF89a"),
               "TIFF": (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")}
_BMP_HEADERS = (12, 16, 40, 52, 56, 64, 108, 124)  # the DIB header sizes a BMP can declare (offset 14)
_BRACKETS = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}]')  # a JSON string (skipped whole) or a bracket


class BadSample(Exception):
    """A sample that cannot be used; ``reason`` is one of :data:`REASONS`.

    Args:
        reason: Why the sample is skipped.
        detail: A human-readable detail (file, error message).
    """

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def as_bad_sample(error: Exception) -> BadSample:
    """``error`` itself when it is a ``BadSample``, else an ``error`` one naming its class (the sample boundary:
    whatever one sample raises is counted, never allowed to end a run)."""
    if isinstance(error, BadSample):
        return error
    return BadSample("error", _describe(error))


def _describe(error: BaseException, limit: int = 300) -> str:
    """``"Class: message"``, the message cut to ``limit`` characters (a hostile input can make it huge)."""
    message = str(error)
    return f"{type(error).__name__}: {message[:limit]}{'…' if len(message) > limit else ''}"


@dataclass(frozen=True)
class DecodeLimits:
    """What a decodable sample may look like (anything else is skipped and counted), and how it becomes RGB.

    Attributes:
        max_pixels: Most pixels (width × height, read from the header before decoding); beyond: ``too_large``.
            PIL's own decompression-bomb limit is 89,478,485; web images above 64 Mpx are almost always junk.
        min_side: Smallest width or height; below: ``bad_size``.
        max_aspect: Largest ratio of the longer side to the shorter (banners, 1-pixel lines); beyond: ``bad_size``.
        alpha: ``white``: composite transparent images on white; ``drop``: discard the alpha channel
            (OpenAI's ``convert("RGB")``; see the module docstring); ``keep``: hand transparent images on as RGBA
            (training's ``augment.backgrounds`` composites them itself, ``clipforge.data.augment``).
        formats: The image formats decoded (PIL's names); any other, even one PIL could open (PSD, ICO, EPS,
            TGA, ...), is ``not_image``. Each extra format is extra parser surface for hostile bytes.
        max_image_bytes: Largest encoded image (a file is checked before it is read); beyond: ``too_large``.
        max_text_bytes: Largest caption field (a ``.txt`` sidecar, a table cell: bytes, or characters once
            decoded); beyond: ``too_large``. Captions are cut to the model's context anyway.
        max_json_bytes: Largest ``.json`` sidecar that is parsed for a caption; beyond: ``too_large``.
        max_json_depth: Deepest nesting of ``[`` and ``{`` in a parsed ``.json`` sidecar; deeper: ``bad_text``
            (checked by a scan before parsing, so no recursion limit is ever approached).
    """

    max_pixels: int = 64_000_000
    min_side: int = 8
    max_aspect: float = 20.0
    alpha: Literal["white", "drop", "keep"] = "white"
    formats: tuple[str, ...] = FORMATS
    max_image_bytes: int = 100_000_000
    max_text_bytes: int = 65_536
    max_json_bytes: int = 1_048_576
    max_json_depth: int = 32

    def validate(self) -> DecodeLimits:
        """Returns ``self``; raises ``ValueError`` unless the sizes are positive, max_aspect >= 1, alpha is
        ``white`` or ``drop`` and ``formats`` names image formats PIL can open.

        (Not run on construction, so a config loader can turn the error into its own kind.)
        """
        if self.max_pixels <= 0 or self.min_side <= 0 or not self.max_aspect >= 1:
            raise ValueError(f"max_pixels and min_side must be positive, max_aspect >= 1; got {self}")
        sizes = {"max_image_bytes": self.max_image_bytes, "max_text_bytes": self.max_text_bytes,
                 "max_json_bytes": self.max_json_bytes, "max_json_depth": self.max_json_depth}
        bad = [f"{k}={v}" for k, v in sizes.items() if v <= 0]
        if bad:
            raise ValueError(f"{', '.join(bad)}: must be positive")
        if self.alpha not in (*ALPHA_RULES, "keep"):
            raise ValueError(f"alpha must be one of {(*ALPHA_RULES, 'keep')}, got {self.alpha!r}")
        Image.init()
        unknown = [f for f in self.formats if f not in Image.OPEN]
        if unknown or not self.formats:
            raise ValueError(f"formats: {unknown or 'none given'} not among the formats PIL opens "
                             f"(e.g. {', '.join(FORMATS)})")
        return self


DEFAULT_LIMITS = DecodeLimits()


def check_size(width: int, height: int, limits: DecodeLimits) -> None:
    """Raises ``BadSample`` (``too_large`` or ``bad_size``) when a ``width`` × ``height`` image breaks ``limits``."""
    if width * height > limits.max_pixels:
        raise BadSample("too_large", f"{width}x{height} exceeds {limits.max_pixels} pixels")
    if min(width, height) < limits.min_side:
        raise BadSample("bad_size", f"{width}x{height} has a side below {limits.min_side}")
    if max(width, height) > limits.max_aspect * min(width, height):
        raise BadSample("bad_size", f"{width}x{height} has an aspect ratio beyond {limits.max_aspect}")


def sniff_format(data: bytes) -> str | None:
    """The format whose signature ``data`` starts with, among :data:`FORMATS` (``None``: none of them)."""
    for fmt, signatures in _SIGNATURES.items():
        if data.startswith(signatures):
            return fmt
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[:2] == b"BM" and len(data) >= 18 and int.from_bytes(data[14:18], "little") in _BMP_HEADERS:
        return "BMP"
    return None


def open_image(data: bytes, limits: DecodeLimits) -> Image.Image:
    """Parses an image's header (no pixels decoded yet) and checks its size against ``limits``.

    Only ``limits.formats`` are tried. Bytes that PIL cannot identify but that begin with the signature of an
    accepted format are that format with a broken header: ``corrupt`` (or ``truncated``), not ``not_image``.

    Raises:
        BadSample: ``empty``, ``not_image``, ``too_large``, ``bad_size``, ``truncated`` or ``corrupt``.
    """
    if not data:
        raise BadSample("empty")
    if len(data) > limits.max_image_bytes:
        raise BadSample("too_large", f"{len(data)} bytes exceed max_image_bytes={limits.max_image_bytes}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # our own limits decide (bombs); plugins' warnings are noise here
            image = Image.open(io.BytesIO(data), formats=limits.formats)
        width, height = image.size
    except Image.DecompressionBombError as e:
        raise BadSample("too_large", str(e)) from None
    except UnidentifiedImageError:
        raise _unidentified(data, limits) from None
    except MemoryError:
        raise BadSample("too_large", "MemoryError while reading the header") from None
    except Exception as e:  # a plugin's parser meeting hostile bytes: struct.error, TypeError, ...
        raise _failure(e) from None
    check_size(width, height, limits)
    return image


def _unidentified(data: bytes, limits: DecodeLimits) -> BadSample:
    """Why PIL could not identify ``data``: ``not_image``, or, when it carries an accepted format's signature,
    what that format's parser says (``truncated``/``corrupt``: a recognised format with a broken header)."""
    fmt = sniff_format(data)
    if fmt is None or fmt not in limits.formats:
        return BadSample("not_image", f"{len(data)} bytes of no accepted image format ({', '.join(limits.formats)})")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            Image.OPEN[fmt][0](io.BytesIO(data), "")  # the plugin itself, for its error message
    except Exception as e:
        failure = _failure(e)
        return BadSample(failure.reason, f"{fmt} header: {failure.args[0].split(': ', 1)[-1]}")
    return BadSample("corrupt", f"{fmt} signature but no readable {fmt} header")


def decode_image(data: bytes, limits: DecodeLimits, min_size: int | None = None) -> Image.Image:
    """Decodes image bytes to an RGB image, at least ``min_size`` on its shorter side if the original is.

    JPEGs use ``draft`` (reduce-on-decode); any format is then reduced by whole factors while it stays at
    least twice ``min_size``, so the caller's final resize works on at most 2× its output.

    Args:
        data: The encoded image.
        limits: Size limits and accepted formats, checked on the header before any pixel is decoded.
        min_size: The smallest shorter side the caller needs; ``None`` decodes at full size.

    Returns:
        The decoded RGB image (RGBA for a transparent one under ``limits.alpha="keep"``).

    Raises:
        BadSample: With the reason (see the module docstring); never another ``Exception``.
    """
    image = open_image(data, limits)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if min_size is not None and image.format == "JPEG":
                image.draft("RGB", (min_size, min_size))  # both sides stay >= min_size
            image.load()
            image = _reduce(image, min_size) if min_size is not None else image
            if image.mode == "RGB":
                return image
            return keep_alpha(image) if limits.alpha == "keep" else to_rgb(image, limits.alpha)
    except (Image.DecompressionBombError, MemoryError) as e:
        raise BadSample("too_large", _describe(e)) from None
    except Exception as e:  # every decoder failure is the sample's, never the run's
        raise _failure(e) from None


def keep_alpha(image: Image.Image) -> Image.Image:
    """A transparent image (RGBA, LA, P with a transparency index) as RGBA; any other as RGB."""
    transparent = image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info)
    return image.convert("RGBA" if transparent else "RGB")


def _failure(error: Exception) -> BadSample:
    """``truncated`` when the data ended early (PIL's message says so, or a header read ran out of bytes), else
    ``corrupt``; the detail names the exception's class."""
    message = str(error).lower()
    cut_short = (isinstance(error, EOFError) or "unpack requires a buffer" in message
                 or (isinstance(error, OSError) and ("truncated" in message or "end of file" in message)))
    return BadSample("truncated" if cut_short else "corrupt", _describe(error))


def _reduce(image: Image.Image, min_size: int) -> Image.Image:
    """Box-reduces by the largest whole factor that keeps the shorter side at least ``2 · min_size``."""
    factor = min(image.size) // (2 * min_size)
    return image.reduce(factor) if factor >= 2 else image


def read_image(path: str | Path, limits: DecodeLimits, min_size: int | None = None) -> Image.Image:
    """Reads and decodes an image file (see :func:`decode_image`).

    Raises:
        BadSample: ``no_image`` when the file cannot be read (missing, a folder, unreadable), ``too_large`` when
            it is over ``limits.max_image_bytes`` (checked before reading), else as :func:`decode_image`.
    """
    return decode_image(read_bytes(path, limits.max_image_bytes, "no_image"), limits, min_size)


def read_bytes(path: str | Path, limit: int, missing: str = "no_image") -> bytes:
    """The bytes of the file at ``path``, refused (``too_large``) before reading when over ``limit`` bytes.

    Raises:
        BadSample: ``missing`` (the reason) when the file cannot be read (missing, a folder, unreadable, an
            unencodable name), ``too_large`` when it is bigger than ``limit``.
    """
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)  # never more than the limit in memory, whatever the file claims
    except (OSError, UnicodeEncodeError, ValueError) as e:  # ValueError: a NUL in the name
        raise BadSample(missing, f"cannot read {path}: {type(e).__name__}") from None
    if len(data) > limit:
        raise BadSample("too_large", f"{path} is over {limit} bytes")
    return data


def decode_text(data: bytes | str, limits: DecodeLimits = DEFAULT_LIMITS) -> list[str]:
    """The captions in a caption field: its non-blank lines, stripped (several lines = several captions).

    Raises:
        BadSample: ``too_large`` (over ``limits.max_text_bytes``), ``bad_text`` (not text, not UTF-8, or
            undecodable bytes carried in a ``str``) or ``no_caption``.
    """
    if not isinstance(data, bytes | bytearray | memoryview | str):
        raise BadSample("bad_text", f"a caption field of type {type(data).__name__}")
    if len(data) > limits.max_text_bytes:
        raise BadSample("too_large", f"a caption of {len(data)} bytes (max_text_bytes={limits.max_text_bytes})")
    if not isinstance(data, str):
        try:
            data = bytes(data).decode("utf-8")
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


def json_depth(data: bytes, stop: int) -> int:
    """The deepest nesting of ``[``/``{`` in JSON text ``data`` (brackets inside strings not counted); the scan
    ends as soon as the depth passes ``stop`` (so a hostile sidecar costs one linear pass at most)."""
    depth = deepest = 0
    for match in _BRACKETS.finditer(data):
        token = match.group()
        if token in (b"[", b"{"):
            depth += 1
            deepest = max(deepest, depth)
            if deepest > stop:
                break
        elif token in (b"]", b"}"):
            depth -= 1
    return deepest


def sample_captions(sample: Mapping[str, object], caption_field: str = "txt",
                    limits: DecodeLimits = DEFAULT_LIMITS) -> list[str]:
    """A tar sample's captions: the lines of ``caption_field``, else a ``captions`` list or ``caption`` in its json.

    The json is parsed only when there is no caption field, and only within ``limits`` (``max_json_bytes``,
    ``max_json_depth``); a json that is no JSON object counts as no caption.

    Raises:
        BadSample: ``no_caption``, ``bad_text`` (as :func:`decode_text`, or json nested too deep) or ``too_large``.
    """
    if caption_field in sample:
        return decode_text(sample[caption_field], limits)  # type: ignore[arg-type]
    meta = sample.get("json")
    if isinstance(meta, bytes | str):
        raw = meta.encode("utf-8", "surrogatepass") if isinstance(meta, str) else meta
        if len(raw) > limits.max_json_bytes:
            raise BadSample("too_large", f"a json sidecar of {len(raw)} bytes (max_json_bytes={limits.max_json_bytes})")
        if json_depth(raw, limits.max_json_depth) > limits.max_json_depth:
            raise BadSample("bad_text", f"a json sidecar nested deeper than max_json_depth={limits.max_json_depth}")
        try:
            record = json.loads(raw)
        except (ValueError, RecursionError):  # not JSON, not UTF-8 (UnicodeDecodeError is a ValueError)
            record = None
        if isinstance(record, dict):
            value = record.get("captions", record.get("caption"))
            if isinstance(value, list) and all(isinstance(v, str) for v in value):
                return decode_text("\n".join(value), limits)
            if isinstance(value, str):
                return decode_text(value, limits)
    raise BadSample("no_caption", f"no {caption_field!r} field and no caption in json")


def sample_image_bytes(sample: Mapping[str, object], fields: Sequence[str] = IMAGE_FIELDS) -> bytes:
    """The bytes of a tar sample's first present image field.

    Raises:
        BadSample: ``no_image``, or ``not_image`` for a field that holds no bytes.
    """
    for name in fields:
        if name in sample:
            value = sample[name]
            if not isinstance(value, bytes | bytearray | memoryview):
                raise BadSample("not_image", f"field {name!r} holds a {type(value).__name__}, not bytes")
            return bytes(value)
    raise BadSample("no_image", f"none of the fields {list(fields)}")


def pick_caption(captions: Sequence[str], rng: random.Random) -> str:
    """One caption, uniformly at random (the only one when there is one; no rng draw then)."""
    return captions[0] if len(captions) == 1 else captions[rng.randrange(len(captions))]


def sample_parts(sample: Mapping[str, object], image_fields: Sequence[str] = IMAGE_FIELDS,
                 caption_field: str = "txt", limits: DecodeLimits = DEFAULT_LIMITS) -> tuple[bytes, list[str]]:
    """A tar sample's encoded image and captions, undecoded; an incomplete sample flagged ``__broken__``
    (next to tar damage) is ``broken_member`` rather than ``no_caption``/``no_image``.

    The caption is looked at first: it is cheap, and a sample without one is not worth decoding.

    Raises:
        BadSample: With the reason.
    """
    oversized = sample.get("__oversized__")
    if isinstance(oversized, dict) and oversized:
        ext, size = next(iter(oversized.items()))
        raise BadSample("too_large", f"{sample.get('__key__')}: member .{ext} of {size:,} bytes was not read")
    try:
        captions = sample_captions(sample, caption_field, limits)
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
    data, captions = sample_parts(sample, image_fields, caption_field, limits)
    return decode_image(data, limits, min_size), pick_caption(captions, rng)


def draft_size(image_size: int, augment: bool, min_scale: float = 0.9, min_ratio: float = 3 / 4) -> int:
    """The shorter side to decode at so that the final crop is never upsampled.

    A random resized crop of area fraction ``s`` and aspect ``r`` spans ``sqrt(s · r)`` of one side of a
    square image; at the smallest, that side must still hold ``image_size`` pixels.
    """
    if not augment:
        return image_size
    return math.ceil(image_size / math.sqrt(min_scale * min_ratio))
