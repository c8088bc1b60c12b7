"""The multimodal score: do a unit's top images and its top rendered words name the same concept?

For a unit with top images ``I`` (its ``k`` most activating images of the collection) and the vocabulary's rendered
words ranked by the unit's activation:

- the images' concept ``c`` is the most common class among ``I`` (ties: the class whose images rank higher), and
  their purity ``p`` is the share of ``I`` in class ``c``;
- ``r`` is the rank (1 = first) of ``c``'s name among the rendered words (names compared lower-cased, ``_`` read as
  a space), counting ties against it (``r`` is the number of words that excite the unit at least as much, so a unit
  silent on every word ranks last); a concept whose name is not in the vocabulary gets no rank;
- the score is ``p / r``: 1 when every top image is of one class and its name is the unit's top word; 0.5 when they
  are one class and its name comes second, or when half are one class whose name comes first; 0 without a rank.

Classes come from the collection's labels, or, for unlabelled images, from the model's zero-shot reading of them
over the vocabulary (``vocab.zeroshot_labeller``). The finder ranks units by score (then purity, then unit).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class UnitScore:
    """One unit's multimodal score and what it is made of.

    Attributes:
        unit: The unit.
        score: ``purity / word_rank`` (0 without a rank).
        concept: The top images' majority class, or ``None`` when none of them has a class.
        purity: The share of the top images in ``concept``.
        word_rank: The rank of ``concept``'s name among the rendered words (1 = top), or ``None``.
        top_words: The unit's first rendered words, best first.
        word_z: How far the concept's word stands out: its activation minus the mean over the vocabulary, in
            standard deviations of the vocabulary's activations (``None`` without a rank; not part of the score).
    """

    unit: int
    score: float
    concept: str | None
    purity: float
    word_rank: int | None
    top_words: tuple[str, ...]
    word_z: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {**asdict(self), "top_words": list(self.top_words)}


def _key(name: str) -> str:
    return name.replace("_", " ").strip().lower()


def majority(labels: np.ndarray) -> tuple[int | None, float]:
    """The most common label among ``labels`` (ranked best first; negatives are unlabelled) and its share of
    the labelled ones; ties go to the label that appears first."""
    known = [int(x) for x in labels if x >= 0]
    if not known:
        return None, 0.0
    counts = Counter(known)
    best = max(counts.values())
    label = next(x for x in known if counts[x] == best)
    return label, best / len(known)


def unit_score(unit: int, top_labels: np.ndarray, classes: list[str] | None, word_values: np.ndarray,
               words: list[str], n_words: int = 5) -> UnitScore:
    """The multimodal score of one unit.

    Args:
        unit: The unit.
        top_labels: The classes of its top images, best first (-1: none).
        classes: Class names of the labels.
        word_values: Its activation on each rendered word (V,).
        words: The vocabulary (V,).
        n_words: How many top words to keep.
    """
    order = np.argsort(-word_values, kind="stable")
    top_words = tuple(words[i] for i in order[:n_words])
    label, purity = majority(top_labels)
    if label is None or classes is None:
        return UnitScore(unit, 0.0, None, 0.0, None, top_words)
    concept = classes[label]
    matches = [i for i, w in enumerate(words) if _key(w) == _key(concept)]
    # Ties count against the concept: its rank is how many words excite the unit at least as much.
    if not matches:
        return UnitScore(unit, 0.0, concept, purity, None, top_words)
    value = word_values[matches].max()
    rank = int((word_values >= value).sum())
    z = float((value - word_values.mean()) / word_values.std()) if word_values.std() > 0 else 0.0
    return UnitScore(unit, purity / rank, concept, purity, rank, top_words, z)


def score_units(units: list[int], top_indices: np.ndarray, labels: np.ndarray, classes: list[str] | None,
                word_values: np.ndarray, words: list[str], n_words: int = 5) -> list[UnitScore]:
    """Every unit's score; column ``j`` of ``top_indices`` (k, U) and ``word_values`` (V, U) is ``units[j]``."""
    return [unit_score(u, labels[top_indices[:, j]], classes, word_values[:, j], words, n_words)
            for j, u in enumerate(units)]


def find_multimodal(scores: list[UnitScore], n: int) -> list[UnitScore]:
    """The ``n`` best units by score, then purity, then unit number."""
    return sorted(scores, key=lambda s: (-s.score, -s.purity, s.unit))[:n]
