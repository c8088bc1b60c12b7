"""The runtime's PIL/numpy preprocessing against clipforge's torch eval transform on decoded images: bit-identical
(the bound asked is 1e-6; measured 0) for odd sizes, both resize rules and every image mode."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from clipforge.data.decode import to_rgb as reader_to_rgb
from clipforge.deploy.preprocess import ImagePreprocessor, open_image, to_rgb
from clipforge.transforms import EvalTransform

OPENAI = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
SIZES = [(63, 97), (101, 31), (64, 64), (17, 23), (299, 300), (1, 5), (224, 225)]


def make(mode: str, w: int, h: int, seed: int = 0) -> Image.Image:
    rgba = Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 4), dtype=np.uint8), "RGBA")
    if mode == "P+transparency":
        image = rgba.convert("RGB").quantize(48)
        image.info["transparency"] = 7
        return image
    if mode == "P":
        return rgba.convert("RGB").quantize(48)
    return rgba if mode == "RGBA" else rgba.convert(mode)


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "LA", "P", "P+transparency", "CMYK", "I"])
@pytest.mark.parametrize("rule", ["shorter_crop", "squash"])
def test_pixels_equal_the_torch_transform(mode, rule):
    size, (mean, std) = (64, OPENAI) if rule == "shorter_crop" else (48, HALF)
    ours = ImagePreprocessor(size, mean, std, rule)
    torch_tf = EvalTransform(size, mean, std, rule)
    worst = 0.0
    for i, (w, h) in enumerate(SIZES):
        image = make(mode, w, h, seed=i)
        ref = torch_tf(reader_to_rgb(image)).numpy()  # decode (composite on white), then the eval transform
        got = ours(image)
        assert got.shape == (1, 3, size, size) and got.dtype == np.float32
        worst = max(worst, float(np.abs(got[0] - ref).max()))
    assert worst <= 1e-6  # measured: 0.0 (the same float32 operations in the same order)


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "LA", "P", "P+transparency"])
@pytest.mark.parametrize("alpha", ["white", "drop"])
def test_to_rgb_is_the_readers(mode, alpha):
    image = make(mode, 13, 11)
    assert np.array_equal(np.asarray(to_rgb(image, alpha)), np.asarray(reader_to_rgb(image, alpha)))


def test_alpha_rule_matters():
    """Compositing on white is not dropping alpha (so the equality above can fail)."""
    image = make("RGBA", 40, 40)
    white = ImagePreprocessor(32, *OPENAI)(image)
    drop = ImagePreprocessor(32, *OPENAI, alpha="drop")(image)
    assert float(np.abs(white - drop).max()) > 0.5
    ref = EvalTransform(32, *OPENAI)(reader_to_rgb(image, "drop")).numpy()  # --alpha drop: convert("RGB") first
    assert float(np.abs(drop[0] - ref).max()) <= 1e-6


def test_a_batch_and_a_file(tmp_path):
    images = [make("RGB", 50, 70, seed=1), make("RGBA", 90, 40, seed=2)]
    path = tmp_path / "x.png"
    images[1].save(path)
    pre = ImagePreprocessor(32, *HALF, "squash")
    batch = pre([images[0], path])
    assert batch.shape == (2, 3, 32, 32)
    np.testing.assert_array_equal(batch[1], pre(str(path))[0])
    np.testing.assert_array_equal(batch[1], pre(images[1])[0])  # PNG is lossless: the file is the image
    assert pre([]).shape == (0, 3, 32, 32)


def test_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="image not found"):
        open_image(tmp_path / "missing.jpg")
    (tmp_path / "text.jpg").write_text("not an image")
    with pytest.raises(ValueError, match="text.jpg"):
        open_image(tmp_path / "text.jpg")
    with pytest.raises(TypeError, match="path or a PIL image"):
        open_image(np.zeros((3, 3)))
    with pytest.raises(ValueError, match="resize"):
        ImagePreprocessor(32, *HALF, "stretch")
    with pytest.raises(ValueError, match="alpha"):
        ImagePreprocessor(32, *HALF, alpha="black")
    with pytest.raises(ValueError, match="mean"):
        ImagePreprocessor(32, (0.5, 0.5), HALF[1])
    with pytest.raises(ValueError, match="image_size"):
        ImagePreprocessor(0, *HALF)
