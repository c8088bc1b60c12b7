"""The eval transform's image geometry and the alpha rule, in PIL alone (no torch): shared by
``clipforge.transforms``, ``clipforge.data.decode`` and the torch-free runtime ``clipforge.deploy``, so every path
converts, resizes and crops identically."""

from __future__ import annotations

from PIL import Image

BICUBIC = Image.Resampling.BICUBIC


def center_crop(image: Image.Image, size: int) -> Image.Image:
    """Centre crop to ``size``×``size`` (padding with black when the image is smaller), like torchvision."""
    w, h = image.size
    if w < size or h < size:
        padded = Image.new(image.mode, (max(w, size), max(h, size)))
        padded.paste(image, ((max(w, size) - w) // 2, (max(h, size) - h) // 2))
        image, (w, h) = padded, padded.size
    top = int(round((h - size) / 2.0))
    left = int(round((w - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


def resize(image: Image.Image, size: int, rule: str = "shorter_crop") -> Image.Image:
    """``shorter_crop`` (the shorter side to ``size``, bicubic, then a centre crop: OpenAI) or ``squash`` (both
    sides to ``size``: big_vision)."""
    if rule == "squash":
        return image if image.size == (size, size) else image.resize((size, size), BICUBIC)
    w, h = image.size
    short, long = (w, h) if w <= h else (h, w)
    if short != size:  # torchvision's Resize(int): the long side is truncated, not rounded
        new_long = int(size * long / short)
        image = image.resize((size, new_long) if w <= h else (new_long, size), BICUBIC)
    return center_crop(image, size)


def to_rgb(image: Image.Image, alpha: str = "white") -> Image.Image:
    """``image`` in RGB; with ``alpha="white"`` a transparent image (RGBA, LA, P with a transparency index) is
    composited on white, with ``"drop"`` its alpha channel is discarded (PIL's ``convert("RGB")``)."""
    transparent = image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info)
    if alpha == "white" and transparent:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")
