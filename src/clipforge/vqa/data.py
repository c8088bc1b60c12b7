"""A synthetic VQA world for VQA by rendering (CLIPPO, Tschannen et al. 2022, §4.4): questions about scenes.

``SyntheticVQA`` asks questions about ``SyntheticWorld`` scenes (one to three copies of one coloured shape):

=========  ====================================  ========================  ==================
type       question                              answer                    subject
=========  ====================================  ========================  ==================
colour     "what colour is the circle?"          the colour                the scene's shape
shape      "what shape are the red objects?"     the shape                 the scene's colour
count      "how many squares are there?"         "0" … "3" (0: absent)     the asked shape
exists     "is there a blue star?"               "yes" / "no"              the asked shape
=========  ====================================  ========================  ==================

Count and exists questions also ask about shapes (and pairs) that are not in the scene, so the answer
depends on reading the question, not only on its type. A seed-chosen set of (type, subject) combinations
never appears in ``"train"`` (e.g. colour questions about hexagons, while hexagons are still counted and
named in training); evaluation reports seen and held-out combinations separately. Every example is a pure
function of ``(seed, split, index)``, like the world it builds on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image

from clipforge.config import ConfigError
from clipforge.data.synthetic import COLOURS, COUNTS, SHAPES, SPLITS, Sample, SyntheticWorld, WorldConfig
from clipforge.vqa.compose import QuestionImageComposer

QUESTION_TYPES: tuple[str, ...] = ("colour", "shape", "count", "exists")
# The fixed answer vocabulary: its order is the classifier's output order.
ANSWERS: tuple[str, ...] = (*COLOURS, *SHAPES, "0", *(str(c) for c in COUNTS), "yes", "no")
COMBOS = ("all", "seen", "heldout")
_VQA_STREAM = 7  # the question's rng stream, distinct from the world's scene and caption streams


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class VQADataConfig:
    """What defines a synthetic VQA world; equal configs generate identical examples.

    Attributes:
        seed: Seeds the scenes, the questions and the held-out combinations.
        image_size: Side of the rendered scenes; ``None`` renders them at the composer's image region.
        max_objects: Most objects per scene (1 to 3).
        question_types: Which of ``QUESTION_TYPES`` to ask.
        heldout_per_type: Subjects per question type never asked about in ``"train"``.
        absent_fraction: Share of count and exists questions about a shape the scene does not hold.
    """

    seed: int = 0
    image_size: int | None = None
    max_objects: int = 3
    question_types: tuple[str, ...] = QUESTION_TYPES
    heldout_per_type: int = 2
    absent_fraction: float = 0.25

    def __post_init__(self) -> None:
        """Raises ``ConfigError`` naming the field (``data.<name>``) that is out of range."""
        if not _is_int(self.seed) or self.seed < 0:
            raise ConfigError(f"data.seed must be an integer >= 0, got {self.seed!r}")
        size = self.image_size
        if size is not None and (not _is_int(size) or not 16 <= size <= 1024):
            raise ConfigError(f"data.image_size must be an integer in 16..1024 or null (the composer's image "
                              f"region), got {size!r}")
        if not _is_int(self.max_objects) or not 1 <= self.max_objects <= max(COUNTS):
            raise ConfigError(f"data.max_objects must be in 1..{max(COUNTS)}, got {self.max_objects!r}")
        if not self.question_types or len(set(self.question_types)) != len(self.question_types) or any(
                t not in QUESTION_TYPES for t in self.question_types):
            raise ConfigError(f"data.question_types: expected distinct entries of {QUESTION_TYPES}, "
                              f"got {self.question_types!r}")
        if not _is_int(self.heldout_per_type) or not 0 <= self.heldout_per_type <= 2:
            raise ConfigError(f"data.heldout_per_type: expected 0, 1 or 2, got {self.heldout_per_type!r}")
        if not 0.0 <= self.absent_fraction <= 0.5:
            raise ConfigError(f"data.absent_fraction must be in [0, 0.5], got {self.absent_fraction!r}")

    def world_config(self, image_size: int) -> WorldConfig:
        """The scene world: every colour×shape pair in every split (held out here are question combinations)."""
        return WorldConfig(seed=self.seed, image_size=self.image_size or image_size, holdout_fraction=0.0,
                           max_objects=self.max_objects)


@dataclass(frozen=True)
class Question:
    """One question about a scene.

    Attributes:
        text: The question as rendered.
        kind: Its type, one of ``QUESTION_TYPES``.
        subject: What it names: a shape (colour, count, exists questions) or a colour (shape questions).
        answer: The correct answer, an entry of ``ANSWERS``.
    """

    text: str
    kind: str
    subject: str
    answer: str


@dataclass(frozen=True, eq=False)
class VQAExample:
    """A scene and a question about it.

    Attributes:
        image: The scene.
        question: The question, its type, subject and answer.
        heldout: Whether the (type, subject) combination is kept out of training.
        index: The scene's index in its split of the world.
    """

    image: Image.Image
    question: Question
    heldout: bool
    index: int


def _plural(noun: str) -> str:
    return noun + ("es" if noun.endswith(("s", "x", "sh", "ch")) else "s")


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def question_text(kind: str, subject: str, count: int = 1, colour: str | None = None) -> str:
    """The English wording of a question.

    Args:
        kind: One of ``QUESTION_TYPES``.
        subject: The shape asked about (colour, count, exists) or the colour (shape).
        count: Objects in the scene: colour and shape questions agree in number with it.
        colour: The colour an exists question names (required there).

    Raises:
        ValueError: An unknown type, or an exists question without a colour.
    """
    plural = count > 1
    if kind == "colour":
        return f"what colour are the {_plural(subject)}?" if plural else f"what colour is the {subject}?"
    if kind == "shape":
        return f"what shape are the {subject} objects?" if plural else f"what shape is the {subject} object?"
    if kind == "count":
        return f"how many {_plural(subject)} are there?"
    if kind == "exists":
        if colour is None:
            raise ValueError("an exists question names a colour")
        return f"is there {_article(colour)} {colour} {subject}?"
    raise ValueError(f"unknown question type {kind!r}; known: {QUESTION_TYPES}")


class SyntheticVQA:
    """Questions about ``SyntheticWorld`` scenes, with held-out (question type, subject) combinations.

    Args:
        config: The VQA world's definition.
        image_size: Scene side when ``config.image_size`` is ``None`` (the composer's image region).
    """

    def __init__(self, config: VQADataConfig = VQADataConfig(), image_size: int = 64):
        self.config = config
        self.world = SyntheticWorld(config.world_config(image_size))
        self.heldout: dict[str, tuple[str, ...]] = self._choose_heldout()

    def _choose_heldout(self) -> dict[str, tuple[str, ...]]:
        """Per question type, the subjects never asked about in training.

        The shape-subject types take disjoint slices of one shuffled shape list, so every shape is still
        asked about in training by the other types.
        """
        k = self.config.heldout_per_type
        rng = np.random.default_rng([self.config.seed, _VQA_STREAM, 0])
        shapes = [SHAPES[i] for i in rng.permutation(len(SHAPES))]
        colours = [COLOURS[i] for i in rng.permutation(len(COLOURS))]
        out, taken = {}, 0
        for kind in QUESTION_TYPES:
            if kind == "shape":
                out[kind] = tuple(sorted(colours[:k]))
            else:
                out[kind] = tuple(sorted(shapes[taken:taken + k]))
                taken += k
        return {kind: out[kind] for kind in self.config.question_types}

    def is_heldout(self, kind: str, subject: str) -> bool:
        """Whether questions of type ``kind`` about ``subject`` are kept out of training."""
        return subject in self.heldout.get(kind, ())

    def all_questions(self) -> list[str]:
        """Every question text this world can ask (e.g. to size the question band)."""
        texts = set()
        for kind in self.config.question_types:
            for subject in (COLOURS if kind == "shape" else SHAPES):
                for count in (1, 2):
                    colours = COLOURS if kind == "exists" else (None,)
                    texts.update(question_text(kind, subject, count, colour) for colour in colours)
        return sorted(texts)

    def question(self, attributes: dict[str, Any], rng: np.random.Generator, combos: str = "all",
                 kind: str | None = None) -> Question | None:
        """A question about a scene whose (type, subject) is in ``combos``; ``None`` if no type allows one.

        Args:
            attributes: The scene's ``shape``, ``colour`` and ``count``.
            rng: Source of every choice.
            combos: ``all``, ``seen`` (not held out: what ``"train"`` asks) or ``heldout``.
            kind: Ask this question type only; ``None`` tries the configured types in a random order.
        """
        if combos not in COMBOS:
            raise ValueError(f"combos must be one of {COMBOS}, got {combos!r}")

        def allowed(qtype: str, subject: str) -> bool:
            return combos == "all" or self.is_heldout(qtype, subject) == (combos == "heldout")

        shape, colour, count = attributes["shape"], attributes["colour"], attributes["count"]
        kinds = self.config.question_types if kind is None else (kind,)
        for k in rng.permutation(len(kinds)):  # the first type that can ask about this scene
            qtype = kinds[int(k)]
            if qtype in ("colour", "shape"):
                subject = shape if qtype == "colour" else colour
                if allowed(qtype, subject):
                    answer = colour if qtype == "colour" else shape
                    return Question(question_text(qtype, subject, count), qtype, subject, answer)
                continue
            if qtype == "count":  # about the scene's shape, or (absent_fraction of the time) another one
                present = rng.random() >= self.config.absent_fraction
                asked = self._pick(rng, [s for s in SHAPES if allowed(qtype, s) and (s == shape) == present])
                if asked is None:
                    continue
                answer = str(count) if present else "0"
                return Question(question_text(qtype, asked), qtype, asked, answer)
            # exists: half "yes"; a "no" names the scene's shape in another colour or (absent_fraction) another shape
            if rng.random() < 0.5:
                pair = (shape, colour) if allowed(qtype, shape) else None
            elif rng.random() >= self.config.absent_fraction:
                pair = (shape, self._pick(rng, [c for c in COLOURS if c != colour])) if allowed(qtype, shape) else None
            else:
                other = self._pick(rng, [s for s in SHAPES if s != shape and allowed(qtype, s)])
                pair = (other, self._pick(rng, COLOURS)) if other is not None else None
            if pair is None:
                continue
            answer = "yes" if pair == (shape, colour) else "no"
            return Question(question_text(qtype, pair[0], colour=pair[1]), qtype, pair[0], answer)
        return None

    @staticmethod
    def _pick(rng: np.random.Generator, options: Sequence[str]) -> str | None:
        return options[int(rng.integers(len(options)))] if options else None

    def example(self, split: str, index: int, combos: str = "all", kind: str | None = None,
                stream: int | None = None) -> VQAExample | None:
        """The question about scene ``index`` of ``split``, or ``None`` when ``combos`` (and ``kind``) allow none.

        Args:
            split: ``"train"``, ``"val"`` or ``"test"``.
            index: The scene's index in the world's split.
            combos: ``all``, ``seen`` or ``heldout``.
            kind: Ask this question type only.
            stream: Seeds the question's choices (default: ``index``); one stream tried on several scenes keeps
                its choices (e.g. "ask about an absent shape"), so the scene, not the question, is what varies.
        """
        if split not in SPLITS:
            raise ValueError(f"split must be one of {tuple(SPLITS)}, got {split!r}")
        sample: Sample = self.world.sample(split, index)
        key = index if stream is None else stream
        rng = np.random.default_rng([self.config.seed, SPLITS[split], key, _VQA_STREAM])
        question = self.question(sample.attributes, rng, combos, kind)
        if question is None:
            return None
        return VQAExample(sample.image, question, self.is_heldout(question.kind, question.subject), index)

    def dataset(self, split: str, size: int, composer: QuestionImageComposer,
                combos: Literal["all", "seen", "heldout"] | None = None) -> VQADataset:
        """``size`` composed examples of ``split``; ``combos`` defaults to ``seen`` for ``"train"``, else ``all``."""
        if combos is None:
            combos = "seen" if split == "train" else "all"
        if split == "train" and combos != "seen":
            raise ValueError("the train split asks only seen combinations (combos='seen')")
        return VQADataset(self, split, size, composer, combos)


class VQADataset(torch.utils.data.Dataset):
    """Item ``i``: ``(pixels uint8 (3, H, W), answer index, question type index, held out)``.

    Item ``i`` draws its question's choices from its own stream and asks about the first scene of ``i, i + size,
    i + 2·size, …`` that allows that question under ``combos``, so items never share a scene and the answer
    distribution does not depend on how rare a combination's scenes are. Outside ``"train"`` the question types
    take turns (item ``i`` asks type ``i mod n_types``), so every type is evaluated on as many items, held-out
    ones included; ``"train"`` asks whichever type comes first in a random order. Picklable for DataLoader
    workers.

    Args:
        vqa: The VQA world.
        split: ``"train"``, ``"val"`` or ``"test"``.
        size: Number of items.
        composer: Builds the model input.
        combos: ``all``, ``seen`` or ``heldout``.
    """

    def __init__(self, vqa: SyntheticVQA, split: str, size: int, composer: QuestionImageComposer, combos: str):
        if not _is_int(size) or size <= 0:
            raise ValueError(f"size must be a positive integer, got {size!r}")
        self.vqa, self.split, self.size, self.composer, self.combos = vqa, split, size, composer, combos

    def __len__(self) -> int:
        return self.size

    def example(self, i: int) -> VQAExample:
        """The (uncomposed) example behind item ``i``."""
        if not 0 <= i < self.size:
            raise IndexError(f"index {i} out of range for a dataset of {self.size}")
        kinds = self.vqa.config.question_types
        kind = None if self.split == "train" else kinds[i % len(kinds)]
        for attempt in range(1000):
            example = self.vqa.example(self.split, i + attempt * self.size, self.combos, kind, stream=i)
            if example is not None:
                return example
        raise ValueError(f"no {self.combos} question of type {kind or kinds} can be asked about the scenes of "
                         f"{self.split!r} tried for item {i}")

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int, bool]:
        example = self.example(i)
        q = example.question
        pixels = self.composer([example.image], [q.text])[0]
        return pixels, ANSWERS.index(q.answer), QUESTION_TYPES.index(q.kind), example.heldout
