"""Generated image bytes: noise in any format, PNG bombs and corrupt PNGs."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def encode(image: Image.Image, fmt: str = "JPEG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def noise(width: int, height: int, seed: int = 0, mode: str = "RGB") -> Image.Image:
    channels = {"RGB": 3, "RGBA": 4}[mode]
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, channels), dtype=np.uint8)
    return Image.fromarray(pixels, mode)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(width: int, height: int) -> bytes:
    """A few hundred bytes of PNG claiming ``width`` × ``height`` pixels (a decompression bomb)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(bytes(100_000)))
            + png_chunk(b"IEND", b""))


def corrupt_png() -> bytes:
    """A PNG whose compressed pixel stream is damaged (CRC and headers intact)."""
    data = bytearray(encode(noise(64, 64), "PNG"))
    start = data.find(b"IDAT") + 100
    data[start:start + 40] = bytes(40)
    return bytes(data)


def jpeg(seed: int, width: int = 48, height: int = 40, fmt: str = "JPEG") -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def image_bytes(seed: int, size: tuple[int, int] = (40, 48), fmt: str = "JPEG") -> bytes:
    return jpeg(seed, size[0], size[1], fmt)
