"""Drawing a scene: shape polygons, background textures, object layouts, and the rendered image and mask.

Geometry is in units of the image side. Every random choice comes from the caller's rng, in a fixed order, so a
scene is a pure function of that rng's seed.
"""

from __future__ import annotations

import itertools
import math
from functools import cache

import numpy as np
from PIL import Image, ImageDraw

from clipforge.data.synthetic.vocab import BACKGROUNDS, COLOUR_RGB

_RADIUS = {"small": 0.125, "large": 0.2}  # largest circumradius of an object; scenes shrink it by up to 8%
_CELL = (0.2, 0.5, 0.8)  # grid-cell centres
_JITTER = 0.012  # small enough that small objects in adjacent cells never touch (2 · 0.125 + 2 · 0.012 < 0.3)
_SUPERSAMPLE = 2  # draw the mask at 2× and box-filter down: antialiased edges
_BANK_SIZE = 32  # textures per kind; with the 8 flips/rotations a scene picks one of 256
_DECODE = (np.arange(256) / 127.5 - 1)[:, None]  # (256, 1): encoded byte → t


# --- Shapes. ---


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


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float) -> None:
    """Fills ``shape`` (a ``SHAPES`` entry) of circumradius ``r`` centred at ``(cx, cy)`` with 255."""
    if shape in ("circle", "ring"):
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
        if shape == "ring":
            ri = 0.55 * r
            draw.ellipse((cx - ri, cy - ri, cx + ri, cy + ri), fill=0)
        return
    points = _POLYGONS[shape] * r + np.array([cx, cy])
    draw.polygon([tuple(p) for p in points.tolist()], fill=255)


# --- Background textures. ---


def texture(rng: np.random.Generator, background: str, size: int) -> np.ndarray:
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


@cache
def texture_bank(background: str, size: int) -> tuple[np.ndarray, ...]:
    """Pre-rendered textures as uint8 (H, W) arrays that encode t in [-1, 1] as round((t + 1) * 127.5).

    Computing a pattern costs more than the rest of a sample, so each process renders a fixed bank once
    (from its own fixed seeds, the same everywhere) and scenes pick from it.
    """
    bank = []
    for variant in range(_BANK_SIZE):
        rng = np.random.default_rng([size, BACKGROUNDS.index(background), variant])
        bank.append(np.rint((texture(rng, background, size) + 1) * 127.5).astype(np.uint8))
    return tuple(bank)


# --- Layouts. ---


@cache
def cell_layouts(count: int, size: str) -> tuple[tuple[int, ...], ...]:
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


