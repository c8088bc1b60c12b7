"""Fixtures of the search tests: a saved random-weight model, image folders (with and without caption sidecars, with
bad images), tables and shards of the same images, and a small embedded collection.

Everything is made here (PIL images, ``clipforge.create_model`` weights saved by clipforge's own
``save_pretrained``); nothing is downloaded. Session-scoped fixtures are shared: treat their folders as read-only
(copy one before changing it).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers.images import png_bomb

MODEL_PRESET = "tiny-vit"  # 64-pixel ViT, 128-dim embeddings: a forward pass of a few images costs milliseconds
N_PHOTOS = 12


def photo(seed: int, size: tuple[int, int] = (160, 120)) -> Image.Image:
    """A smooth random RGB image (blurred noise: JPEG keeps it close, as it does photos)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (size[1] // 8, size[0] // 8, 3), dtype=np.uint8)
    return Image.fromarray(small).resize(size, Image.Resampling.BICUBIC)


def jpeg_bytes(image: Image.Image, quality: int = 90) -> bytes:
    """``image`` as JPEG bytes."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def write_photos(folder: Path, count: int = N_PHOTOS, captions: bool = False, first: int = 0) -> list[Path]:
    """``count`` JPEGs ``photo_000.jpg …`` of assorted sizes in ``folder`` (with ``.txt`` sidecars of two lines,
    ``"a photo number I"`` first, when ``captions``); returns their paths in sorted order."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(first, first + count):
        size = ((160, 120), (120, 160), (96, 96), (640, 480))[i % 4]
        path = folder / f"photo_{i:03d}.jpg"
        path.write_bytes(jpeg_bytes(photo(i, size)))
        if captions:
            path.with_suffix(".txt").write_text(f"a photo number {i}\nanother line\n")
        paths.append(path)
    return paths


BAD_IMAGES = {"truncated": "cut_short.jpg", "not_image": "page.jpg", "too_large": "bomb.png"}


def write_bad_images(folder: Path) -> dict[str, str]:
    """A truncated JPEG, an HTML page named ``.jpg`` and a decompression bomb (a small PNG claiming 20000 × 20000
    pixels, over the default 64-megapixel limit) in ``folder``; returns ``{reason: file name}``."""
    folder.mkdir(parents=True, exist_ok=True)
    data = jpeg_bytes(photo(99, (200, 150)))
    (folder / BAD_IMAGES["truncated"]).write_bytes(data[: len(data) // 2])
    (folder / BAD_IMAGES["not_image"]).write_bytes(b"<html><body>404 not found</body></html>")
    (folder / BAD_IMAGES["too_large"]).write_bytes(png_bomb(20_000, 20_000))
    return dict(BAD_IMAGES)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved ``tiny-vit`` model with random weights (seed 0) and its text processor."""
    from clipforge.api import create_model, get_text_processor
    from clipforge.checkpoints.native import save_pretrained

    torch.manual_seed(0)
    model = create_model(MODEL_PRESET)
    directory = tmp_path_factory.mktemp("model") / "tiny"
    save_pretrained(model, directory, get_text_processor(model))
    return directory


@pytest.fixture(scope="session")
def photo_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of :data:`N_PHOTOS` JPEGs without caption sidecars (a plain photo folder)."""
    folder = tmp_path_factory.mktemp("photos")
    write_photos(folder)
    return folder


@pytest.fixture(scope="session")
def caption_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of :data:`N_PHOTOS` JPEGs, each with a sidecar caption (``a photo number I``, then a second line)."""
    folder = tmp_path_factory.mktemp("captioned")
    write_photos(folder, captions=True)
    return folder


@pytest.fixture(scope="session")
def bad_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """:data:`N_PHOTOS` good JPEGs (no sidecars) and the three bad images of :func:`write_bad_images`."""
    folder = tmp_path_factory.mktemp("bad")
    write_photos(folder)
    write_bad_images(folder)
    return folder


@pytest.fixture(scope="session")
def small_collection(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, caption_folder: Path) -> Path:
    """``caption_folder`` embedded with ``tiny_model_dir`` (images and texts, float16, parts of 5 rows): a finished
    collection for index, search and serve tests."""
    from clipforge.search.embed import EmbedSettings, embed

    out = tmp_path_factory.mktemp("collection") / "photos.emb"
    embed(str(tiny_model_dir), str(caption_folder), out,
          EmbedSettings(batch_size=4, workers=0, part_size=5, texts=True, progress=False), device="cpu")
    return out
