"""Preprocessing equals torchvision's (and so OpenAI's) pipeline on awkward images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from clipforge.models.config import OPENAI_MEAN, OPENAI_STD
from clipforge.transforms import EvalTransform, TrainTransform

tv = pytest.importorskip("torchvision.transforms")


def reference(size: int) -> object:
    """OpenAI's clip/clip.py::_transform."""
    return tv.Compose([
        tv.Resize(size, interpolation=tv.InterpolationMode.BICUBIC),
        tv.CenterCrop(size),
        lambda image: image.convert("RGB"),
        tv.ToTensor(),
        tv.Normalize(OPENAI_MEAN, OPENAI_STD),
    ])


def make_image(mode: str, size: tuple[int, int], seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    w, h = size
    # Smooth gradients plus noise: both resampling paths and edge handling matter.
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / max(w - 1, 1), yy * 255 / max(h - 1, 1), (xx + yy) % 256], -1)
    rgb = np.clip(base + rng.normal(0, 30, base.shape), 0, 255).astype(np.uint8)
    image = Image.fromarray(rgb, "RGB")
    if mode == "RGBA":
        alpha = Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8), "L")
        image.putalpha(alpha)
        return image
    if mode == "P":
        return image.quantize(64)
    return image.convert(mode)


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "P", "CMYK"])
@pytest.mark.parametrize("size", [(97, 131), (301, 223), (224, 224), (50, 40), (1000, 17)])
def test_eval_transform_matches_torchvision(mode: str, size: tuple[int, int]) -> None:
    image = make_image(mode, size, seed=sum(size))
    ours = EvalTransform(224, OPENAI_MEAN, OPENAI_STD)(image)
    theirs = reference(224)(image)
    assert ours.shape == theirs.shape == (3, 224, 224)
    # Within 1/255 on every pixel, in [0, 1] units (undo the normalisation's division by std).
    diff = (ours - theirs).abs() * torch.tensor(OPENAI_STD).view(3, 1, 1)
    assert diff.max() <= 1 / 255 + 1e-6


def test_train_transform_shapes_and_determinism() -> None:
    import random

    image = make_image("RGB", (256, 240), seed=1)
    tf = TrainTransform(64, OPENAI_MEAN, OPENAI_STD)
    a, b = tf(image, random.Random(3)), tf(image, random.Random(3))
    assert a.shape == (3, 64, 64) and torch.equal(a, b)
    assert not torch.equal(a, tf(image, random.Random(4)))
    left, top, right, bottom = tf.crop_box(256, 240, random.Random(0))
    assert 0 <= left < right <= 256 and 0 <= top < bottom <= 240
    assert 0.85 <= (right - left) * (bottom - top) / (256 * 240) <= 1.0
