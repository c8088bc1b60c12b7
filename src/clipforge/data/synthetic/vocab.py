"""The synthetic world's vocabulary: canonical English names of every attribute, the languages and the splits.

The order of each tuple is its class-index order (zero-shot labels index into ``SHAPES``, ``COLOURS``, ...).
"""

from __future__ import annotations

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
LANGUAGES: tuple[str, ...] = ("en", "ru", "ja")  # one caption module each: captions/en.py, ru.py, ja.py
SPLITS: dict[str, int] = {"train": 0, "val": 1, "test": 2}  # split name → the split id in every sample's seed
