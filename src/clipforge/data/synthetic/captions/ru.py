"""Russian captions and zero-shot prompts, with case and gender agreement: "две маленькие красные звезды".

Nouns agree with their numeral (2–4 take the genitive singular) and adjectives with the noun's gender and number
(:func:`phrase`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from clipforge.data.synthetic.captions.common import finish, mentions, pick

# Nouns: (gender, nominative singular, genitive singular). Numerals 2–4 take the genitive singular.
NOUN = {
    "circle": ("m", "круг", "круга"),
    "square": ("m", "квадрат", "квадрата"),
    "triangle": ("m", "треугольник", "треугольника"),
    "star": ("f", "звезда", "звезды"),
    "hexagon": ("m", "шестиугольник", "шестиугольника"),
    "cross": ("m", "крест", "креста"),
    "diamond": ("m", "ромб", "ромба"),
    "ring": ("n", "кольцо", "кольца"),
}
GENERIC = ("f", "фигура", "фигуры")
# Adjectives: masculine, feminine, neuter (nominative singular), nominative plural, genitive plural.
COLOUR = {
    "red": ("красный", "красная", "красное", "красные", "красных"),
    "orange": ("оранжевый", "оранжевая", "оранжевое", "оранжевые", "оранжевых"),
    "yellow": ("жёлтый", "жёлтая", "жёлтое", "жёлтые", "жёлтых"),
    "green": ("зелёный", "зелёная", "зелёное", "зелёные", "зелёных"),
    "cyan": ("голубой", "голубая", "голубое", "голубые", "голубых"),
    "blue": ("синий", "синяя", "синее", "синие", "синих"),
    "purple": ("фиолетовый", "фиолетовая", "фиолетовое", "фиолетовые", "фиолетовых"),
    "pink": ("розовый", "розовая", "розовое", "розовые", "розовых"),
    "white": ("белый", "белая", "белое", "белые", "белых"),
    "black": ("чёрный", "чёрная", "чёрное", "чёрные", "чёрных"),
}
SIZE = {
    "small": (
        ("маленький", "маленькая", "маленькое", "маленькие", "маленьких"),
        ("небольшой", "небольшая", "небольшое", "небольшие", "небольших"),
    ),
    "large": (
        ("большой", "большая", "большое", "большие", "больших"),
        ("крупный", "крупная", "крупное", "крупные", "крупных"),
    ),
}
COUNT = {1: {"m": "один", "f": "одна", "n": "одно"}, 2: {"m": "два", "f": "две", "n": "два"}, 3: "три"}
POSITION = {
    "top left": ("в левом верхнем углу", "слева вверху"),
    "top": ("вверху", "в верхней части"),
    "top right": ("в правом верхнем углу", "справа вверху"),
    "left": ("слева", "у левого края"),
    "centre": ("в центре", "посередине"),
    "right": ("справа", "у правого края"),
    "bottom left": ("в левом нижнем углу", "слева внизу"),
    "bottom": ("внизу", "в нижней части"),
    "bottom right": ("в правом нижнем углу", "справа внизу"),
}
BACKGROUND = {
    "plain": ("на однотонном фоне", "на простом сером фоне"),
    "stripes": ("на полосатом фоне", "на фоне в полоску"),
    "dots": ("на фоне в горошек", "на точечном фоне"),
    "checker": ("на шахматном фоне", "на фоне в шахматную клетку"),
    "grid": ("на фоне с сеткой", "на фоне в тонкую клетку"),
    "noise": ("на зернистом фоне", "на шумном фоне"),
}


def adjective(forms: tuple[str, ...], gender: str, count: int) -> str:
    """The form of an adjective (its ``COLOUR``/``SIZE`` forms) that agrees with ``count`` nouns of ``gender``."""
    if count == 1:
        return forms[("m", "f", "n").index(gender)]
    # With 2–4: masculine/neuter take the genitive plural, feminine usually the nominative plural.
    return forms[3] if gender == "f" else forms[4]


def phrase(colour: str | None, shape: str | None, count: int, size_forms: tuple[str, ...] | None = None) -> str:
    """Noun phrase with agreement, e.g. ("red", "star", 2) → "две красные звезды"; the numeral only for count > 1."""
    gender, nominative, genitive = NOUN[shape] if shape else GENERIC
    adjectives = [f for f in (size_forms, COLOUR[colour] if colour else None) if f]
    words = [adjective(forms, gender, count) for forms in adjectives]
    if count == 1:
        return " ".join([*words, nominative])
    numeral = COUNT[count] if count == 3 else COUNT[count][gender]
    return " ".join([numeral, *words, genitive])


def caption(attrs: dict[str, Any], rng: np.random.Generator) -> str:
    """One Russian caption of a scene (``make_caption`` with ``language="ru"``)."""
    count = attrs["count"]
    say_colour, say_shape = mentions(rng)
    size_forms = SIZE[attrs["size"]][int(rng.integers(2))] if rng.random() < 0.6 else None
    text = phrase(attrs["colour"] if say_colour else None, attrs["shape"] if say_shape else None, count, size_forms)
    if count == 1 and rng.random() < 0.25:
        gender = (NOUN[attrs["shape"]] if say_shape else GENERIC)[0]
        text = COUNT[1][gender] + " " + text
    elif count > 1 and rng.random() < 0.2:
        text = str(count) + text[text.index(" "):]  # a digit in place of the numeral
    if count == 1 and rng.random() < 0.5:
        text += " " + pick(rng, POSITION[attrs["position"]])
    if rng.random() < 0.4:
        text += " " + pick(rng, BACKGROUND[attrs["background"]])
    prefix = pick(rng, ("", "", "фотография: ", "на картинке ", "на изображении ", "изображение: "))
    return finish(rng, prefix + text, ".")


def prompts(task: str, classes: Sequence[Any]) -> tuple[list[str], list[str]]:
    """Russian class names (for ``classes``) and templates of a zero-shot task (``task_prompts``)."""
    if task == "shape":
        return [NOUN[s][1] for s in classes], ["фотография: {}", "на картинке {}", "{}"]
    if task == "colour":
        return [COLOUR[c][1] for c in classes], ["{} фигура", "на картинке {} фигура"]
    if task == "count":
        return [("одна фигура", "две фигуры", "три фигуры")[c - 1] for c in classes], ["на картинке {}", "{}"]
    return [phrase(c, s, 1) for c, s in classes], ["фотография: {}", "на картинке {}", "{}"]
