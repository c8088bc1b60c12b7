"""The model's input for VQA by rendering: the question drawn in a band above the image (CLIPPO §4.4).

CLIPPO answers a question about an image with its one ViT and one input: the question is rendered as
text in a band at the top of the canvas and the image is placed below it. ``QuestionImageComposer`` builds
that input with the model's own Unifont renderer (the band's pixels *are* the renderer's top rows for the
question) and fits the image into the rest, aspect ratio kept, padded with the renderer's background.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from clipforge.text.render import UnifontRenderer
from clipforge.text.unifont import CELL


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def band_height(renderer: UnifontRenderer, questions: Sequence[str]) -> int:
    """The height of a band that holds every one of ``questions`` unclipped: 16 px per text row they need."""
    layout = renderer.layout(list(questions))
    rows = int(layout.row.max()) + 1 if layout.row.size else 1
    return CELL * rows


class QuestionImageComposer:
    """(image, question) → one uint8 (H, W, 3) input: the rendered question on top, the image below.

    The top ``band`` rows are exactly the renderer's output for the question (text that needs more rows is
    cut at the band); the image is resized (bicubic, aspect ratio kept) into the ``(size - band) × size``
    region below, centred and padded with the renderer's background. The model normalises the pixels.

    Args:
        renderer: The model's text renderer (``clipforge.get_text_processor(model)``); fixes the size.
        band: Height of the question band in pixels, at least 16 and leaving at least 16 rows for the image.

    Raises:
        ValueError: ``band`` does not fit the canvas.
    """

    def __init__(self, renderer: UnifontRenderer, band: int):
        size = renderer.config.image_size
        if not _is_int(band) or not CELL <= band <= size - CELL:
            raise ValueError(f"band: expected an integer in [{CELL}, {size - CELL}] for a {size}-px model, "
                             f"got {band!r}")
        self.renderer, self.band, self.size = renderer, band, size

    @property
    def image_region(self) -> tuple[int, int]:
        """(height, width) of the region the image is fitted into."""
        return self.size - self.band, self.size

    def fit(self, image: Image.Image | np.ndarray) -> np.ndarray:
        """An image resized to fit the image region, aspect ratio kept → uint8 (h, w, 3)."""
        if isinstance(image, np.ndarray):
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
                raise ValueError(f"expected a uint8 (H, W, 3) array, got {image.dtype} {image.shape}")
            image = Image.fromarray(image)
        image = image if image.mode == "RGB" else image.convert("RGB")
        height, width = self.image_region
        scale = min(height / image.height, width / image.width)
        target = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        if target != image.size:
            image = image.resize(target, Image.Resampling.BICUBIC)
        return np.asarray(image)

    def compose(self, images: Sequence[Image.Image | np.ndarray], questions: Sequence[str]) -> np.ndarray:
        """Composes a batch → uint8 (N, H, W, 3).

        Raises:
            ValueError: ``images`` and ``questions`` differ in length, or an array image is not uint8 (H, W, 3).
        """
        if len(images) != len(questions):
            raise ValueError(f"{len(images)} images but {len(questions)} questions")
        out = self.renderer.render(list(questions))  # (N, S, S, 3): background everywhere but the ink
        out[:, self.band:] = self.renderer.config.background
        height, width = self.image_region
        for canvas, image in zip(out, images):
            fitted = self.fit(image)
            top = self.band + (height - fitted.shape[0]) // 2
            left = (width - fitted.shape[1]) // 2
            canvas[top:top + fitted.shape[0], left:left + fitted.shape[1]] = fitted
        return out

    def __call__(self, images: Sequence[Image.Image | np.ndarray], questions: Sequence[str]) -> torch.Tensor:
        """Composes a batch into the model's input: uint8 tensor (N, 3, H, W)."""
        return torch.from_numpy(self.compose(images, questions)).permute(0, 3, 1, 2).contiguous()
