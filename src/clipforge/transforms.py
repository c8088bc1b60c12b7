"""Image preprocessing, as OpenAI's CLIP does it, without a torchvision dependency.

Eval: resize the shorter side to the model's size (bicubic, PIL's antialiased filter), centre crop,
convert to RGB, scale to [0, 1], normalise with the model's mean/std. The order is OpenAI's
(``clip/clip.py::_transform``) so released checkpoints see exactly the pixels they were evaluated on;
it equals torchvision's ``Resize(BICUBIC) + CenterCrop + ToTensor + Normalize`` on PIL images.
Train: a random resized crop (scale 0.9–1.0 as OpenCLIP) in place of resize + centre crop.

A SigLIP 2 NaFlex model (``vision.naflex``) gets ``NaFlexTransform`` instead: the image keeps its aspect ratio,
resized to at most ``max_num_patches`` patches (bilinear, antialiased), cut into patches and padded, exactly as
transformers' ``Siglip2ImageProcessor`` does (``clipforge.models.naflex``); it returns one image's
``NaFlexBatch``, and ``torch.stack`` of those is the batch the model takes. ``NaFlexTrainTransform`` crops at
random first, as ``TrainTransform`` does, and keeps the crop's aspect ratio.

clipforge's readers hand these transforms RGB images already (``clipforge.data.decode``: transparency
composited on white, or dropped with ``alpha="drop"``); an image given here in another mode is converted
with PIL's ``convert("RGB")``, as OpenAI's preprocessing does (alpha dropped).
Both transforms are picklable classes, so DataLoader workers can use them.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from clipforge.geometry import resize
from clipforge.models.naflex import NaFlexBatch, preprocess

BICUBIC = Image.Resampling.BICUBIC


def to_tensor(image: Image.Image, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """RGB PIL image → normalised float tensor (3, H, W)."""
    x = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return x.sub_(mean_t).div_(std_t)


def _rgb(image: Image.Image) -> Image.Image:
    return image if image.mode == "RGB" else image.convert("RGB")


class EvalTransform:
    """Resize shorter side (bicubic) → centre crop → RGB → tensor → normalise.

    Args:
        size: Output side in pixels.
        mean: Per-channel mean.
        std: Per-channel std.
        resize: ``shorter_crop`` (OpenAI) or ``squash`` (resize both sides, no crop: big_vision).
    """

    def __init__(self, size: int, mean: Sequence[float], std: Sequence[float], resize: str = "shorter_crop"):
        if resize not in ("shorter_crop", "squash"):
            raise ValueError(f"resize must be 'shorter_crop' or 'squash', got {resize!r}")
        self.size, self.mean, self.std, self.resize = size, tuple(mean), tuple(std), resize

    def __call__(self, image: Image.Image) -> torch.Tensor:
        if self.resize == "squash":
            return to_tensor(resize(_rgb(image), self.size, "squash"), self.mean, self.std)
        return to_tensor(_rgb(resize(image, self.size, "shorter_crop")), self.mean, self.std)

    def __repr__(self) -> str:
        return f"EvalTransform(size={self.size}, resize={self.resize!r}, mean={self.mean}, std={self.std})"


class TrainTransform:
    """Random resized crop (bicubic) → RGB → tensor → normalise.

    Args:
        size: Output side in pixels.
        mean: Per-channel mean.
        std: Per-channel std.
        scale: Range of the crop's area as a fraction of the image's.
        ratio: Range of the crop's aspect ratio.
    """

    def __init__(self, size: int, mean: Sequence[float], std: Sequence[float],
                 scale: tuple[float, float] = (0.9, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3)):
        self.size, self.mean, self.std, self.scale, self.ratio = size, tuple(mean), tuple(std), scale, ratio

    def crop_box(self, width: int, height: int, rng: random.Random) -> tuple[int, int, int, int]:
        """torchvision's RandomResizedCrop.get_params: (left, top, right, bottom)."""
        area = width * height
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target = area * rng.uniform(*self.scale)
            aspect = math.exp(rng.uniform(*log_ratio))
            w = int(round(math.sqrt(target * aspect)))
            h = int(round(math.sqrt(target / aspect)))
            if 0 < w <= width and 0 < h <= height:
                top, left = rng.randint(0, height - h), rng.randint(0, width - w)
                return left, top, left + w, top + h
        # Fallback: a centre crop at the nearest allowed aspect ratio.
        in_ratio = width / height
        if in_ratio < self.ratio[0]:
            w, h = width, int(round(width / self.ratio[0]))
        elif in_ratio > self.ratio[1]:
            w, h = int(round(height * self.ratio[1])), height
        else:
            w, h = width, height
        left, top = (width - w) // 2, (height - h) // 2
        return left, top, left + w, top + h

    def __call__(self, image: Image.Image, rng: random.Random | None = None) -> torch.Tensor:
        box = self.crop_box(*image.size, rng or random)  # type: ignore[arg-type]
        image = _rgb(image).resize((self.size, self.size), BICUBIC, box=box)
        return to_tensor(image, self.mean, self.std)

    def __repr__(self) -> str:
        return f"TrainTransform(size={self.size}, scale={self.scale}, ratio={self.ratio})"


