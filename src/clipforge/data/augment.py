"""Caption-preserving augmentation for small datasets: image augmentations that never contradict the caption,
text augmentation of tag-style captions, the extra views SLIP and DeCLIP train on, and CLIPPO's second rendering
of each caption for its reading term.

A flip turns "arrow pointing left" into a picture of an arrow pointing right; colour jitter turns "a red car"
blue. So each sample's augmentation looks at its caption first: no horizontal flip when the caption has a
left/right word (``left``, ``right``, ``east``, ``clockwise``, ``undo``, ``letter``, ``text``, a digit, ...), no
colour jitter and no new background when it names a colour. Transparent images (icons, logos, stickers) are
composited on a random background whose lightness is far from the image's own visible pixels, so the shape stays
visible; otherwise on white, clipforge's rule everywhere else (``clipforge.data.decode``). Word lists are
English: captions in another language are not checked (leave ``flip`` and ``color_jitter`` at 0 for them).

Text augmentation is for captions that are a phrase followed by comma-separated tags ("a house icon, building,
home"): each tag after the first part is dropped with ``tag_dropout``, the tags shuffled, and with
``template_prob`` the first part is replaced by a template filled with the first tag-free phrase's name.

CLIPPO's reading term (``reading``, ``clipforge.train.self_supervised``) pairs each rendered caption with a second
rendering of the same text, its ink moved to a random place and scaled (``reading_view``): the shared tower learns
that what was written, not where or how large, is what the pixels mean.

Every random draw comes from the sample's own ``random.Random`` (``clipforge.train.data``), so a resumed run
draws the same augmentations as an uninterrupted one.
"""

from __future__ import annotations

import colorsys
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageEnhance, ImageFilter

from clipforge.config import ConfigError
from clipforge.data.decode import pick_caption

BICUBIC = Image.Resampling.BICUBIC
_WORD = re.compile(r"[a-z]+|\d")
DIRECTION_WORDS = frozenset(
    "left right west east leftward rightward leftwards rightwards clockwise counterclockwise anticlockwise "
    "ccw cw rtl ltr undo redo forward forwards backward backwards back next previous prev rewind reply redirect "
    "indent outdent dedent rotate rotation turn login logout signin signout enter exit import export "
    "letter letters text font alphabet abc number numeric digit digits type typography heading signature "
    "language translate currency".split()) | frozenset("0123456789")
COLOUR_WORDS = frozenset(
    "red green blue yellow orange purple violet pink brown black white grey gray cyan magenta teal navy maroon "
    "olive lime gold golden silver beige turquoise indigo crimson scarlet colour color colours colors coloured "
    "colored colourful colorful rainbow palette dark light bright pale monochrome".split())


def _words(caption: str) -> set[str]:
    """The caption's lower-case words, and each digit alone ("arrow-left", "h1" → arrow, left, h, 1)."""
    return set(_WORD.findall(caption.lower()))


def has_direction(caption: str) -> bool:
    """Whether a mirror image could contradict ``caption`` (a left/right word, writing, or a digit)."""
    return not _words(caption).isdisjoint(DIRECTION_WORDS)

STROKE_WORDS = frozenset(
    "bold bolder thin thinner thick light regular heavy weight fill filled solid outline outlined line lines stroke "
    "strokes duotone hairline".split())


def has_colour(caption: str) -> bool:
    """Whether ``caption`` names a colour (so jitter or a new background could contradict it)."""
    return not _words(caption).isdisjoint(COLOUR_WORDS)


def has_stroke_word(caption: str) -> bool:
    """Whether ``caption`` names a stroke weight or a drawing style (so thickening the lines could contradict it)."""
    return not _words(caption).isdisjoint(STROKE_WORDS)


