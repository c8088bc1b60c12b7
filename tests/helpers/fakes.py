"""A tiny stand-in for CLIP/CLIPPO used by the eval tests: colour images and colour words meet in RGB space.

``FakeCLIP.encode_image`` is the mean RGB of the image; ``fake_processor`` turns a string into counts of
the words red/green/blue; both go through the same (identity-initialised) 3×3 projection. A solid red
image therefore matches "a photo of a red." exactly, which makes zero-shot and retrieval answers known.
"""

from __future__ import annotations

import io
import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from clipforge.eval import EvalModel

COLOURS = ("red", "green", "blue")
RGB = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}


class FakeCLIP(nn.Module):
    """Same three members as CLIP/CLIPPO: encode_image, encode_text, logit_scale."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(3, 3, bias=False)
        with torch.no_grad():
            self.proj.weight.copy_(torch.eye(3))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(100.0)))

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        x = self.proj(images.mean(dim=(2, 3)))
        return F.normalize(x, dim=-1) if normalize else x

    def encode_text(self, text: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        x = self.proj(text)
        return F.normalize(x, dim=-1) if normalize else x


def fake_processor(texts: list[str]) -> torch.Tensor:
    rows = [[t.lower().split().count(c) + t.lower().count(c + ".") for c in COLOURS] for t in texts]
    return torch.tensor(rows, dtype=torch.float32) + 1e-3


def fake_transform(image: Image.Image) -> torch.Tensor:
    x = np.asarray(image.convert("RGB").resize((8, 8)), dtype=np.float32) / 255.0
    return torch.from_numpy(x).permute(2, 0, 1)


def fake_model() -> EvalModel:
    return EvalModel(FakeCLIP(), fake_transform, fake_processor)


def solid(colour: str, size: int = 16) -> Image.Image:
    return Image.new("RGB", (size, size), RGB[colour])


def png_bytes(image: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


def test_fake_model_matches_colour_words() -> None:
    m = fake_model()
    img = m.encode_images(torch.stack([fake_transform(solid(c)) for c in COLOURS]))
    txt = m.encode_texts([f"a photo of a {c}." for c in COLOURS])
    assert torch.equal((img @ txt.T).argmax(1), torch.arange(3))
