"""Text/text pairs for CLIPPO: two pieces of text that belong together, both rendered as images.

CLIPPO (Tschannen et al. 2022, §3 and §4.3) mixes pairs of *consecutive sentences* from a plain text
corpus into a fixed fraction of each training batch (25 % in the paper): the first sentence is rendered
and goes through the image side, the second through the text side, and the contrastive loss treats
the pair like an image–caption pair. This is what gives the one-tower model its language
understanding beyond alt-text.

Two sources, both indexable (item ``i`` is ``(first text, second text)``):

- :class:`CorpusPairs`: a UTF-8 text file. Paragraphs are separated by blank lines; a paragraph is split
  into sentences after ``.``, ``!``, ``?`` or ``…`` followed by white space, and after ``。``, ``！``,
  ``？`` (scripts written without spaces); every two consecutive sentences of a paragraph form a pair.
- :class:`WorldTextPairs`: the built-in synthetic world's own "corpus": two captions of the same
  training scene, in two different caption languages when the world has several (a paragraph that
  describes one scene in several languages), else two paraphrases.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from clipforge.data.synthetic import SyntheticWorld

_SENTENCE_END = re.compile(r"(?<=[.!?…])\s+|(?<=[。！？])")
_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")


def split_sentences(paragraph: str) -> list[str]:
    """A paragraph's sentences, stripped, empty ones dropped; lines of the paragraph are joined by spaces."""
    text = " ".join(paragraph.split())
    return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]


class CorpusPairs(Sequence[tuple[str, str]]):
    """Consecutive-sentence pairs of a plain-text corpus file.

    Args:
        path: A UTF-8 text file; blank lines separate paragraphs.

    Raises:
        FileNotFoundError: No such file.
        ValueError: The file is not UTF-8 text, or holds no paragraph of two sentences or more.
    """

    def __init__(self, path: str | Path):
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"text-pair corpus {path}: no such file")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"text-pair corpus {path}: not UTF-8 text (byte {e.start}: {e.reason})") from None
        self.pairs = [pair for paragraph in _PARAGRAPH_BREAK.split(text)
                      for pair in itertools.pairwise(split_sentences(paragraph))]
        if not self.pairs:
            raise ValueError(f"text-pair corpus {path}: no paragraph with two sentences or more, so no pairs")

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> tuple[str, str]:  # type: ignore[override]
        return self.pairs[i]


class WorldTextPairs(Sequence[tuple[str, str]]):
    """Pairs of captions of one training scene of a ``SyntheticWorld``: item ``i`` describes scene ``i``.

    The two captions are in two different languages when the world has several (chosen by an rng
    seeded with the scene), else two different wordings. Nothing is rendered: captions only.

    Args:
        world: A ``clipforge.data.synthetic.SyntheticWorld``.
        size: Number of pairs (scenes ``0 .. size - 1`` of the ``train`` split).
    """

    def __init__(self, world: SyntheticWorld, size: int):
        self.world, self.size = world, size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> tuple[str, str]:  # type: ignore[override]
        if not 0 <= i < self.size:
            raise IndexError(f"index {i} out of range for {self.size} text pairs")
        languages = self.world.config.languages
        rng = np.random.default_rng([self.world.config.seed, 7, i])
        if len(languages) > 1:
            first, second = rng.choice(len(languages), size=2, replace=False)
            return (self.world.captions("train", i, 1, languages[first])[0],
                    self.world.captions("train", i, 1, languages[second])[0])
        a, b = self.world.captions("train", i, 2, languages[0])
        return (a, b) if rng.random() < 0.5 else (b, a)


def rendered_images(render: Callable[[list[str]], np.ndarray], texts: list[str], mean: Sequence[float],
                    std: Sequence[float]) -> torch.Tensor:
    """Texts rendered by ``render`` (uint8 (N, H, W, 3)) as normalised float images (N, 3, H, W).

    The same pixels and normalisation ``CLIPPO.encode_text`` applies, so the first text of a pair enters
    the image side exactly as it would enter the text side.
    """
    pixels = torch.from_numpy(render(texts)).permute(0, 3, 1, 2).float().div(255)
    return (pixels - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def pair_source(config: Any, world: SyntheticWorld | None) -> Sequence[tuple[str, str]]:
    """The text-pair source a ``TextPairsConfig`` names: a corpus file, or ``synthetic`` (needs ``world``)."""
    if config.path != "synthetic":
        return CorpusPairs(config.path)
    if world is None:
        raise ValueError("text_pairs.path=synthetic needs the synthetic world as the data source")
    return WorldTextPairs(world, config.size)