def place(
    rng: np.random.Generator, count: int, size: str, side: int
) -> tuple[tuple[int, ...], list[tuple[float, float]], float]:
    """Where ``count`` objects of ``size`` go in a ``side``-pixel image: their grid cells, centres and radius.

    Draws from ``rng``, in order: the layout, the radius (up to 8% below the size's largest), each centre's jitter.
    Centres are clamped so that every object lies inside the image.
    """
    layouts = cell_layouts(count, size)
    cells = layouts[int(rng.integers(len(layouts)))]
    radius = _RADIUS[size] * side * float(rng.uniform(0.92, 1.0))
    jitter = rng.uniform(-_JITTER, _JITTER, (count, 2)) * side
    lo, hi = radius + 0.5, side - radius - 0.5
    centres = [
        (min(max(_CELL[cell % 3] * side + jx, lo), hi), min(max(_CELL[cell // 3] * side + jy, lo), hi))
        for cell, (jx, jy) in zip(cells, jitter.tolist())
    ]
    return cells, centres, radius


# --- Rendering. ---


def render(
    rng: np.random.Generator,
    shape: str,
    colour: str,
    background: str,
    centres: list[tuple[float, float]],
    radius: float,
    side: int,
) -> tuple[Image.Image, np.ndarray]:
    """The RGB image (``side`` square) and uint8 object mask (H, W) of a scene.

    The objects are drawn at 2× and box-filtered down (antialiased mask), then alpha-blended in a slightly jittered
    ``COLOUR_RGB[colour]`` over a grey backdrop with a faint tint and a faint greyscale ``background`` texture, so the
    backdrop carries no hue. Draws from ``rng``, in order: the grey, its tint, the contrast, the texture and its
    flip, the object colour's jitter.
    """
    ss = _SUPERSAMPLE
    canvas = Image.new("L", (side * ss, side * ss), 0)
    draw = ImageDraw.Draw(canvas)
    for cx, cy in centres:
        draw_shape(draw, shape, cx * ss, cy * ss, radius * ss)
    mask = canvas.reduce(ss)
    grey = rng.uniform(100, 160) + rng.uniform(-6, 6, 3)  # (3,)
    contrast = rng.uniform(8, 16)
    pattern = texture_bank(background, side)[int(rng.integers(_BANK_SIZE))]
    flip = int(rng.integers(8))  # one of the square's 8 symmetries
    pattern = np.rot90(pattern.T if flip >= 4 else pattern, flip % 4)
    # Decode and scale the pattern with a lookup table: (256, 3) → (H, W, 3), values within [78, 182].
    lut = (grey + 0.5 + contrast * _DECODE).astype(np.uint8)
    backdrop = Image.fromarray(np.take(lut, pattern, axis=0), "RGB")
    rgb = np.array(COLOUR_RGB[colour]) + rng.uniform(-8, 8, 3)
    fill = tuple(int(v) for v in np.clip(rgb + 0.5, 0, 255))
    image = Image.composite(Image.new("RGB", (side, side), fill), backdrop, mask)  # alpha blend in C
    return image, np.asarray(mask)


# --- Style shifts: the same scene re-drawn (clipforge.data.synthetic.shifts). ---
#
# Each takes a rendered scene (its image and object mask) and an rng, and draws from the rng in the order its docstring
# states; ``render`` above is untouched, so unshifted images stay the same bytes.


def backdrop(rng: np.random.Generator, background: str, side: int) -> np.ndarray:
    """A fresh grey backdrop (H, W, 3) uint8 with a faint ``background`` texture, as ``render`` draws one.

    Draws from ``rng``, in order: the grey, its tint, the contrast, the texture and its flip.
    """
    grey = rng.uniform(100, 160) + rng.uniform(-6, 6, 3)  # (3,)
    contrast = rng.uniform(8, 16)
    pattern = texture_bank(background, side)[int(rng.integers(_BANK_SIZE))]
    flip = int(rng.integers(8))
    pattern = np.rot90(pattern.T if flip >= 4 else pattern, flip % 4)
    lut = (grey + 0.5 + contrast * _DECODE).astype(np.uint8)
    return np.take(lut, pattern, axis=0)


def object_fill(image: Image.Image, mask: np.ndarray, fallback: tuple[int, int, int]) -> np.ndarray:
    """The objects' fill colour (3,): the median of the fully covered pixels (``fallback`` when none is)."""
    inside = np.asarray(image)[mask == 255]
    return np.median(inside, axis=0) if len(inside) else np.array(fallback, dtype=np.float64)


def _blend(base: np.ndarray, top: np.ndarray, alpha: np.ndarray) -> Image.Image:
    """``top`` over ``base`` (H, W, 3) with per-pixel ``alpha`` (H, W) in [0, 1], as an RGB image."""
    out = base.astype(np.float64) * (1 - alpha[..., None]) + top.astype(np.float64) * alpha[..., None]
    return Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8), "RGB")


def outline_band(mask: np.ndarray, width: int = 3) -> np.ndarray:
    """The objects' edges as an alpha (H, W) in [0, 1]: the mask's dilation minus its erosion (``width`` px)."""
    from PIL import ImageFilter

    m = Image.fromarray(mask)
    band = np.asarray(m.filter(ImageFilter.MaxFilter(width)), np.float64) - np.asarray(
        m.filter(ImageFilter.MinFilter(width)), np.float64)
    return np.clip(band / 255.0, 0, 1)


def draw_outline(rng: np.random.Generator, mask: np.ndarray, fill: np.ndarray, background: str) -> Image.Image:
    """Outline-only drawing: the objects' edges in their colour on a fresh backdrop; the inside shows the backdrop.

    Draws from ``rng``: the backdrop (:func:`backdrop`).
    """
    side = mask.shape[0]
    base = backdrop(rng, background, side)
    return _blend(base, np.broadcast_to(fill, base.shape), outline_band(mask))


def draw_textured(rng: np.random.Generator, mask: np.ndarray, fill: np.ndarray, background: str) -> Image.Image:
    """The objects' surface textured: their colour modulated ±40% by a stripe or checker pattern, on a fresh backdrop.

    Draws from ``rng``, in order: the backdrop, the pattern's kind, its bank entry, its strength.
    """
    side = mask.shape[0]
    base = backdrop(rng, background, side)
    kind = ("stripes", "checker", "dots")[int(rng.integers(3))]
    t = texture_bank(kind, side)[int(rng.integers(_BANK_SIZE))].astype(np.float64) / 127.5 - 1  # (H, W) in [-1, 1]
    strength = rng.uniform(0.3, 0.45)
    top = np.clip(fill[None, None, :] * (1 + strength * t[..., None]) + 60 * strength * t[..., None], 0, 255)
    return _blend(base, top, mask.astype(np.float64) / 255.0)


def draw_on_new_background(rng: np.random.Generator, mask: np.ndarray, fill: np.ndarray) -> Image.Image:
    """The objects on a backdrop no training scene has: wavy bands between two random colours at full contrast.

    Draws from ``rng``, in order: the two colours, the bands' angle, period, waviness and phase.
    """
    side = mask.shape[0]
    c1, c2 = rng.uniform(30, 225, 3), rng.uniform(30, 225, 3)
    angle = rng.uniform(0, math.pi)
    period = rng.uniform(0.12, 0.25) * side
    wave, phase = rng.uniform(1, 3), rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float64)
    u = xx * math.cos(angle) + yy * math.sin(angle)
    v = -xx * math.sin(angle) + yy * math.cos(angle)
    t = 0.5 + 0.5 * np.sin(2 * math.pi * u / period + wave * np.sin(2 * math.pi * v / side) + phase)  # (H, W)
    base = c1 * (1 - t[..., None]) + c2 * t[..., None]
    return _blend(base, np.broadcast_to(fill, base.shape), mask.astype(np.float64) / 255.0)


def add_noise(rng: np.random.Generator, image: Image.Image, sigma: float = 32.0) -> Image.Image:
    """Gaussian pixel noise of standard deviation ``sigma`` (in 0–255 units). Draws the noise (H, W, 3)."""
    a = np.asarray(image, np.float64)
    noisy = a + rng.standard_normal(a.shape) * sigma
    return Image.fromarray(np.clip(noisy + 0.5, 0, 255).astype(np.uint8), "RGB")


def rotate_hue(rng: np.random.Generator, image: Image.Image) -> Image.Image:
    """A colour shift: every pixel's hue rotated by one angle in [90°, 270°] (YIQ chroma rotation, luma kept), plus a
    colour cast of up to ±25 per channel. Draws the angle, then the cast (3,)."""
    theta = math.radians(rng.uniform(90, 270))
    cast = rng.uniform(-25, 25, 3)
    to_yiq = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    c, s = math.cos(theta), math.sin(theta)
    rot = np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    m = np.linalg.inv(to_yiq) @ rot @ to_yiq
    a = np.asarray(image, np.float64) @ m.T + cast
    return Image.fromarray(np.clip(a + 0.5, 0, 255).astype(np.uint8), "RGB")


def draw_sketch(rng: np.random.Generator, mask: np.ndarray) -> Image.Image:
    """A pencil sketch: grey strokes along the objects' edges (three slightly offset passes) and light diagonal
    hatching inside, on off-white paper with faint grain; no colour.

    Draws from ``rng``, in order: the paper's shade, its grain (H, W), each pass's offset (2,), the hatching's
    direction and spacing, the pencil's shade.
    """
    side = mask.shape[0]
    paper = rng.uniform(225, 245) + rng.standard_normal((side, side)) * 4
    band = outline_band(mask, 3)
    strokes = np.zeros_like(band)
    for _ in range(3):
        dx, dy = (int(v) for v in rng.integers(-1, 2, 2))
        strokes = np.maximum(strokes, 0.6 * np.roll(band, (dy, dx), axis=(0, 1)))
    direction = 1 if rng.integers(2) else -1
    spacing = int(rng.integers(3, 6))
    yy, xx = np.mgrid[0:side, 0:side]
    hatch = ((xx + direction * yy) % spacing == 0) * (mask.astype(np.float64) / 255.0) * 0.35
    alpha = np.clip(np.maximum(strokes, hatch), 0, 1)
    pencil = rng.uniform(40, 80)
    grey = paper * (1 - alpha) + pencil * alpha
    g = np.clip(grey + 0.5, 0, 255).astype(np.uint8)
    return Image.fromarray(np.stack([g, g, g], axis=-1), "RGB")
