"""Captions and zero-shot prompts of synthetic scenes, one module per language (``en``, ``ru``, ``ja``).

Each language module holds its word forms and two functions: ``caption(attributes, rng)`` (one caption, its
wording drawn from ``rng``) and ``prompts(task, classes)`` (zero-shot class names and templates that match the
captions' own wording). This package dispatches to them by language.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import ModuleType
from typing import Any

import numpy as np

from clipforge.data.synthetic.captions import en, ja, ru
from clipforge.data.synthetic.vocab import LANGUAGES

_MODULES: dict[str, ModuleType] = {"en": en, "ru": ru, "ja": ja}


def _language(language: str) -> ModuleType:
    if language not in _MODULES:
        raise ValueError(f"language must be one of {LANGUAGES}, got {language!r}")
    return _MODULES[language]


def make_caption(attributes: dict[str, Any], language: str, rng: np.random.Generator) -> str:
    """One caption for a scene, in ``language``, drawing its wording from ``rng``.

    Args:
        attributes: At least ``shape``, ``colour``, ``count``, ``size``, ``position``, ``background``.
        language: One of ``LANGUAGES``.
        rng: Source of the template and paraphrase choices.

    Returns:
        The caption; it never names a wrong attribute and always names the colour or the shape.
    """
    return _language(language).caption(attributes, rng)


def task_prompts(task: str, language: str, classes: Sequence[Any]) -> tuple[list[str], list[str]]:
    """Class names (for ``classes``) and prompt templates (one ``{}`` each) of a zero-shot task in ``language``.

    Args:
        task: ``"shape"``, ``"colour"``, ``"count"`` or ``"composition"``.
        language: One of ``LANGUAGES``.
        classes: The task's classes: shapes, colours, counts, or (colour, shape) pairs for composition.
    """
    return _language(language).prompts(task, classes)
