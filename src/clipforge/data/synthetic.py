"""A procedurally rendered image–caption world: clipforge's embedded default dataset.

Each scene holds one to three copies of a single (colour, shape) object, drawn at one size on a
low-contrast grey texture, so every label is unambiguous. Captions come from templates and
paraphrases in English, Russian (with proper case/gender agreement) and Japanese, and may leave out
attributes (size, position, background, and at most one of colour or shape).

Everything is a pure function of ``(seed, split, index)``: a sample draws from
``np.random.default_rng([seed, split_id, index])`` (scene first, then pixels, then the caption), so
any sample can be regenerated anywhere — exact resume and distributed sharding need no state.

A seed-determined set of colour×shape pairs (about ``holdout_fraction`` of all pairs, covering every
colour and every shape when there are enough) never appears in ``"train"``; ``"val"`` and ``"test"``
draw from all pairs, and :meth:`SyntheticWorld.zeroshot_tasks` builds a compositional task from them.

Typical use::

    world = SyntheticWorld(WorldConfig(seed=0, languages=("en", "ru", "ja")))
    train = world.dataset("train", 20_000, transform=train_tf)
    tasks = world.zeroshot_tasks(500, language="en")
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

# --- Vocabulary (canonical English names; the order is the class-index order). ---

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "hexagon", "cross", "diamond", "ring")
COLOURS: tuple[str, ...] = ("red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink", "white", "black")
COLOUR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (255, 140, 0),
    "yellow": (250, 225, 20),
    "green": (30, 170, 50),
    "cyan": (0, 200, 220),
    "blue": (30, 60, 220),
    "purple": (130, 40, 190),
    "pink": (255, 120, 200),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
SIZES: tuple[str, ...] = ("small", "large")
COUNTS: tuple[int, ...] = (1, 2, 3)
# A 3×3 grid, row-major; a single object sits in one cell. Scenes of several objects are "scattered".
POSITIONS: tuple[str, ...] = (
    "top left", "top", "top right", "left", "centre", "right", "bottom left", "bottom", "bottom right",
)
SCATTERED = "scattered"
BACKGROUNDS: tuple[str, ...] = ("plain", "stripes", "dots", "checker", "grid", "noise")
LANGUAGES: tuple[str, ...] = ("en", "ru", "ja")
SPLITS: dict[str, int] = {"train": 0, "val": 1, "test": 2}
_HOLDOUT_STREAM = 99  # a split id no real split uses: the stream that picks the held-out pairs
_CONTRAST_STREAM = 98  # a stream no caption draw uses: the shapes of a contrast group's members

# --- Geometry, in units of the image side. ---

_RADIUS = {"small": 0.125, "large": 0.2}  # largest circumradius of an object; scenes shrink it by up to 8%
_CELL = (0.2, 0.5, 0.8)  # grid-cell centres
_JITTER = 0.012  # small enough that small objects in adjacent cells never touch (2 · 0.125 + 2 · 0.012 < 0.3)
_SUPERSAMPLE = 2  # draw the mask at 2× and box-filter down: antialiased edges


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class WorldConfig:
    """What defines a synthetic world; two worlds with equal configs generate identical data.

    Args:
        seed: Base seed (non-negative); also picks the held-out pairs.
        image_size: Side of the square images in pixels.
        languages: Caption languages, drawn from ``LANGUAGES``; with several, each sample picks one.
        holdout_fraction: Fraction of colour×shape pairs kept out of ``"train"`` (0 to 0.5).
        max_objects: Most objects per scene (1 to 3).
        contrast_group: ``"train"`` scenes come in groups of this many consecutive indices that differ in the
            shape alone (same colour, count, size, layout, background, pixel noise and caption wording): hard
            negatives for the one attribute nothing else in a caption predicts. Each member's shape is a
            distinct training shape for the group's colour while they last. 1 (the default) turns it off;
            ``"val"`` and ``"test"`` are never grouped.
    """

    seed: int = 0
    image_size: int = 64
    languages: tuple[str, ...] = ("en",)
    holdout_fraction: float = 0.15
    max_objects: int = 3
    contrast_group: int = 1

    def __post_init__(self) -> None:
        if not _is_int(self.seed) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {self.seed!r}")
        if not _is_int(self.image_size) or not 16 <= self.image_size <= 1024:
            raise ValueError(f"image_size must be an int in [16, 1024], got {self.image_size!r}")
        if not isinstance(self.languages, tuple) or not self.languages:
            raise ValueError(f"languages must be a non-empty tuple, got {self.languages!r}")
        unknown = [lang for lang in self.languages if lang not in LANGUAGES]
        if unknown or len(set(self.languages)) != len(self.languages):
            raise ValueError(f"languages must be distinct entries of {LANGUAGES}, got {self.languages!r}")
        fraction = self.holdout_fraction
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 <= fraction <= 0.5:
            raise ValueError(f"holdout_fraction must be in [0, 0.5], got {self.holdout_fraction!r}")
        if not _is_int(self.max_objects) or not 1 <= self.max_objects <= 3:
            raise ValueError(f"max_objects must be an int in [1, 3], got {self.max_objects!r}")
        if not _is_int(self.contrast_group) or not 1 <= self.contrast_group <= len(SHAPES):
            raise ValueError(f"contrast_group must be an int in [1, {len(SHAPES)}], got {self.contrast_group!r}")


@dataclass(frozen=True, eq=False)
class Sample:
    """One generated scene.

    Attributes:
        image: RGB image, ``image_size`` square.
        caption: One caption in ``attributes["language"]``.
        attributes: ``shape``, ``colour``, ``count``, ``size``, ``position`` (a ``POSITIONS`` entry, or
            ``"scattered"`` when ``count > 1``), ``background``, ``language``.
        mask: Object coverage, uint8 (H, W), 255 inside the objects, antialiased at the edges.
    """

    image: Image.Image
    caption: str
    attributes: dict[str, Any]
    mask: np.ndarray


@dataclass(frozen=True, eq=False)
class ZeroShotTask:
    """A zero-shot classification task: embed ``templates`` × ``classnames``, classify ``images``.

    Attributes:
        name: ``"shape"``, ``"colour"``, ``"count"`` or ``"composition"`` (held-out colour×shape pairs).
        classnames: Class names in the task's language; ``labels`` index into them.
        templates: Prompt templates with one ``{}`` for the class name.
        images: The evaluation images.
        labels: True class index per image.
        indices: The split indices the images were generated from.
        split: The split they come from.
    """

    name: str
    classnames: list[str]
    templates: list[str]
    images: list[Image.Image]
    labels: list[int]
    indices: list[int]
    split: str


# --- Rendering. ---


def _unit_polygons() -> dict[str, np.ndarray]:
    """Vertices (N, 2) of each polygonal shape inside the unit circle, y pointing down."""

    def ngon(n: int, radius: float = 1.0, phase: float = -math.pi / 2) -> np.ndarray:
        angles = phase + 2 * math.pi * np.arange(n) / n
        return radius * np.stack([np.cos(angles), np.sin(angles)], 1)

    star = ngon(10)
    star[1::2] *= 0.45
    a, w = 0.95, 0.3  # cross: arm length, arm half-width
    cross = [(-w, -a), (w, -a), (w, -w), (a, -w), (a, w), (w, w), (w, a), (-w, a), (-w, w), (-a, w), (-a, -w), (-w, -w)]
    h = 0.72
    return {
        "square": np.array([(-h, -h), (h, -h), (h, h), (-h, h)]),
        "triangle": ngon(3, 0.9) + np.array([0.0, 0.2]),  # nudge down so the visual centre is the centre
        "star": star,
        "hexagon": ngon(6),
        "cross": np.array(cross),
        "diamond": np.array([(0.0, -1.0), (0.72, 0.0), (0.0, 1.0), (-0.72, 0.0)]),
    }


_POLYGONS = _unit_polygons()


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float) -> None:
    if shape in ("circle", "ring"):
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
        if shape == "ring":
            ri = 0.55 * r
            draw.ellipse((cx - ri, cy - ri, cx + ri, cy + ri), fill=0)
        return
    points = _POLYGONS[shape] * r + np.array([cx, cy])
    draw.polygon([tuple(p) for p in points.tolist()], fill=255)


def _texture(rng: np.random.Generator, background: str, size: int) -> np.ndarray:
    """A zero-centred greyscale pattern (H, W) in [-1, 1]; the caller scales it to low contrast."""
    if background == "plain":
        return np.zeros((size, size), np.float32)
    if background == "noise":
        return np.clip(rng.standard_normal((size, size), dtype=np.float32) * 0.5, -1, 1)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    scale = size / 64
    period = float(rng.uniform(6, 11)) * scale
    ox, oy = rng.uniform(0, period, 2).tolist()
    if background == "stripes":
        u = (xx, yy, (xx + yy) * 0.7071, (xx - yy) * 0.7071)[int(rng.integers(4))]
        return np.where((u + ox) % period < period / 2, 1.0, -1.0).astype(np.float32)
    if background == "checker":
        parity = (np.floor((xx + ox) / period) + np.floor((yy + oy) / period)) % 2
        return np.where(parity == 0, 1.0, -1.0).astype(np.float32)
    if background == "dots":
        dx = (xx + ox) % period - period / 2
        dy = (yy + oy) % period - period / 2
        return np.where(dx * dx + dy * dy < (0.25 * period) ** 2, 1.0, -0.15).astype(np.float32)
    if background == "grid":
        line = max(1.0, scale)
        return np.where(((xx + ox) % period < line) | ((yy + oy) % period < line), 1.0, -0.15).astype(np.float32)
    raise ValueError(f"unknown background {background!r}")


_BANK_SIZE = 32  # textures per kind; with the 8 flips/rotations a scene picks one of 256
_DECODE = (np.arange(256) / 127.5 - 1)[:, None]  # (256, 1): encoded byte → t


@cache
def _texture_bank(background: str, size: int) -> tuple[np.ndarray, ...]:
    """Pre-rendered textures as uint8 (H, W) arrays that encode t in [-1, 1] as round((t + 1) * 127.5).

    Computing a pattern costs more than the rest of a sample, so each process renders a fixed bank once
    (from its own fixed seeds, the same everywhere) and scenes pick from it.
    """
    bank = []
    for variant in range(_BANK_SIZE):
        rng = np.random.default_rng([size, BACKGROUNDS.index(background), variant])
        bank.append(np.rint((_texture(rng, background, size) + 1) * 127.5).astype(np.uint8))
    return tuple(bank)


@cache
def _cell_layouts(count: int, size: str) -> tuple[tuple[int, ...], ...]:
    """Sets of grid cells for ``count`` objects that cannot touch: large objects need a free cell between them."""
    coords = [(i // 3, i % 3) for i in range(9)]
    gap = 2 if size == "large" else 1
    return tuple(
        combo
        for combo in itertools.combinations(range(9), count)
        if all(
            max(abs(coords[a][0] - coords[b][0]), abs(coords[a][1] - coords[b][1])) >= gap
            for a, b in itertools.combinations(combo, 2)
        )
    )


# --- Captions. Each builder takes the scene's attributes and an rng, and returns one caption. ---


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _mentions(rng: np.random.Generator) -> tuple[bool, bool]:
    """Whether to name the colour and the shape: usually both, sometimes one, never neither."""
    u = rng.random()
    return u >= 0.1, not 0.1 <= u < 0.2


def _finish(rng: np.random.Generator, text: str, full_stop: str) -> str:
    if rng.random() < 0.35:
        text += full_stop
    if rng.random() < 0.3:
        text = text[0].upper() + text[1:]
    return text


_EN_SHAPE = {
    "circle": ("circle", "circles"), "square": ("square", "squares"), "triangle": ("triangle", "triangles"),
    "star": ("star", "stars"), "hexagon": ("hexagon", "hexagons"), "cross": ("cross", "crosses"),
    "diamond": ("diamond", "diamonds"), "ring": ("ring", "rings"),
}
_EN_GENERIC = (("shape", "shapes"), ("object", "objects"))
_EN_SIZE = {"small": ("small", "little", "tiny"), "large": ("large", "big", "huge")}
_EN_COUNT = {1: ("a", "one", "a single"), 2: ("two", "2", "a pair of"), 3: ("three", "3")}
_EN_POSITION = {
    "top left": ("in the top left", "in the upper left corner", "at the top left"),
    "top": ("at the top", "near the top", "at the top centre"),
    "top right": ("in the top right", "in the upper right corner", "at the top right"),
    "left": ("on the left", "on the left side", "at the left"),
    "centre": ("in the centre", "in the middle", "in the center"),
    "right": ("on the right", "on the right side", "at the right"),
    "bottom left": ("in the bottom left", "in the lower left corner", "at the bottom left"),
    "bottom": ("at the bottom", "near the bottom", "at the bottom centre"),
    "bottom right": ("in the bottom right", "in the lower right corner", "at the bottom right"),
}
_EN_BACKGROUND = {
    "plain": ("a plain background", "a blank background", "a flat grey background"),
    "stripes": ("a striped background", "a background of faint stripes", "a stripy background"),
    "dots": ("a dotted background", "a polka-dot background", "a background of faint dots"),
    "checker": ("a checkered background", "a chequered background", "a checkerboard background"),
    "grid": ("a grid background", "a background of thin grid lines", "graph paper"),
    "noise": ("a noisy background", "a grainy background", "a speckled background"),
}


def _caption_en(attrs: dict[str, Any], rng: np.random.Generator) -> str:
    count, plural = attrs["count"], attrs["count"] > 1
    say_colour, say_shape = _mentions(rng)
    noun = (_EN_SHAPE[attrs["shape"]] if say_shape else _EN_GENERIC[int(rng.integers(2))])[plural]
    words = [_pick(rng, _EN_SIZE[attrs["size"]])] if rng.random() < 0.6 else []
    words += [attrs["colour"]] if say_colour else []
    determiner = _pick(rng, _EN_COUNT[count])
    if determiner == "a" and (words[0] if words else noun)[0] in "aeiou":
        determiner = "an"
    text = " ".join([determiner, *words, noun])
    if not plural and rng.random() < 0.5:
        text += " " + _pick(rng, _EN_POSITION[attrs["position"]])
    if rng.random() < 0.4:
        text += " " + _pick(rng, ("on", "against")) + " " + _pick(rng, _EN_BACKGROUND[attrs["background"]])
    there = "there are " if plural else "there is "
    prefix = _pick(rng, ("", "", "a photo of ", "a picture of ", "an image of ", there))
    return _finish(rng, prefix + text, ".")


# Russian nouns: (gender, nominative singular, genitive singular). Numerals 2–4 take the genitive singular.
_RU_NOUN = {
    "circle": ("m", "круг", "круга"),
    "square": ("m", "квадрат", "квадрата"),
    "triangle": ("m", "треугольник", "треугольника"),
    "star": ("f", "звезда", "звезды"),
    "hexagon": ("m", "шестиугольник", "шестиугольника"),
    "cross": ("m", "крест", "креста"),
    "diamond": ("m", "ромб", "ромба"),
    "ring": ("n", "кольцо", "кольца"),
}
_RU_GENERIC = ("f", "фигура", "фигуры")
# Adjectives: masculine, feminine, neuter (nominative singular), nominative plural, genitive plural.
_RU_COLOUR = {
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
_RU_SIZE = {
    "small": (
        ("маленький", "маленькая", "маленькое", "маленькие", "маленьких"),
        ("небольшой", "небольшая", "небольшое", "небольшие", "небольших"),
    ),
    "large": (
        ("большой", "большая", "большое", "большие", "больших"),
        ("крупный", "крупная", "крупное", "крупные", "крупных"),
    ),
}
_RU_COUNT = {1: {"m": "один", "f": "одна", "n": "одно"}, 2: {"m": "два", "f": "две", "n": "два"}, 3: "три"}
_RU_POSITION = {
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
_RU_BACKGROUND = {
    "plain": ("на однотонном фоне", "на простом сером фоне"),
    "stripes": ("на полосатом фоне", "на фоне в полоску"),
    "dots": ("на фоне в горошек", "на точечном фоне"),
    "checker": ("на шахматном фоне", "на фоне в шахматную клетку"),
    "grid": ("на фоне с сеткой", "на фоне в тонкую клетку"),
    "noise": ("на зернистом фоне", "на шумном фоне"),
}


def _ru_adjective(forms: tuple[str, ...], gender: str, count: int) -> str:
    if count == 1:
        return forms[("m", "f", "n").index(gender)]
    # With 2–4: masculine/neuter take the genitive plural, feminine usually the nominative plural.
    return forms[3] if gender == "f" else forms[4]


def _ru_phrase(colour: str | None, shape: str | None, count: int, size_forms: tuple[str, ...] | None = None) -> str:
    """Noun phrase with agreement, e.g. ("red", "star", 2) → "две красные звезды"; the numeral only for count > 1."""
    gender, nominative, genitive = _RU_NOUN[shape] if shape else _RU_GENERIC
    adjectives = [f for f in (size_forms, _RU_COLOUR[colour] if colour else None) if f]
    words = [_ru_adjective(forms, gender, count) for forms in adjectives]
    if count == 1:
        return " ".join([*words, nominative])
    numeral = _RU_COUNT[count] if count == 3 else _RU_COUNT[count][gender]
    return " ".join([numeral, *words, genitive])


def _caption_ru(attrs: dict[str, Any], rng: np.random.Generator) -> str:
    count = attrs["count"]
    say_colour, say_shape = _mentions(rng)
    size_forms = _RU_SIZE[attrs["size"]][int(rng.integers(2))] if rng.random() < 0.6 else None
    text = _ru_phrase(attrs["colour"] if say_colour else None, attrs["shape"] if say_shape else None, count, size_forms)
    if count == 1 and rng.random() < 0.25:
        gender = (_RU_NOUN[attrs["shape"]] if say_shape else _RU_GENERIC)[0]
        text = _RU_COUNT[1][gender] + " " + text
    elif count > 1 and rng.random() < 0.2:
        text = str(count) + text[text.index(" "):]  # a digit in place of the numeral
    if count == 1 and rng.random() < 0.5:
        text += " " + _pick(rng, _RU_POSITION[attrs["position"]])
    if rng.random() < 0.4:
        text += " " + _pick(rng, _RU_BACKGROUND[attrs["background"]])
    prefix = _pick(rng, ("", "", "фотография: ", "на картинке ", "на изображении ", "изображение: "))
    return _finish(rng, prefix + text, ".")


_JA_SHAPE = {
    "circle": ("円", "丸"), "square": ("正方形", "四角"), "triangle": ("三角形",), "star": ("星", "星形"),
    "hexagon": ("六角形",), "cross": ("十字", "十字形"), "diamond": ("ひし形",), "ring": ("輪", "リング"),
}
_JA_GENERIC = "図形"
_JA_COLOUR = {
    "red": ("赤い", "赤色の"), "orange": ("オレンジ色の",), "yellow": ("黄色い", "黄色の"),
    "green": ("緑の", "緑色の"), "cyan": ("水色の",), "blue": ("青い", "青色の"), "purple": ("紫の", "紫色の"),
    "pink": ("ピンクの", "ピンク色の"), "white": ("白い",), "black": ("黒い",),
}
_JA_SIZE = {"small": ("小さい", "小さな"), "large": ("大きい", "大きな")}
_JA_COUNT = {1: ("一つ", "ひとつ", "1個"), 2: ("二つ", "ふたつ", "2個"), 3: ("三つ", "みっつ", "3個")}
_JA_POSITION = {
    "top left": ("左上",), "top": ("上", "上の方"), "top right": ("右上",), "left": ("左", "左側"),
    "centre": ("中央", "真ん中"), "right": ("右", "右側"), "bottom left": ("左下",), "bottom": ("下", "下の方"),
    "bottom right": ("右下",),
}
_JA_BACKGROUND = {
    "plain": ("無地の背景", "単色の背景"), "stripes": ("縞模様の背景", "ストライプの背景"),
    "dots": ("水玉模様の背景", "ドット柄の背景"), "checker": ("市松模様の背景", "チェッカー模様の背景"),
    "grid": ("方眼の背景", "格子模様の背景"), "noise": ("ざらざらした背景", "ノイズのある背景"),
}


def _caption_ja(attrs: dict[str, Any], rng: np.random.Generator) -> str:
    count = attrs["count"]
    say_colour, say_shape = _mentions(rng)
    words = [_pick(rng, _JA_SIZE[attrs["size"]])] if rng.random() < 0.6 else []
    words += [_pick(rng, _JA_COLOUR[attrs["colour"]])] if say_colour else []
    phrase = "".join([*words, _pick(rng, _JA_SHAPE[attrs["shape"]]) if say_shape else _JA_GENERIC])
    number = _pick(rng, _JA_COUNT[count])
    if rng.random() < 0.3:  # "三つの赤い円(の写真)"
        text = number + "の" + phrase if count > 1 or rng.random() < 0.5 else phrase
        return _finish(rng, text + _pick(rng, ("", "の写真", "の画像")), "。")
    place = _pick(rng, _JA_BACKGROUND[attrs["background"]]) if rng.random() < 0.4 else ""
    if count == 1 and rng.random() < 0.5:
        place += ("の" if place else "") + _pick(rng, _JA_POSITION[attrs["position"]])
    text = (place + "に" if place else "") + phrase
    if count > 1 or rng.random() < 0.4:  # "赤い円が三つ(ある)"
        text += "が" + number + _pick(rng, ("", "ある", "あります"))
    else:
        text += _pick(rng, ("", "がある", "があります"))
    return _finish(rng, text, "。")


_CAPTIONERS: dict[str, Callable[[dict[str, Any], np.random.Generator], str]] = {
    "en": _caption_en, "ru": _caption_ru, "ja": _caption_ja,
}


def make_caption(attributes: dict[str, Any], language: str, rng: np.random.Generator) -> str:
    """One caption for a scene, in ``language``, drawing its wording from ``rng``.

    Args:
        attributes: At least ``shape``, ``colour``, ``count``, ``size``, ``position``, ``background``.
        language: One of ``LANGUAGES``.
        rng: Source of the template and paraphrase choices.

    Returns:
        The caption; it never names a wrong attribute and always names the colour or the shape.
    """
    if language not in _CAPTIONERS:
        raise ValueError(f"language must be one of {LANGUAGES}, got {language!r}")
    return _CAPTIONERS[language](attributes, rng)


# --- Zero-shot prompts: class names and templates that match the captions' own wording. ---


def _task_vocab(task: str, language: str, classes: Sequence[Any]) -> tuple[list[str], list[str]]:
    """Class names (for ``classes``) and templates for one task in one language."""
    if language == "en":
        if task == "shape":
            return list(classes), ["a photo of a {}.", "a {}.", "a picture of a {}."]
        if task == "colour":
            return list(classes), ["{} shape.", "a photo of {} shapes.", "{} objects."]
        if task == "count":
            return [("one shape", "two shapes", "three shapes")[c - 1] for c in classes], ["a photo of {}.", "{}."]
        return [f"{c} {s}" for c, s in classes], ["a photo of one {}.", "one {}.", "{}."]
    if language == "ru":
        if task == "shape":
            return [_RU_NOUN[s][1] for s in classes], ["фотография: {}", "на картинке {}", "{}"]
        if task == "colour":
            return [_RU_COLOUR[c][1] for c in classes], ["{} фигура", "на картинке {} фигура"]
        if task == "count":
            return [("одна фигура", "две фигуры", "три фигуры")[c - 1] for c in classes], ["на картинке {}", "{}"]
        return [_ru_phrase(c, s, 1) for c, s in classes], ["фотография: {}", "на картинке {}", "{}"]
    if task == "shape":
        return [_JA_SHAPE[s][0] for s in classes], ["{}の写真", "{}", "{}の画像"]
    if task == "colour":
        return [_JA_COLOUR[c][0] for c in classes], ["{}図形", "{}図形の写真"]
    if task == "count":
        return [_JA_COUNT[c][0] + "の図形" for c in classes], ["{}", "{}の写真"]
    return [_JA_COLOUR[c][0] + _JA_SHAPE[s][0] for c, s in classes], ["{}の写真", "{}"]


# --- The world. ---


class SyntheticWorld:
    """Deterministic generator of captioned scenes, splits, and evaluation tasks.

    Args:
        config: The world's definition; the default is a 64-px English world with seed 0.
    """

    SHAPES = SHAPES
    COLOURS = COLOURS
    COLOUR_RGB = COLOUR_RGB
    SIZES = SIZES
    COUNTS = COUNTS
    POSITIONS = POSITIONS
    BACKGROUNDS = BACKGROUNDS
    LANGUAGES = LANGUAGES
    SPLITS = tuple(SPLITS)

    def __init__(self, config: WorldConfig | None = None) -> None:
        self.config = config if config is not None else WorldConfig()
        self.heldout_pairs: list[tuple[str, str]] = self._choose_heldout()
        held = set(self.heldout_pairs)
        self.all_pairs: list[tuple[str, str]] = [(c, s) for c in COLOURS for s in SHAPES]
        self.train_pairs: list[tuple[str, str]] = [p for p in self.all_pairs if p not in held]
        self._heldout_set = frozenset(held)

    def _choose_heldout(self) -> list[tuple[str, str]]:
        n = round(self.config.holdout_fraction * len(COLOURS) * len(SHAPES))
        if n == 0:
            return []
        rng = np.random.default_rng([self.config.seed, _HOLDOUT_STREAM, 0])
        colours, shapes = rng.permutation(len(COLOURS)), rng.permutation(len(SHAPES))
        # A diagonal through the shuffled table touches every colour and every shape once or twice.
        span = max(len(colours), len(shapes))
        cover = [(int(colours[i % len(colours)]), int(shapes[i % len(shapes)])) for i in range(span)]
        chosen = cover[:n]
        rest = [(c, s) for c in range(len(COLOURS)) for s in range(len(SHAPES)) if (c, s) not in cover]
        for k in rng.permutation(len(rest)):
            if len(chosen) >= n:
                break
            c, s = rest[k]
            # Keep at least two seen shapes per colour and two seen colours per shape.
            if sum(p[0] == c for p in chosen) < len(SHAPES) - 2 and sum(p[1] == s for p in chosen) < len(COLOURS) - 2:
                chosen.append((c, s))
        return [(COLOURS[c], SHAPES[s]) for c, s in sorted(chosen)]

    def _rng(self, split: str, index: int, stream: int | None = None) -> np.random.Generator:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {tuple(SPLITS)}, got {split!r}")
        if index < 0:
            raise IndexError(f"index must be non-negative, got {index}")
        key = [self.config.seed, SPLITS[split], index] + ([] if stream is None else [stream])
        return np.random.default_rng(key)

    def _pair(self, rng: np.random.Generator, split: str) -> tuple[str, str]:
        pairs = self.train_pairs if split == "train" else self.all_pairs
        return pairs[int(rng.integers(len(pairs)))]

    def pair(self, split: str, index: int) -> tuple[str, str]:
        """The (colour, shape) of a sample, without rendering it."""
        group = self.group_size(split)
        if group == 1:
            return self._pair(self._rng(split, index), split)
        colour, shape = self._pair(self._rng(split, index // group), split)
        return colour, self._member_shape(split, index, colour, shape)

    def group_size(self, split: str) -> int:
        """How many consecutive indices of ``split`` form one contrast group (``WorldConfig.contrast_group``)."""
        return self.config.contrast_group if split == "train" else 1

    def _member_shape(self, split: str, index: int, colour: str, shape: str) -> str:
        """The shape of member ``index % group`` of a contrast group whose first member is a ``colour`` ``shape``."""
        base, member = divmod(index, self.group_size(split))
        if member == 0:
            return shape
        others = [s for s in SHAPES if s != shape and (colour, s) not in self._heldout_set]  # groups: train only
        if not others:
            return shape
        key = [self.config.seed, SPLITS[split], base, 0, _CONTRAST_STREAM]  # 5 entries: no caption stream's key
        order = np.random.default_rng(key).permutation(len(others))
        return others[int(order[(member - 1) % len(others)])]

    def _scene_of(self, split: str, index: int) -> tuple[np.random.Generator, dict[str, Any], list, float]:
        """The rng (positioned after the scene draws) and scene of sample ``index``, contrast groups applied."""
        group = self.group_size(split)
        rng = self._rng(split, index // group)
        attrs, centres, radius = self._scene(rng, split)
        if group > 1:
            attrs["shape"] = self._member_shape(split, index, attrs["colour"], attrs["shape"])
        return rng, attrs, centres, radius

    def _scene(self, rng: np.random.Generator, split: str) -> tuple[dict[str, Any], list[tuple[float, float]], float]:
        colour, shape = self._pair(rng, split)
        size = SIZES[int(rng.integers(len(SIZES)))]
        count = int(rng.integers(1, self.config.max_objects + 1))
        background = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
        layouts = _cell_layouts(count, size)
        cells = layouts[int(rng.integers(len(layouts)))]
        side = self.config.image_size
        radius = _RADIUS[size] * side * float(rng.uniform(0.92, 1.0))
        jitter = rng.uniform(-_JITTER, _JITTER, (count, 2)) * side
        lo, hi = radius + 0.5, side - radius - 0.5
        centres = [
            (min(max(_CELL[cell % 3] * side + jx, lo), hi), min(max(_CELL[cell // 3] * side + jy, lo), hi))
            for cell, (jx, jy) in zip(cells, jitter.tolist())
        ]
        attributes = {
            "shape": shape,
            "colour": colour,
            "count": count,
            "size": size,
            "position": POSITIONS[cells[0]] if count == 1 else SCATTERED,
            "background": background,
        }
        return attributes, centres, radius

    def _render(
        self, rng: np.random.Generator, attrs: dict[str, Any], centres: list[tuple[float, float]], radius: float
    ) -> tuple[Image.Image, np.ndarray]:
        side, ss = self.config.image_size, _SUPERSAMPLE
        canvas = Image.new("L", (side * ss, side * ss), 0)
        draw = ImageDraw.Draw(canvas)
        for cx, cy in centres:
            _draw_shape(draw, attrs["shape"], cx * ss, cy * ss, radius * ss)
        mask = canvas.reduce(ss)
        # Background: a grey with a faint tint and a faint greyscale texture, so it carries no hue.
        grey = rng.uniform(100, 160) + rng.uniform(-6, 6, 3)  # (3,)
        contrast = rng.uniform(8, 16)
        texture = _texture_bank(attrs["background"], side)[int(rng.integers(_BANK_SIZE))]
        flip = int(rng.integers(8))  # one of the square's 8 symmetries
        texture = np.rot90(texture.T if flip >= 4 else texture, flip % 4)
        # Decode and scale the pattern with a lookup table: (256, 3) → (H, W, 3), values within [78, 182].
        lut = (grey + 0.5 + contrast * _DECODE).astype(np.uint8)
        backdrop = Image.fromarray(np.take(lut, texture, axis=0), "RGB")
        colour = np.array(COLOUR_RGB[attrs["colour"]]) + rng.uniform(-8, 8, 3)
        fill = tuple(int(v) for v in np.clip(colour + 0.5, 0, 255))
        image = Image.composite(Image.new("RGB", (side, side), fill), backdrop, mask)  # alpha blend in C
        return image, np.asarray(mask)

    def sample(self, split: str, index: int) -> Sample:
        """The sample at ``index`` of ``split``; the same arguments always give identical pixels and caption."""
        rng, attrs, centres, radius = self._scene_of(split, index)
        image, mask = self._render(rng, attrs, centres, radius)
        languages = self.config.languages
        attrs["language"] = languages[int(rng.integers(len(languages)))]
        caption = make_caption(attrs, attrs["language"], rng)
        return Sample(image, caption, attrs, mask)

    def captions(self, split: str, index: int, n: int, language: str) -> list[str]:
        """``n`` further captions of a sample in ``language`` (distinct where the templates allow)."""
        _, attrs, _, _ = self._scene_of(split, index)
        out: list[str] = []
        for k in range(4 * n):
            caption = make_caption(attrs, language, self._rng(split, index, stream=k + 1))
            if caption not in out:
                out.append(caption)
            if len(out) == n:
                break
        while len(out) < n:
            out.append(out[len(out) % max(len(out), 1)])
        return out

    def dataset(
        self,
        split: str,
        size: int,
        transform: Callable[[Image.Image], Any] | None = None,
        *,
        start: int = 0,
        cache: bool = False,
    ) -> SyntheticDataset:
        """A map-style dataset of samples ``start .. start + size - 1`` of ``split``.

        Args:
            split: ``"train"``, ``"val"`` or ``"test"``.
            size: Number of samples.
            transform: Applied to each image (e.g. a ``TrainTransform``).
            start: First sample index, e.g. to draw fresh data or disjoint slices.
            cache: Keep generated (image, caption) pairs in memory.

        Returns:
            A dataset whose items are ``(transform(image) or image, caption)``.
        """
        return SyntheticDataset(self, split, size, transform, start=start, cache=cache)

    def _indices(self, split: str, size: int, keep: Callable[[tuple[str, str]], bool]) -> list[int]:
        """The first ``size`` indices of ``split`` whose pair passes ``keep``."""
        out, index = [], 0
        while len(out) < size:
            if keep(self.pair(split, index)):
                out.append(index)
            index += 1
        return out

    def zeroshot_tasks(self, size: int = 500, language: str = "en", split: str = "test") -> list[ZeroShotTask]:
        """Zero-shot classification tasks: shape, colour, count, and held-out composition.

        Shape, colour and count share ``size`` images of seen (training) pairs; the composition task has
        ``size`` images of held-out pairs only, classified among the held-out pairs. Count is left out when
        ``max_objects == 1``, composition when nothing is held out.

        Args:
            size: Images per task.
            language: Language of class names and templates.
            split: ``"val"`` (for model selection) or ``"test"``.
        """
        if language not in LANGUAGES:
            raise ValueError(f"language must be one of {LANGUAGES}, got {language!r}")
        if split == "train":
            raise ValueError("zero-shot tasks come from 'val' or 'test', not 'train'")
        held = set(self.heldout_pairs)
        seen = self._indices(split, size, lambda p: p not in held)
        samples = [self.sample(split, i) for i in seen]
        images = [s.image for s in samples]
        counts = list(range(1, self.config.max_objects + 1))
        tasks = []
        for name, classes in (("shape", SHAPES), ("colour", COLOURS), ("count", counts)):
            if len(classes) < 2:
                continue
            classnames, templates = _task_vocab(name, language, classes)
            labels = [list(classes).index(s.attributes[name]) for s in samples]
            tasks.append(ZeroShotTask(name, classnames, templates, images, labels, seen, split))
        if len(self.heldout_pairs) >= 2:
            chosen = self._indices(split, size, lambda p: p in held)
            pairs = [self.pair(split, i) for i in chosen]
            classnames, templates = _task_vocab("composition", language, self.heldout_pairs)
            labels = [self.heldout_pairs.index(p) for p in pairs]
            images = [self.sample(split, i).image for i in chosen]
            tasks.append(ZeroShotTask("composition", classnames, templates, images, labels, chosen, split))
        return tasks

    def retrieval_set(
        self, size: int = 200, language: str = "en", captions_per_image: int = 5, split: str = "test"
    ) -> tuple[list[Image.Image], list[list[str]]]:
        """Images ``0 .. size - 1`` of ``split`` with ``captions_per_image`` captions each, in ``language``."""
        if language not in LANGUAGES:
            raise ValueError(f"language must be one of {LANGUAGES}, got {language!r}")
        images = [self.sample(split, i).image for i in range(size)]
        captions = [self.captions(split, i, captions_per_image, language) for i in range(size)]
        return images, captions


class SyntheticDataset(torch.utils.data.Dataset):
    """Map-style view of one split: item ``i`` is sample ``start + i`` as ``(image, caption)``.

    Picklable (DataLoader workers regenerate samples from the world's config). With ``cache``, each
    process keeps the (image, caption) pairs it generated.

    Args:
        world: The generating world.
        split: ``"train"``, ``"val"`` or ``"test"``.
        size: Number of items.
        transform: Applied to each image.
        start: Index of the first sample.
        cache: Keep generated items in memory.
    """

    def __init__(
        self,
        world: SyntheticWorld,
        split: str,
        size: int,
        transform: Callable[[Image.Image], Any] | None = None,
        *,
        start: int = 0,
        cache: bool = False,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {tuple(SPLITS)}, got {split!r}")
        if size < 0 or start < 0:
            raise ValueError(f"size and start must be non-negative, got size={size}, start={start}")
        self.world, self.split, self.size, self.start = world, split, size, start
        group = world.group_size(split)
        if group > 1 and (start % group or size % group):
            raise ValueError(f"with contrast groups of {group}, start and size must be multiples of {group}, "
                             f"got start={start}, size={size}")
        self.group_size = group  # StepBatches keeps each group's consecutive items in one batch
        self.transform = transform
        self._cache: dict[int, tuple[Image.Image, str]] | None = {} if cache else None

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> tuple[Any, str]:
        if not -self.size <= i < self.size:
            raise IndexError(f"index {i} out of range for a dataset of {self.size}")
        i %= self.size
        item = self._cache.get(i) if self._cache is not None else None
        if item is None:
            sample = self.world.sample(self.split, self.start + i)
            item = (sample.image, sample.caption)
            if self._cache is not None:
                self._cache[i] = item
        image, caption = item
        return (self.transform(image) if self.transform is not None else image), caption
