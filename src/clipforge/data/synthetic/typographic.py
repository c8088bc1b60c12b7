"""Typographic scenes: a shape with a word written on a paper label in the image (``WorldConfig.typographic``).

The label is the word in GNU Unifont, drawn by the CLIPPO renderer (``clipforge.text.render``: black ink on its grey
127 background, 16-pixel glyphs, lower case), pasted where it covers the least of the objects. A labelled scene
names its own shape with probability ``own_name_fraction``, another shape otherwise (a typographic attack: the
caption still describes the drawn shape); with probability ``mention_fraction`` its caption also quotes the label
(``mention``), as web captions often transcribe the text in a photo. Labels are what let a model trained on the world
grow multimodal units (Goh et al. 2021): a rendered word alone, as ``clipforge neurons`` shows it, looks like the label
of a scene.

Every draw comes from its own stream, ``np.random.default_rng([seed, split_id, index, 0, 0, 97])`` (six entries: no
other stream of the world has that length), so a typographic world draws the same scenes, pixels under the label and
captions (but for a quoted label) as the world without labels, and a world without ``typographic`` is untouched.
"""

from __future__ import annotations

from functools import cache

import numpy as np
from PIL import Image

from clipforge.data.synthetic.config import TypographicConfig
from clipforge.data.synthetic.vocab import SHAPES
from clipforge.text.render import RenderConfig, UnifontRenderer

_STREAM = 97  # the label's stream: a key of six entries, which no scene, caption or contrast stream uses
_PAD = 1  # paper around the ink, in pixels
_CANDIDATES = 6  # label positions tried; the one that covers the least of the objects wins
BACKGROUND, INK = 127, 0  # the renderer's defaults, so a label looks like a crop of a rendered word
_MENTION = {"en": ' labelled "{}"', "ru": " с надписью «{}»", "ja": "「{}」と書いてある"}  # the label stays English


def label_rng(seed: int, split_id: int, index: int) -> np.random.Generator:
    """The random stream of sample ``index``'s label (its word, then its position)."""
    return np.random.default_rng([seed, split_id, index, 0, 0, _STREAM])


def choose_word(rng: np.random.Generator, shape: str, config: TypographicConfig) -> str | None:
    """The word written in a scene of ``shape``, or ``None`` for a scene without a label.

    Draws from ``rng``, in order: whether the scene is labelled, whether the label is its own name, which other
    shape it names.
    """
    if rng.random() >= config.fraction:
        return None
    if rng.random() < config.own_name_fraction:
        return shape
    others = [s for s in SHAPES if s != shape]
    return others[int(rng.integers(len(others)))]


@cache
def _renderer() -> UnifontRenderer:
    return UnifontRenderer(RenderConfig(image_size=256))  # one row of 256 columns: 16 glyphs of 16 at most


@cache
def word_ink(word: str) -> np.ndarray:
    """The word's ink as a bool array (16, width): the first row of the renderer's image, cut after the last ink."""
    row = _renderer().render([word])[0, :16, :, 0] == INK  # (16, 256)
    columns = np.flatnonzero(row.any(axis=0))
    return row[:, : int(columns[-1]) + 1] if columns.size else row[:, :4]


def write_label(image: Image.Image, mask: np.ndarray, word: str, rng: np.random.Generator) -> Image.Image:
    """``image`` with ``word`` on a grey paper label where it covers the least of ``mask`` (the objects).

    Draws from ``rng``: ``_CANDIDATES`` positions (x, then y). A label wider or taller than the image is cut at its
    right or bottom edge.

    Args:
        image: The scene, RGB.
        mask: Its object coverage, uint8 (H, W).
        word: What to write.
        rng: The label's stream (``label_rng``), positioned after ``choose_word``.
    """
    ink = word_ink(word)
    side_w, side_h = image.size
    h, w = min(ink.shape[0] + 2 * _PAD, side_h), min(ink.shape[1] + 2 * _PAD, side_w)
    best: tuple[int, int, int] | None = None
    for _ in range(_CANDIDATES):
        x = int(rng.integers(side_w - w + 1))
        y = int(rng.integers(side_h - h + 1))
        covered = int(mask[y:y + h, x:x + w].astype(np.int64).sum())
        if best is None or covered < best[0]:
            best = (covered, x, y)
    assert best is not None
    _, x, y = best
    label = np.full((h, w), BACKGROUND, dtype=np.uint8)
    inner = ink[: h - _PAD, : w - _PAD]  # (≤16, ≤width): what fits inside the paper
    label[_PAD:_PAD + inner.shape[0], _PAD:_PAD + inner.shape[1]][inner] = INK
    out = image.copy()
    out.paste(Image.fromarray(label, "L").convert("RGB"), (x, y))
    return out


def mention(caption: str, word: str, language: str) -> str:
    """``caption`` quoting the label: ``"2 red stars."`` → ``'2 red stars labelled "circle".'`` (a final full stop
    stays last)."""
    end = next((p for p in (".", "。") if caption.endswith(p)), "")
    return caption[: len(caption) - len(end)] + _MENTION[language].format(word) + end
