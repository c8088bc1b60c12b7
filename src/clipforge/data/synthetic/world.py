"""The synthetic world: scenes as pure functions of ``(seed, split, index)``, held-out pairs, and evaluation tasks."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from clipforge.data.synthetic.captions import make_caption, task_prompts
from clipforge.data.synthetic.config import WorldConfig
from clipforge.data.synthetic.dataset import SyntheticDataset
from clipforge.data.synthetic.drawing import place, render
from clipforge.data.synthetic.typographic import choose_word, label_rng, mention, write_label
from clipforge.data.synthetic.vocab import (
    BACKGROUNDS,
    COLOUR_RGB,
    COLOURS,
    COUNTS,
    LANGUAGES,
    POSITIONS,
    SCATTERED,
    SHAPES,
    SIZES,
    SPLITS,
)

_HOLDOUT_STREAM = 99  # a split id no real split uses: the stream that picks the held-out pairs
_CONTRAST_STREAM = 98  # a stream no caption draw uses: the shapes of a contrast group's members


@dataclass(frozen=True, eq=False)
class Sample:
    """One generated scene.

    Attributes:
        image: RGB image, ``image_size`` square.
        caption: One caption in ``attributes["language"]``.
        attributes: ``shape``, ``colour``, ``count``, ``size``, ``position`` (a ``POSITIONS`` entry, or
            ``"scattered"`` when ``count > 1``), ``background``, ``language``; in a typographic world
            (``WorldConfig.typographic``) also ``text``, the word written in the image or ``None``, in the
            splits it labels.
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
        """A scene's attributes, object centres and radius.

        Draws from ``rng``, in order: the pair, size, count, background, then the layout (``drawing.place``).
        """
        colour, shape = self._pair(rng, split)
        size = SIZES[int(rng.integers(len(SIZES)))]
        count = int(rng.integers(1, self.config.max_objects + 1))
        background = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
        cells, centres, radius = place(rng, count, size, self.config.image_size)
        attributes = {
            "shape": shape,
            "colour": colour,
            "count": count,
            "size": size,
            "position": POSITIONS[cells[0]] if count == 1 else SCATTERED,
            "background": background,
        }
        return attributes, centres, radius

    def sample(self, split: str, index: int) -> Sample:
        """The sample at ``index`` of ``split``; the same arguments always give identical pixels and caption."""
        rng, attrs, centres, radius = self._scene_of(split, index)
        image, mask = render(rng, attrs["shape"], attrs["colour"], attrs["background"], centres, radius,
                             self.config.image_size)
        languages = self.config.languages
        attrs["language"] = languages[int(rng.integers(len(languages)))]
        caption = make_caption(attrs, attrs["language"], rng)
        typographic = self.config.typographic
        if typographic is not None and split in typographic.splits:
            # The label's own stream: the scene, its pixels and its caption stay those of the plain world.
            labels = label_rng(self.config.seed, SPLITS[split], index)
            attrs["text"] = choose_word(labels, attrs["shape"], typographic)
            if attrs["text"] is not None:
                image = write_label(image, mask, attrs["text"], labels)
                if labels.random() < typographic.mention_fraction:
                    caption = mention(caption, attrs["text"], attrs["language"])
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
            classnames, templates = task_prompts(name, language, classes)
            labels = [list(classes).index(s.attributes[name]) for s in samples]
            tasks.append(ZeroShotTask(name, classnames, templates, images, labels, seen, split))
        if len(self.heldout_pairs) >= 2:
            chosen = self._indices(split, size, lambda p: p in held)
            pairs = [self.pair(split, i) for i in chosen]
            classnames, templates = task_prompts("composition", language, self.heldout_pairs)
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
