"""Image preprocessing for the ONNX runtime, in PIL and numpy: clipforge's eval transform without torch.

The steps and their order are those of ``clipforge.transforms.EvalTransform`` applied to an image decoded as
clipforge's readers decode it (``clipforge.data.decode``):

1. to RGB: a transparent image (RGBA, LA, P with a transparency index) is composited on white (``alpha="white"``,
   the readers' default), or its alpha dropped with PIL's ``convert("RGB")`` (``alpha="drop"``); any other mode
   is ``convert("RGB")``;
2. ``shorter_crop``: the shorter side resized to ``image_size`` with PIL's antialiased bicubic filter (the long side
   truncated, as torchvision's ``Resize(int)``; no resize when the shorter side already has the size), then a
   centre crop (black padding where the image is smaller, offsets rounded as torchvision's ``CenterCrop``);
   ``squash``: both sides resized to ``image_size`` (big_vision), no crop;
3. uint8 → float32 ``/ 255``, minus ``mean``, divided by ``std``, channels first.

The float32 operations are the transform's own, so the pixels are bit-identical to it (the tests check this on odd
sizes, grayscale, RGBA, LA and palette images).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from clipforge.geometry import resize, to_rgb  # the eval transform's own geometry and alpha rule, torch-free

RESIZE_RULES = ("shorter_crop", "squash")
ALPHA_RULES = ("white", "drop")
ImageInput = str | Path | Image.Image


def open_image(image: ImageInput, alpha: str = "white") -> Image.Image:
    """A path (read with PIL, fully decoded) or a PIL image → an RGB image (see ``to_rgb``).

    Raises:
        FileNotFoundError: the path is not a file.
        ValueError: the file is not an image PIL can read.
        TypeError: ``image`` is neither a path nor a PIL image.
    """
    if isinstance(image, Image.Image):
        return to_rgb(image, alpha)
    if not isinstance(image, str | Path):
        raise TypeError(f"expected an image path or a PIL image, got {type(image).__name__}")
    path = Path(image)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        with Image.open(path) as opened:
            opened.load()
            return to_rgb(opened, alpha)
    except (OSError, SyntaxError, ValueError) as e:  # PIL's UnidentifiedImageError is an OSError
        raise ValueError(f"cannot read {path} as an image: {e}") from None


def normalize(pixels: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """uint8 pixels (N, 3, H, W) → float32 ``(x / 255 - mean) / std``, the model's input."""
    mean32 = np.asarray(mean, dtype=np.float32).reshape(1, 3, 1, 1)
    std32 = np.asarray(std, dtype=np.float32).reshape(1, 3, 1, 1)
    return (pixels.astype(np.float32) / np.float32(255) - mean32) / std32


class ImagePreprocessor:
    """Paths or PIL images → the image tower's float32 input (N, 3, size, size).

    Args:
        image_size: Output side in pixels.
        mean: Per-channel mean.
        std: Per-channel std.
        resize: ``shorter_crop`` (OpenAI) or ``squash`` (big_vision).
        alpha: ``white`` (composite transparent images on white) or ``drop``.

    Raises:
        ValueError: a rule is unknown, or the size, mean or std is malformed.
    """

    def __init__(self, image_size: int, mean: Sequence[float], std: Sequence[float], resize: str = "shorter_crop",
                 alpha: str = "white"):
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
            raise ValueError(f"image_size must be a positive integer, got {image_size!r}")
        if resize not in RESIZE_RULES:
            raise ValueError(f"resize must be one of {RESIZE_RULES}, got {resize!r}")
        if alpha not in ALPHA_RULES:
            raise ValueError(f"alpha must be one of {ALPHA_RULES}, got {alpha!r}")
        for name, values in (("mean", mean), ("std", std)):
            if len(values) != 3 or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
                raise ValueError(f"{name} must be three numbers, got {values!r}")
        if any(v == 0 for v in std):
            raise ValueError(f"std must not be zero, got {std!r}")
        self.image_size, self.resize, self.alpha = image_size, resize, alpha
        self.mean, self.std = tuple(float(v) for v in mean), tuple(float(v) for v in std)

    def pixels(self, image: ImageInput) -> np.ndarray:
        """One image → uint8 (3, size, size), before normalisation."""
        rgb = resize(open_image(image, self.alpha), self.image_size, self.resize)
        return np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1)

    def __call__(self, images: ImageInput | Sequence[ImageInput]) -> np.ndarray:
        """One image or several → float32 (N, 3, size, size)."""
        items = [images] if isinstance(images, str | Path | Image.Image) else list(images)
        if not items:
            return np.zeros((0, 3, self.image_size, self.image_size), dtype=np.float32)
        return normalize(np.stack([self.pixels(item) for item in items]), self.mean, self.std)

    def __repr__(self) -> str:
        return (f"ImagePreprocessor(image_size={self.image_size}, resize={self.resize!r}, alpha={self.alpha!r}, "
                f"mean={self.mean}, std={self.std})")