class NaFlexTransform:
    """RGB → aspect-preserving resize to at most ``max_num_patches`` patches → patches, padded (SigLIP 2 NaFlex).

    Returns one image's unbatched ``NaFlexBatch`` (patches (max_num_patches, 3·p·p), mask, spatial shape), equal
    to what ``Siglip2ImageProcessor(patch_size=p, max_num_patches=...)`` gives for it; ``torch.stack`` of several
    is a batch.

    Args:
        patch_size: The model's patch side in pixels.
        max_num_patches: The patch budget (and the padded length).
        mean: Per-channel mean.
        std: Per-channel std.
    """

    def __init__(self, patch_size: int, max_num_patches: int, mean: Sequence[float], std: Sequence[float]):
        if patch_size < 1 or max_num_patches < 1:
            raise ValueError(f"patch_size and max_num_patches must be positive, got {patch_size}, {max_num_patches}")
        self.patch_size, self.max_num_patches = patch_size, max_num_patches
        self.mean, self.std = tuple(mean), tuple(std)

    def __call__(self, image: Image.Image) -> NaFlexBatch:
        pixels = torch.from_numpy(np.asarray(_rgb(image), dtype=np.uint8).copy()).permute(2, 0, 1)  # (3, H, W)
        return preprocess(pixels, self.patch_size, self.max_num_patches, self.mean, self.std)

    def __repr__(self) -> str:
        return (f"NaFlexTransform(patch_size={self.patch_size}, max_num_patches={self.max_num_patches}, "
                f"mean={self.mean}, std={self.std})")


class NaFlexTrainTransform(NaFlexTransform):
    """A random crop (``TrainTransform.crop_box``: area ``scale``, aspect ``ratio``), then ``NaFlexTransform`` on it.

    Args:
        patch_size, max_num_patches, mean, std: As ``NaFlexTransform``.
        scale: Range of the crop's area as a fraction of the image's.
        ratio: Range of the crop's aspect ratio.
    """

    def __init__(self, patch_size: int, max_num_patches: int, mean: Sequence[float], std: Sequence[float],
                 scale: tuple[float, float] = (0.9, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3)):
        super().__init__(patch_size, max_num_patches, mean, std)
        self.crop = TrainTransform(patch_size, mean, std, scale, ratio)

    def __call__(self, image: Image.Image, rng: random.Random | None = None) -> NaFlexBatch:
        box = self.crop.crop_box(*image.size, rng or random)  # type: ignore[arg-type]
        return super().__call__(_rgb(image).crop(box))

    def __repr__(self) -> str:
        return (f"NaFlexTrainTransform(patch_size={self.patch_size}, max_num_patches={self.max_num_patches}, "
                f"scale={self.crop.scale}, ratio={self.crop.ratio})")


AnyTrainTransform = TrainTransform | NaFlexTrainTransform  # what ``model_transforms`` gives, by the model's config
AnyEvalTransform = EvalTransform | NaFlexTransform


def image_transforms(size: int, mean: Sequence[float], std: Sequence[float],
                     resize: str = "shorter_crop") -> tuple[TrainTransform, EvalTransform]:
    """The (train, eval) transforms for a model of input side ``size``."""
    return TrainTransform(size, mean, std), EvalTransform(size, mean, std, resize)


def model_transforms(config: object) -> tuple[AnyTrainTransform, AnyEvalTransform]:
    """The (train, eval) transforms a model config asks for (size, mean, std, resize rule; NaFlex for a
    ``vision.naflex`` tower: its patch size and budget)."""
    vision, mean, std = config.vision, config.mean, config.std  # type: ignore[attr-defined]
    if getattr(vision, "naflex", False):
        return (NaFlexTrainTransform(vision.patch_size, vision.max_num_patches, mean, std),
                NaFlexTransform(vision.patch_size, vision.max_num_patches, mean, std))
    return image_transforms(vision.image_size, mean, std, config.image_resize)  # type: ignore[attr-defined]
