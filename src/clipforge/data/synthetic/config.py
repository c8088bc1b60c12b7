"""The synthetic world's configs: ``WorldConfig`` (what a world generates) and ``SyntheticDataConfig`` (the train
config's ``data:`` section with ``kind: synthetic``).

Both derive from ``WorldFields``, so each field of the world and its bounds are stated once; the train side adds
how much of the world to train on and how to load it, and may leave ``image_size`` to the model.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from clipforge.config import ConfigError, check_positive, shorten
from clipforge.data.synthetic.vocab import COUNTS, LANGUAGES, SHAPES, SPLITS


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_fraction(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float) and 0.0 <= value <= 1.0


@dataclass(frozen=True)
class TypographicConfig:
    """Typographic scenes: a word written on a paper label in the image (``clipforge.data.synthetic.typographic``).

    Attributes:
        fraction: Share of scenes that carry a label, in (0, 1].
        own_name_fraction: Share of labelled scenes whose label names their own shape, in [0, 1]; the others name
            another shape (a typographic attack). Captions always describe the drawn shape.
        mention_fraction: Share of labelled scenes whose caption also quotes the label (``… labelled "star".``), in
            [0, 1]: as web captions transcribe the text in photos, which is how CLIP learned to read.
        splits: The splits that carry labels: ``("train",)`` by default, so that evaluations during training see
            the plain scenes; add ``val`` or ``test`` to evaluate on typographic scenes.
    """

    fraction: float = 0.5
    own_name_fraction: float = 0.5
    mention_fraction: float = 0.0
    splits: tuple[str, ...] = ("train",)

    def check(self, where: str) -> None:
        """Raises ``ConfigError`` naming the first field (``where.typographic.<field>``) outside its bounds."""
        if not _is_fraction(self.fraction) or self.fraction == 0:
            raise ConfigError(f"{where}.typographic.fraction must be a number in (0, 1], got {shorten(self.fraction)}"
                              " (leave typographic out, or null, for no typographic scenes)")
        if not _is_fraction(self.own_name_fraction):
            raise ConfigError(f"{where}.typographic.own_name_fraction must be a number in [0, 1], "
                              f"got {shorten(self.own_name_fraction)}")
        if not _is_fraction(self.mention_fraction):
            raise ConfigError(f"{where}.typographic.mention_fraction must be a number in [0, 1], "
                              f"got {shorten(self.mention_fraction)}")
        if (not isinstance(self.splits, tuple) or not self.splits or len(set(self.splits)) != len(self.splits)
                or any(split not in SPLITS for split in self.splits)):
            raise ConfigError(f"{where}.typographic.splits must be a non-empty list of distinct splits of "
                              f"{list(SPLITS)}, got {shorten(self.splits)}")


@dataclass(frozen=True)
class WorldFields:
    """The fields that define a synthetic world, and their bounds (``check_world``); not used on its own.

    Attributes:
        seed: Base seed (non-negative); also picks the held-out pairs.
        image_size: Side of the square images in pixels (16 to 1024).
        languages: Caption languages, distinct entries of ``LANGUAGES``; with several, each sample picks one.
        holdout_fraction: Fraction of colour×shape pairs kept out of ``"train"`` (0 to 0.5).
        max_objects: Most objects per scene (1 to 3).
        contrast_group: ``"train"`` scenes come in groups of this many consecutive indices that differ in the
            shape alone (same colour, count, size, layout, background, pixel noise and caption wording): hard
            negatives for the one attribute nothing else in a caption predicts. Each member's shape is a
            distinct training shape for the group's colour while they last. 1 (the default) turns it off;
            ``"val"`` and ``"test"`` are never grouped. At most one per shape (8).
        typographic: Typographic scenes (a shape with a word written in the image; ``TypographicConfig``), in the
            training split unless it names others; ``None`` (the default) draws none, and every image and caption is
            the same as without the field.
    """

    seed: int = 0
    image_size: int | None = 64
    languages: tuple[str, ...] = ("en",)
    holdout_fraction: float = 0.15
    max_objects: int = 3
    contrast_group: int = 1
    typographic: TypographicConfig | None = None

    def check_world(self, where: str, size_optional: bool = False) -> None:
        """Raises ``ConfigError`` naming the first world field (as ``where.field``) outside its bounds.

        Args:
            where: The config's name in messages (``world``, ``data``).
            size_optional: Whether ``image_size`` may be ``None``.
        """
        size = self.image_size
        if not _is_int(self.seed) or self.seed < 0:
            raise ConfigError(f"{where}.seed must be an integer ≥ 0, got {shorten(self.seed)}")
        if not (size_optional if size is None else _is_int(size) and 16 <= size <= 1024):
            null = " (or null: the model's input size)" if size_optional else ""
            raise ConfigError(f"{where}.image_size must be an integer in 16..1024{null}, got {shorten(size)}")
        languages = self.languages
        if (not isinstance(languages, tuple) or not languages or len(set(languages)) != len(languages)
                or any(lang not in LANGUAGES for lang in languages)):
            raise ConfigError(f"{where}.languages must be a non-empty tuple of distinct entries of {LANGUAGES}, "
                              f"got {shorten(languages)}")
        fraction = self.holdout_fraction
        if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0.0 <= fraction <= 0.5:
            raise ConfigError(f"{where}.holdout_fraction must be a number in [0, 0.5], got {shorten(fraction)}")
        if not _is_int(self.max_objects) or not 1 <= self.max_objects <= max(COUNTS):  # captions name 1 to 3
            raise ConfigError(f"{where}.max_objects must be in 1..{max(COUNTS)}, got {shorten(self.max_objects)}")
        if not _is_int(self.contrast_group) or not 1 <= self.contrast_group <= len(SHAPES):
            raise ConfigError(f"{where}.contrast_group must be in 1..{len(SHAPES)} (one per shape), "
                              f"got {shorten(self.contrast_group)}")
        if self.typographic is not None:
            if not isinstance(self.typographic, TypographicConfig):
                raise ConfigError(f"{where}.typographic must be a mapping {{fraction, own_name_fraction, "
                                  "mention_fraction}} or null, "
                                  f"got {shorten(self.typographic)}")
            self.typographic.check(where)


@dataclass(frozen=True)
class WorldConfig(WorldFields):
    """What defines a synthetic world; two worlds with equal configs generate identical data.

    Its fields and their bounds are those of ``WorldFields``; here ``image_size`` is always a number of pixels.

    Raises:
        ConfigError: naming the field (``world.<field>``) that is out of range or of the wrong type.
    """

    image_size: int = 64

    def __post_init__(self) -> None:
        self.check_world("world")


@dataclass(frozen=True)
class SyntheticDataConfig(WorldFields):
    """The built-in synthetic world as a training data source (``clipforge.data.synthetic``).

    The world's fields (``seed``, ``image_size``, ``languages``, ``holdout_fraction``, ``max_objects``,
    ``contrast_group``, ``typographic``) and their bounds are those of ``WorldFields``; here ``image_size`` defaults
    to ``None``: render at the model's input size. Contrast groups are kept together in a batch from
    ``contrast_start`` on.

    Attributes:
        kind: The data source; ``synthetic`` here.
        train_size: Distinct training samples; the order is reshuffled each pass (epoch). A multiple of
            ``contrast_group``.
        contrast_start: The first step whose batches keep each contrast group (``contrast_group``) together in one
            batch; before it the grouped scenes are drawn one by one: a warm-up for models that cannot start on
            hard negatives.
        augment: Random resized crops (else the eval transform).
        num_workers: DataLoader worker processes.

    Raises:
        ConfigError: naming the field (``data.<field>``) that is out of range.
    """

    image_size: int | None = None
    kind: Literal["synthetic"] = "synthetic"
    train_size: int = 100_000
    contrast_start: int = 0
    augment: bool = True
    num_workers: int = 0

    def __post_init__(self) -> None:
        self.check_world("data", size_optional=True)
        check_positive("data", train_size=self.train_size)
        if self.train_size % self.contrast_group:
            raise ConfigError(f"data.train_size ({self.train_size}) must be a multiple of data.contrast_group "
                              f"({self.contrast_group})")
        if self.contrast_start < 0:
            raise ConfigError(f"data.contrast_start must be ≥ 0, got {self.contrast_start}")
        if self.num_workers < 0:
            raise ConfigError(f"data.num_workers must be >= 0, got {self.num_workers}")

    def world_config(self, image_size: int) -> WorldConfig:
        """The world this config trains on, rendered at ``image_size`` (the model's input size) unless it names one.

        Raises:
            ConfigError: ``image_size`` is needed and out of range.
        """
        world = {f.name: getattr(self, f.name) for f in dataclasses.fields(WorldFields)}
        return WorldConfig(**{**world, "image_size": image_size if self.image_size is None else self.image_size})