@dataclass(frozen=True)
class AugmentConfig:
    """Caption-preserving image augmentation (the train config's ``augment``; needs ``data.augment: true``).

    Attributes:
        scale: Range of a random resized crop's area, as a fraction of the image's (OpenCLIP: 0.9–1.0).
        ratio: Range of the crop's aspect ratio.
        rotation: Largest rotation in degrees, drawn uniformly in ±rotation; corners become background.
        flip: Probability of a horizontal flip, where the caption has no left/right word.
        color_jitter: Strength ``s``: brightness, contrast and saturation × U(1 − s, 1 + s), hue shifted by
            U(−s/4, s/4) of the circle; where the caption names no colour.
        grayscale: Probability of turning the image grey, where the caption names no colour.
        backgrounds: Probability that a transparent image is composited on a random colour (contrasting with its
            visible pixels), where the caption names no colour; else on white.
        stroke: Probability of drawing a transparent image's strokes bolder (its alpha dilated by 1 to
            ``stroke_radius`` pixels at the output size), where the caption names no weight or style (``bold``,
            ``thin``, ``filled``, ``outline``, ...): line icons drawn as bold and filled styles draw them. Never
            lighter: eroding a 64-pixel line icon by one pixel erases its thinnest strokes.
        stroke_radius: The largest change, in pixels (each draw uniform in 1 … stroke_radius).
        fill: Probability of drawing a transparent line drawing filled (``fill_shapes``: the shapes its outer
            strokes enclose filled with its ink colour, the ink inside them kept in the opposite tone), where the
            caption names no weight or style: line icons drawn as solid and duotone (a faint fill) styles draw them.
        fill_opacity: Range of the fill's opacity, drawn uniformly.
    """

    scale: tuple[float, float] = (0.9, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    rotation: float = 0.0
    flip: float = 0.0
    color_jitter: float = 0.0
    grayscale: float = 0.0
    backgrounds: float = 0.0
    stroke: float = 0.0
    stroke_radius: int = 1
    fill: float = 0.0
    fill_opacity: tuple[float, float] = (0.2, 1.0)

    def __post_init__(self) -> None:
        if not 0 < self.scale[0] <= self.scale[1] <= 1:
            raise ConfigError(f"augment.scale: expected 0 < low <= high <= 1, got {list(self.scale)}")
        if not 0 < self.ratio[0] <= self.ratio[1]:
            raise ConfigError(f"augment.ratio: expected 0 < low <= high, got {list(self.ratio)}")
        if not 0 <= self.rotation <= 180:
            raise ConfigError(f"augment.rotation: degrees in [0, 180], got {self.rotation}")
        if self.stroke_radius < 1:
            raise ConfigError(f"augment.stroke_radius: pixels, at least 1, got {self.stroke_radius}")
        if not 0 < self.fill_opacity[0] <= self.fill_opacity[1] <= 1:
            raise ConfigError(f"augment.fill_opacity: expected 0 < low <= high <= 1, got {list(self.fill_opacity)}")
        for name in ("flip", "grayscale", "backgrounds", "stroke", "fill"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"augment.{name}: a probability in [0, 1], got {getattr(self, name)}")
        if not 0 <= self.color_jitter < 1:
            raise ConfigError(f"augment.color_jitter: a strength in [0, 1), got {self.color_jitter}")

    @property
    def needs_alpha(self) -> bool:
        """Whether transparent images must reach the transform as RGBA (new backgrounds, stroke weights, fills)."""
        return bool(self.backgrounds or self.stroke or self.fill)


@dataclass(frozen=True)
class TextAugmentConfig:
    """Augmentation of captions made of a phrase and comma-separated tags (the train config's ``text_augment``).

    Attributes:
        tag_dropout: Probability that each tag after the caption's first comma-separated part is dropped.
        word_dropout: Probability that each word of the caption's first part is dropped (EDA's random deletion; at
            least one word stays): "an icon of a map pin star" may become "icon of map pin", so the text tower
            learns what each word of a name adds, not only whole names.
        tag_shuffle: Shuffle the tags after the first part.
        templates: Templates with ``{}`` where a name goes ("an icon of {}.", "a drawing of a {}.").
        template_prob: Probability of replacing the first part with a template filled with the first tag (the
            caption's first part is kept when there are no tags or no templates).
        separator: What separates the parts.
    """

    tag_dropout: float = 0.0
    word_dropout: float = 0.0
    tag_shuffle: bool = False
    templates: tuple[str, ...] = ()
    template_prob: float = 0.0
    separator: str = ","

    def __post_init__(self) -> None:
        for name in ("tag_dropout", "word_dropout", "template_prob"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"text_augment.{name}: a probability in [0, 1], got {getattr(self, name)}")
        for i, t in enumerate(self.templates):
            if "{}" not in t:
                raise ConfigError(f"text_augment.templates[{i}]: {t!r} has no '{{}}' for the name")
        if self.template_prob and not self.templates:
            raise ConfigError("text_augment.template_prob: needs text_augment.templates")
        if not self.separator:
            raise ConfigError("text_augment.separator: must not be empty")


def drop_words(text: str, p: float, rng: random.Random) -> str:
    """``text`` with each word dropped with probability ``p``, one word kept when all would go (one draw per
    word, then one more only then); a trailing full stop stays."""
    words = text.split()
    if len(words) < 2:
        return text
    trailing = "." if words[-1].endswith(".") and len(words[-1]) > 1 else ""
    words[-1] = words[-1].removesuffix(".") if trailing else words[-1]
    kept = [w for w in words if rng.random() >= p]
    if not kept:
        kept = [words[rng.randrange(len(words))]]
    return " ".join(kept) + trailing


def augment_text(caption: str, config: TextAugmentConfig, rng: random.Random) -> str:
    """``caption`` with its head's words dropped, its tags dropped, shuffled and its head templated as ``config``
    says."""
    sep = config.separator
    parts = [p.strip() for p in caption.split(sep)]
    head, tags = parts[0], [t for t in parts[1:] if t]
    if config.word_dropout:
        head = drop_words(head, config.word_dropout, rng)
    if not tags:
        return head if config.word_dropout else caption
    trailing = "." if tags[-1].endswith(".") else ""
    tags = [t.rstrip(".") for t in tags]
    if config.tag_dropout:
        tags = [t for t in tags if rng.random() >= config.tag_dropout]
    if config.tag_shuffle and len(tags) > 1:
        rng.shuffle(tags)
    if config.templates and config.template_prob and tags and rng.random() < config.template_prob:
        head = config.templates[rng.randrange(len(config.templates))].format(tags[0]).rstrip(".")
    return (f"{sep} ".join([head, *tags]) + trailing) if tags else head.rstrip(".") + trailing


class AugmentTransform:
    """The caption-preserving train transform: crop, rotate, flip, background, colour, grey → tensor.

    Called as ``transform(image, rng, caption)``; an RGBA image (``DecodeLimits(alpha="keep")``) is composited on
    its background after the geometry, so rotated corners take the background too.

    Args:
        size: Output side in pixels.
        mean: Per-channel mean.
        std: Per-channel std.
        config: What to draw.
    """

    takes_caption = True

    def __init__(self, size: int, mean: Sequence[float], std: Sequence[float], config: AugmentConfig):
        from clipforge.transforms import TrainTransform

        self.size, self.mean, self.std, self.config = size, tuple(mean), tuple(std), config
        self._crop = TrainTransform(size, mean, std, config.scale, config.ratio)  # its crop draw, over our ranges

    def crop_box(self, width: int, height: int, rng: random.Random) -> tuple[int, int, int, int]:
        """torchvision's RandomResizedCrop.get_params over ``config.scale`` and ``config.ratio``."""
        return self._crop.crop_box(width, height, rng)

    def __call__(self, image: Image.Image, rng: random.Random | None = None, caption: str = "") -> torch.Tensor:
        from clipforge.transforms import to_tensor

        rng = rng or random.Random()
        c = self.config
        directional, coloured = has_direction(caption), has_colour(caption)
        box = self.crop_box(*image.size, rng)
        mode = "RGBA" if image.mode == "RGBA" else "RGB"
        image = image.convert(mode).resize((self.size, self.size), BICUBIC, box=box)
        styled = has_stroke_word(caption)
        if c.stroke and image.mode == "RGBA" and rng.random() < c.stroke and not styled:
            image = reweight(image, rng.randint(1, c.stroke_radius))
        if c.fill and image.mode == "RGBA" and rng.random() < c.fill and not styled:  # after: keeps knock-outs
            image = fill_shapes(image, rng.uniform(*c.fill_opacity))
        if c.rotation:
            angle = rng.uniform(-c.rotation, c.rotation)
            image = image.convert("RGBA").rotate(angle, BICUBIC, fillcolor=(0, 0, 0, 0))
        if c.flip and rng.random() < c.flip and not directional:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if image.mode == "RGBA":
            new = c.backgrounds and rng.random() < c.backgrounds and not coloured
            image = composite(image, background_for(image, rng) if new else (255, 255, 255))
        if c.color_jitter and not coloured:
            image = jitter(image, c.color_jitter, rng)
        if c.grayscale and rng.random() < c.grayscale and not coloured:
            image = image.convert("L").convert("RGB")
        return to_tensor(image, self.mean, self.std)

    def __repr__(self) -> str:
        return f"AugmentTransform(size={self.size}, {self.config})"


def reweight(image: Image.Image, radius: int) -> Image.Image:
    """An RGBA image with its strokes ``radius`` (≥ 1) pixels bolder: the alpha dilated. Where alpha grows, the
    pixels keep their own colour (a rasterised SVG's transparent pixels are its ink colour or black)."""
    alpha = image.getchannel("A").filter(ImageFilter.MaxFilter(2 * radius + 1))
    out = image.copy()
    out.putalpha(alpha)
    return out


def _grow(mask: np.ndarray) -> np.ndarray:
    """A boolean mask and its 4-neighbours."""
    grown = mask.copy()
    grown[1:, :] |= mask[:-1, :]
    grown[:-1, :] |= mask[1:, :]
    grown[:, 1:] |= mask[:, :-1]
    grown[:, :-1] |= mask[:, 1:]
    return grown


def _flood(seeds: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """The pixels of ``allowed`` joined (4-connected, through ``allowed``) to ``seeds & allowed``."""
    region = seeds & allowed
    while True:  # one step of growth per pass, until it stops
        grown = _grow(region) & allowed
        if np.array_equal(grown, region):
            return region
        region = grown


def nesting(ink: np.ndarray) -> np.ndarray:
    """Each pixel's depth in a boolean ``ink`` mask's nesting of shapes: 0 the outside (not ink, joined to the
    border), 1 the ink that bounds it, 2 the holes that ink encloses, 3 the ink drawn inside those holes, and so
    on (even depths are not ink, odd ones ink; 4-connected)."""
    depth = np.full(ink.shape, -1, dtype=np.int64)
    border = np.zeros_like(ink)
    border[0, :] = border[-1, :] = border[:, 0] = border[:, -1] = True
    level, region = 0, _flood(border, ~ink)
    while True:
        depth[region] = level
        unassigned = depth < 0
        if not unassigned.any():
            return depth
        level += 1
        kind = ink if level % 2 else ~ink
        region = _flood(_grow(~unassigned) & unassigned, kind & unassigned)


def fill_shapes(image: Image.Image, opacity: float) -> Image.Image:
    """An RGBA line drawing as a filled one: the shapes its outer strokes enclose filled with its ink colour (the
    alpha-weighted mean of its visible pixels) at ``opacity``, keeping any alpha already larger (antialiasing);
    the ink drawn inside them stays visible in the opposite tone — kept as ink under a faint fill (< 0.5, a
    duotone look), knocked out of a solid one (its alpha ``opacity × (1 − alpha)``)."""
    pixels = np.asarray(image, dtype=np.float32)
    alpha = pixels[..., 3] / 255
    depth = nesting(alpha >= 0.5)
    holes, inner = (depth >= 2) & (depth % 2 == 0), (depth >= 3) & (depth % 2 == 1)
    if not holes.any():
        return image
    ink = (pixels[..., :3] * alpha[..., None]).sum((0, 1)) / alpha.sum()
    out = pixels.copy()
    filled = holes | (_grow(holes) & (depth == 1))  # with the strokes' antialiased inner edge
    out[filled, :3] = ink
    out[filled, 3] = np.maximum(alpha[filled], opacity) * 255
    if opacity >= 0.5:
        out[inner, :3] = ink
        out[inner, 3] = opacity * (1 - alpha[inner]) * 255
    return Image.fromarray(np.clip(out.round(), 0, 255).astype(np.uint8), "RGBA")


def composite(image: Image.Image, colour: tuple[int, int, int]) -> Image.Image:
    """An RGBA image over a solid ``colour``, as RGB."""
    background = Image.new("RGBA", image.size, (*colour, 255))
    return Image.alpha_composite(background, image).convert("RGB")


def background_for(image: Image.Image, rng: random.Random) -> tuple[int, int, int]:
    """A random colour whose lightness is at least 0.45 away from the mean lightness of the visible pixels."""
    pixels = np.asarray(image, dtype=np.float32) / 255
    weight = pixels[..., 3]
    luma = pixels[..., :3] @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    visible = float((luma * weight).sum() / weight.sum()) if weight.sum() > 0 else 0.5
    low, high = (visible + 0.45, 1.0) if visible < 0.5 else (0.0, visible - 0.45)
    lightness = rng.uniform(low, high) if high > low else (1.0 if visible < 0.5 else 0.0)
    r, g, b = colorsys.hls_to_rgb(rng.random(), lightness, rng.uniform(0.0, 0.9))
    return round(r * 255), round(g * 255), round(b * 255)


def jitter(image: Image.Image, strength: float, rng: random.Random) -> Image.Image:
    """Brightness, contrast and saturation × U(1 − s, 1 + s) and a hue shift of U(−s/4, s/4), in a random order."""
    ops: list[Any] = [ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color, "hue"]
    rng.shuffle(ops)
    for op in ops:
        if op == "hue":
            image = shift_hue(image, rng.uniform(-strength / 4, strength / 4))
        else:
            image = op(image).enhance(rng.uniform(1 - strength, 1 + strength))
    return image


def shift_hue(image: Image.Image, shift: float) -> Image.Image:
    """``image`` with its hue turned by ``shift`` of the circle (PIL's HSV, hue 0–255)."""
    if not shift:
        return image
    h, s, v = image.convert("HSV").split()
    turn = int(round(shift * 256)) % 256
    h = h.point(lambda x: (x + turn) % 256)
    return Image.merge("HSV", (h, s, v)).convert("RGB")


class Unaugmented:
    """A transform without random draws (the eval transform) in the recipes' calling convention: with
    ``data.augment: false`` the main view stays fixed while SLIP's and DeCLIP's extra views are drawn."""

    def __init__(self, transform: Any):
        self.transform = transform

    def __call__(self, image: Image.Image, rng: random.Random | None = None) -> torch.Tensor:
        return self.transform(image)

    def __repr__(self) -> str:
        return f"Unaugmented({self.transform!r})"


@dataclass
class SampleRecipe:
    """What one sample becomes under the run's small-data recipes: its image tensor and caption, plus the extra
    image views and second caption SLIP and DeCLIP train on (``clipforge.train.self_supervised``).

    Attributes:
        transform: The image transform (``AugmentTransform`` takes the caption; any other is called
            ``transform(image, rng)``).
        text: Text augmentation, or ``None``.
        views: The transform of each extra image view per sample (each its own draw), in order.
        second_caption: Also draw a second caption (another line of the sample's captions when it has several,
            augmented by ``text`` on its own draws).
        reading_scale: CLIPPO's reading term: the scale range of the caption's second rendering (its place is
            drawn too; ``reading_view``), or ``None``.
    """

    transform: Any
    text: TextAugmentConfig | None = None
    views: tuple[Any, ...] = ()
    second_caption: bool = False
    reading_scale: tuple[float, float] | None = None

    def __call__(self, image: Image.Image, captions: Sequence[str],
                 rng: random.Random) -> tuple[torch.Tensor, str, dict[str, Any]]:
        """``(image tensor, caption, extra)``: ``extra`` holds ``views`` (V, 3, H, W), ``caption2`` and ``reading``
        (the scale and place of the caption's second rendering)."""
        drawn, caption = self._caption(captions, rng)
        tensor = self._image(image, rng, drawn, self.transform)  # the flip and colour checks read the whole caption
        extra: dict[str, Any] = {}
        if self.views:
            extra["views"] = torch.stack([self._image(image, rng, drawn, t) for t in self.views])
        if self.second_caption:
            extra["caption2"] = self._caption(captions, rng)[1]
        if self.reading_scale is not None:
            extra["reading"] = (rng.uniform(*self.reading_scale), rng.random(), rng.random())
        return tensor, caption, extra

    def _caption(self, captions: Sequence[str], rng: random.Random) -> tuple[str, str]:
        """A caption as drawn and as text augmentation makes it."""
        caption = pick_caption(captions, rng)
        return caption, augment_text(caption, self.text, rng) if self.text is not None else caption

    @staticmethod
    def _image(image: Image.Image, rng: random.Random, caption: str, transform: Any) -> torch.Tensor:
        if getattr(transform, "takes_caption", False):
            return transform(image, rng, caption)
        return transform(image, rng)


def batch_extras(extras: Sequence[dict[str, Any]], text_processor: Any, texts: Any = None) -> dict[str, Any]:
    """The batch's ``info`` entries from its samples' extras: ``views`` (B, V, 3, H, W), ``texts2`` (B, T) and, for
    CLIPPO's reading term, ``texts_read`` (B, 3, H, W): each caption's second rendering, moved and scaled from
    ``texts`` (the batch's captions as the renderer drew them: not rendered again)."""
    out: dict[str, Any] = {}
    if extras and "views" in extras[0]:
        out["views"] = torch.stack([e["views"] for e in extras])
    if extras and "caption2" in extras[0]:
        out["texts2"] = text_processor([e["caption2"] for e in extras])
    if extras and "reading" in extras[0]:
        assert texts is not None, "the reading term moves the batch's rendered captions: pass them"
        background = text_processor.config.background
        out["texts_read"] = torch.stack([reading_view(p, background, *e["reading"])
                                         for p, e in zip(texts, extras, strict=True)])
    return out


def reading_view(pixels: torch.Tensor, background: int, scale: float, x: float, y: float) -> torch.Tensor:
    """A second rendering of the same text: the ink's bounding box scaled by ``scale`` (antialiased) and put at
    fraction ``x``, ``y`` of the free space of a blank image of the same size.

    Args:
        pixels: One rendered text, uint8 (3, H, W), ink on a uniform ``background``.
        background: The renderer's background brightness.
        scale: Size of the moved text, in (0, 1] of the rendered size.
        x: Horizontal place in [0, 1]: 0 the left edge, 1 the right.
        y: Vertical place in [0, 1].

    Returns:
        uint8 (3, H, W); a blank rendering (no ink) comes back unchanged.
    """
    ink = (pixels != background).any(dim=0)
    if not ink.any():
        return pixels.clone()
    rows, cols = ink.any(dim=1).nonzero().flatten(), ink.any(dim=0).nonzero().flatten()
    crop = pixels[:, int(rows[0]):int(rows[-1]) + 1, int(cols[0]):int(cols[-1]) + 1]
    h, w = crop.shape[1:]
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    if size != (h, w):
        crop = F.interpolate(crop[None].float(), size=size, mode="bilinear", antialias=True,
                             align_corners=False)[0].round().clamp(0, 255).to(torch.uint8)
    out = torch.full_like(pixels, background)
    height, width = pixels.shape[1:]
    top, left = int(y * (height - size[0])), int(x * (width - size[1]))
    out[:, top:top + size[0], left:left + size[1]] = crop
    return out

