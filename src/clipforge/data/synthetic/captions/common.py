"""Choices every language's captions share: picking a paraphrase, which attributes to name, the finishing touch."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    """One of ``options``, uniformly."""
    return options[int(rng.integers(len(options)))]


def mentions(rng: np.random.Generator) -> tuple[bool, bool]:
    """Whether to name the colour and the shape: usually both, sometimes one, never neither."""
    u = rng.random()
    return u >= 0.1, not 0.1 <= u < 0.2


def finish(rng: np.random.Generator, text: str, full_stop: str) -> str:
    """``text``, sometimes with ``full_stop`` added and sometimes with its first letter capitalised."""
    if rng.random() < 0.35:
        text += full_stop
    if rng.random() < 0.3:
        text = text[0].upper() + text[1:]
    return text
