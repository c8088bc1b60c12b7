"""Typographic attacks (Goh et al. 2021, "Multimodal Neurons in Artificial Neural Networks"): write a word on an image.

CLIP reads: an apple with a paper label "iPod" is classified as an iPod. This module writes a label word onto every
image of a classification set (a box of ``box_colour`` with the word in ``text_colour``, drawn with CLIPPO's Unifont
renderer or a PIL font) and measures zero-shot accuracy on the clean and the attacked images in one streamed pass,
and how often the attacked image is classified as the word written on it.

The word written on each image (:attr:`TypographicAttack.word`):

- ``other``: the name of a class other than the true one, drawn uniformly by a seeded generator;
- ``own``: the true class's own name (a control: writing the right answer should not hurt);
- any other string: that word on every image (``iPod``). A word that is not one of the classes is added to the
  label set as an extra class, for the clean and the attacked images alike, as the CLIP paper's iPod example does.

Everything random (the other class, a ``random`` position) comes from a generator seeded by ``(seed, image index)``,
so a result does not depend on the batch size. The synthetic world's zero-shot tasks can be attacked without any
user data: :func:`open_synthetic` (``--data synthetic:shape`` on the command line).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageColor, ImageDraw, ImageFont
from tqdm.auto import tqdm

from clipforge.eval.adapter import EvalModel
from clipforge.eval.datasets import EvalDataset, Sample
from clipforge.eval.zeroshot import ClassificationMeter, build_classifier

POSITIONS = ("center", "top", "bottom", "random")
WORD_MODES = ("other", "own")  # any other word is written as given
FONTS = ("unifont", "pil")  # or a path to a font file PIL reads (.ttf, .otf, .pil, ...)
PAD = 0.12  # the box's margin around the text, as a fraction of the box height
SYNTHETIC_PREFIX = "synthetic:"
Colour = tuple[int, int, int]


def parse_colour(value: str | Sequence[int] | None, name: str) -> Colour | None:
    """A colour name (``white``), ``#rrggbb`` or an RGB triple as ``(r, g, b)``; ``none`` (or ``None``) is no colour.

    Raises:
        ValueError: naming ``name`` when the colour is not one PIL knows.
    """
    if value is None or (isinstance(value, str) and value.strip().lower() == "none"):
        return None
    if isinstance(value, str):
        try:
            rgb = ImageColor.getrgb(value.strip())
        except ValueError:
            raise ValueError(f"{name}: unknown colour {value!r} (a name such as white, #rrggbb, or none)") from None
        return (int(rgb[0]), int(rgb[1]), int(rgb[2]))
    values = [int(v) for v in value]
    if len(values) != 3 or not all(0 <= v <= 255 for v in values):
        raise ValueError(f"{name}: expected three integers in 0..255, got {list(value)}")
    return (values[0], values[1], values[2])


@dataclass(frozen=True)
class TypographicAttack:
    """What is written, where and how.

    Attributes:
        word: ``other`` (another class's name per image), ``own`` (the true class's name) or a fixed word.
        position: ``center``, ``top``, ``bottom`` (horizontally centred) or ``random`` (anywhere it fits).
        size: The box's height as a fraction of the image's height, in (0, 1]; a word too long to fit across the
            image is drawn smaller.
        text_colour: RGB of the letters.
        box_colour: RGB of the box behind them (a paper label), or ``None`` for letters alone.
        font: ``unifont`` (CLIPPO's renderer, ``clipforge.text``), ``pil`` (PIL's default font) or a font file.
        seed: Seed of the other-class draw and of random positions.

    Raises:
        ValueError: naming the field when a value is out of range or the font file does not exist.
    """

    word: str = "other"
    position: str = "center"
    size: float = 0.25
    text_colour: Colour = (0, 0, 0)
    box_colour: Colour | None = (255, 255, 255)
    font: str = "unifont"
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.word, str) or not self.word.strip():
            raise ValueError(f"word: expected other, own or a word to write, got {self.word!r}")
        if self.position not in POSITIONS:
            raise ValueError(f"position: expected one of {', '.join(POSITIONS)}, got {self.position!r}")
        if isinstance(self.size, bool) or not isinstance(self.size, (int, float)) or not 0 < self.size <= 1:
            raise ValueError(f"size: expected a fraction of the image height in (0, 1], got {self.size!r}")
        for name in ("text_colour", "box_colour"):  # frozen: normalised once, here
            object.__setattr__(self, name, parse_colour(getattr(self, name), name))
        if self.text_colour is None:
            raise ValueError("text_colour: the letters need a colour")
        if self.font not in FONTS and not Path(self.font).is_file():
            raise ValueError(f"font: {self.font!r} is neither one of {', '.join(FONTS)} nor an existing font file")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed: expected an integer ≥ 0, got {self.seed!r}")

    def to_dict(self) -> dict[str, Any]:
        """The options as JSON-ready values (colours as lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


# --- drawing ------------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def _unifont_renderer(width: int) -> Any:
    from clipforge.text.render import RenderConfig, UnifontRenderer

    # Improved mode keeps case (lower=False) and never wraps a word narrower than the canvas; ink 255 on 0 is a mask.
    return UnifontRenderer(RenderConfig(image_size=width, mode="improved", lower=False, background=0, ink=255))


@functools.lru_cache(maxsize=16)
def _pil_font(font: str, px: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    if font == "pil":
        return ImageFont.load_default(size=px)
    try:
        return ImageFont.truetype(font, size=px)
    except OSError:
        try:
            return ImageFont.load(font)  # a bitmap .pil font has one size
        except OSError as e:
            raise ValueError(f"font: {font} is not a font file PIL can read ({e})") from None


def _ink_crop(mask: np.ndarray, word: str) -> np.ndarray:
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not len(rows):
        raise ValueError(f"word: {word!r} draws no visible letters")
    return mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]


@functools.lru_cache(maxsize=1024)
def word_mask(word: str, font: str = "unifont", height: int = 32) -> np.ndarray:
    """The word's letters as a uint8 (h, w) coverage mask (255 = ink), cropped to the ink, about ``height`` high.

    Unifont masks are the 16-pixel glyphs scaled with nearest-neighbour sampling (crisp pixels); PIL fonts are drawn
    large and area-averaged down to ``height`` (anti-aliased letters).
    """
    if font == "unifont":
        renderer = _unifont_renderer(256 * -(-(17 * len(word) + 16) // 256))  # wide enough for one row
        mask = _ink_crop(renderer.render(word)[0, :16, :, 0], word)
        resample = Image.Resampling.NEAREST
    else:
        face = _pil_font(font, max(32, 2 * height))  # drawn large, then area-averaged down: cleaner small letters
        left, top, right, bottom = face.getbbox(word)
        canvas = Image.new("L", (max(1, int(right - left) + 2), max(1, int(bottom - top) + 2)), 0)
        ImageDraw.Draw(canvas).text((-left + 1, -top + 1), word, fill=255, font=face)
        mask = _ink_crop(np.asarray(canvas), word)
        resample = Image.Resampling.BOX
    h, w = mask.shape
    width = max(1, round(w * height / h))
    return np.asarray(Image.fromarray(mask).resize((width, height), resample))


def label_box(image_size: tuple[int, int], word: str, attack: TypographicAttack,
              rng: np.random.Generator | None = None) -> tuple[tuple[int, int, int, int], np.ndarray]:
    """Where the label goes on an image of ``(width, height)``: the box ``(x0, y0, x1, y1)`` and the text mask.

    Raises:
        ValueError: ``position`` is ``random`` and no ``rng`` is given.
    """
    width, height = image_size
    box_h = max(3, round(attack.size * height))
    pad = max(1, round(PAD * box_h))
    text_h = max(1, box_h - 2 * pad)
    mask = word_mask(word, attack.font, text_h)
    room = max(1, width - 2 * pad)
    if mask.shape[1] > room:  # too long to fit across: smaller letters, same proportions
        text_h = max(1, int(text_h * room / mask.shape[1]))
        mask = word_mask(word, attack.font, text_h)[:, :room]
    box_w, box_h = min(width, mask.shape[1] + 2 * pad), min(height, mask.shape[0] + 2 * pad)
    if attack.position == "random":
        if rng is None:
            raise ValueError("position: random needs a random generator")
        x0, y0 = int(rng.integers(0, width - box_w + 1)), int(rng.integers(0, height - box_h + 1))
    else:
        x0 = (width - box_w) // 2
        y0 = {"center": (height - box_h) // 2, "top": min(pad, height - box_h),
              "bottom": max(0, height - box_h - pad)}[attack.position]
    return (x0, y0, x0 + box_w, y0 + box_h), mask


def write_word(image: Image.Image, word: str, attack: TypographicAttack,
               rng: np.random.Generator | None = None) -> Image.Image:
    """A copy of ``image`` (as RGB) with ``word`` written on it; only the pixels of :func:`label_box`'s box change."""
    image = image.convert("RGB")
    (x0, y0, x1, y1), mask = label_box(image.size, word, attack, rng)
    pixels = np.array(image)
    box = pixels[y0:y1, x0:x1].astype(np.float32)  # (h, w, 3)
    if attack.box_colour is not None:
        box[:] = attack.box_colour
    pad_y, pad_x = (box.shape[0] - mask.shape[0]) // 2, (box.shape[1] - mask.shape[1]) // 2
    mh, mw = min(mask.shape[0], box.shape[0]), min(mask.shape[1], box.shape[1])
    alpha = mask[:mh, :mw, None].astype(np.float32) / 255.0
    region = box[pad_y:pad_y + mh, pad_x:pad_x + mw]
    region[:] = region * (1 - alpha) + np.asarray(attack.text_colour, dtype=np.float32) * alpha
    pixels[y0:y1, x0:x1] = np.rint(box).astype(np.uint8)
    return Image.fromarray(pixels)


# --- which word ---------------------------------------------------------------------------------------------------


def label_set(classnames: Sequence[str], word: str) -> tuple[list[str], int | None]:
    """The classes scored and the index of a fixed word (``None`` for ``other``/``own``).

    A fixed word that matches a class name (ignoring case) is that class; any other word is appended as an extra class.
    """
    names = list(classnames)
    if word in WORD_MODES:
        return names, None
    folded = [c.casefold() for c in names]
    if word.strip().casefold() in folded:
        return names, folded.index(word.strip().casefold())
    return [*names, word.strip()], len(names)


def choose_word(label: int, classnames: Sequence[str], word: str, fixed: int | None,
                rng: np.random.Generator) -> tuple[str, int]:
    """The word written on an image of class ``label`` and its index in the label set.

    Raises:
        ValueError: ``other`` with fewer than two classes.
    """
    if word == "own":
        return classnames[label], label
    if word == "other":
        if len(classnames) < 2:
            raise ValueError("word: 'other' needs at least two classes")
        j = int(rng.integers(len(classnames) - 1))
        j += j >= label  # uniform over the classes but the true one
        return classnames[j], j
    assert fixed is not None
    return word.strip(), fixed


def image_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of image ``index``: the same draws whatever the batch size."""
    return np.random.default_rng([seed, index])


# --- evaluation ---------------------------------------------------------------------------------------------------


@dataclass
class Example:
    """One clean/attacked pair for the picture: thumbnails, the true class, the word and both predictions."""

    clean: Image.Image
    attacked: Image.Image
    label: int
    word: int
    clean_pred: int = -1
    attacked_pred: int = -1


@dataclass
class TypographicResult:
    """Metrics (clean, attacked, attack success), confusion matrices, the label set and what was evaluated."""

    metrics: dict[str, float | None]
    classes: list[str]
    extra_class: str | None
    clean_confusion: np.ndarray
    attacked_confusion: np.ndarray
    n_samples: int
    skipped: list[tuple[str, str]]
    examples: list[Example] = field(default_factory=list)


def evaluate_typographic(model: EvalModel, dataset: EvalDataset | Iterable[Sample], classnames: Sequence[str],
                         templates: Sequence[str], attack: TypographicAttack, batch_size: int = 64,
                         cache_dir: str | Path | None = None, use_cache: bool = True, progress: bool = False,
                         n_examples: int = 8) -> TypographicResult:
    """Zero-shot accuracy of a labelled dataset clean and with a word written on every image, in one streamed pass.

    Metrics: ``clean_*`` and ``attacked_*`` (``acc1``, ``acc5``, ``mean_per_class_recall`` over the label set, extra
    class included), ``attack_success`` (the share of attacked images classified as the word written on them),
    ``clean_as_word`` (the share of clean images classified as that word: the attack's baseline) and ``acc1_drop``.

    Args:
        model: The model.
        dataset: Yields :class:`~clipforge.eval.datasets.Sample` with labels (indices into ``classnames``).
        classnames: One name per class.
        templates: Prompt templates.
        attack: What to write and how.
        batch_size: Images per batch (each batch embeds its clean and attacked images).
        cache_dir: Classifier cache (see :func:`~clipforge.eval.zeroshot.build_classifier`).
        use_cache: Use the classifier cache.
        progress: Show progress bars.
        n_examples: Clean/attacked pairs kept for :func:`plot_examples` (the first ones).

    Raises:
        ValueError: a label outside the classes, no image could be read, or ``other`` with one class.
    """
    classes, fixed = label_set(classnames, attack.word)
    if attack.word == "other" and len(classnames) < 2:
        raise ValueError("word: 'other' needs at least two classes")
    weights = build_classifier(model, classes, templates, cache_dir, use_cache, progress=progress)
    clean_meter, attacked_meter = ClassificationMeter(len(classes)), ClassificationMeter(len(classes))
    fooled = as_word = 0
    examples: list[Example] = []
    for clean, attacked, labels, words, kept in tqdm(
            _attacked_batches(dataset, model, classnames, attack, fixed, batch_size, n_examples),
            desc="typographic", unit="batch", disable=not progress):
        clean_logits = model.encode_images(clean) @ weights  # (B, C)
        attacked_logits = model.encode_images(attacked) @ weights
        clean_meter.update(clean_logits, labels)
        attacked_meter.update(attacked_logits, labels)
        fooled += int((attacked_logits.argmax(1) == words).sum())
        as_word += int((clean_logits.argmax(1) == words).sum())
        for j, example in kept:
            example.clean_pred, example.attacked_pred = int(clean_logits[j].argmax()), int(attacked_logits[j].argmax())
            examples.append(example)
    skipped = list(getattr(dataset, "skipped", []))
    n = clean_meter.n
    if n == 0:
        raise ValueError(f"no images could be read ({len(skipped)} skipped)")
    clean_m, attacked_m = clean_meter.metrics(), attacked_meter.metrics()
    metrics: dict[str, float | None] = {f"clean_{k}": v for k, v in clean_m.items()}
    metrics.update({f"attacked_{k}": v for k, v in attacked_m.items()})
    metrics["attack_success"] = fooled / n
    metrics["clean_as_word"] = as_word / n
    metrics["acc1_drop"] = float(clean_m["acc1"] or 0) - float(attacked_m["acc1"] or 0)
    extra = classes[fixed] if fixed is not None and fixed == len(classnames) else None
    return TypographicResult(metrics, classes, extra, clean_meter.confusion, attacked_meter.confusion, n, skipped,
                             examples)


def _attacked_batches(dataset: Iterable[Sample], model: EvalModel, classnames: Sequence[str],
                      attack: TypographicAttack, fixed: int | None, batch_size: int, n_examples: int
                      ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                      list[tuple[int, Example]]]]:
    """(clean (B, 3, H, W), attacked (B, 3, H, W), labels (B,), written-word indices (B,), kept examples)."""
    clean: list[torch.Tensor] = []
    attacked: list[torch.Tensor] = []
    labels: list[int] = []
    words: list[int] = []
    kept: list[tuple[int, Example]] = []
    n_kept = 0

    def batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, list[tuple[int, Example]]]:
        return (torch.stack(clean), torch.stack(attacked), torch.tensor(labels, dtype=torch.long),
                torch.tensor(words, dtype=torch.long), kept)

    for index, sample in enumerate(dataset):
        if sample.label is None:
            raise ValueError(f"{sample.source}: no class label (is this a captioned retrieval dataset?)")
        if not 0 <= sample.label < len(classnames):
            raise ValueError(f"{sample.source}: label {sample.label} outside the {len(classnames)} class names")
        rng = image_rng(attack.seed, index)
        text, word = choose_word(sample.label, classnames, attack.word, fixed, rng)
        written = write_word(sample.image, text, attack, rng)
        if n_kept < n_examples:
            kept.append((len(clean), Example(_thumb(sample.image), _thumb(written), sample.label, word)))
            n_kept += 1
        clean.append(model.transform(sample.image))
        attacked.append(model.transform(written))
        labels.append(sample.label)
        words.append(word)
        if len(clean) == batch_size:
            yield batch()
            clean, attacked, labels, words, kept = [], [], [], [], []
    if clean:
        yield batch()


def _thumb(image: Image.Image, side: int = 224) -> Image.Image:
    image = image.convert("RGB")
    if max(image.size) > side:
        image = image.copy()
        image.thumbnail((side, side))
    return image


def plot_examples(examples: Sequence[Example], classes: Sequence[str], path: str | Path, title: str = "") -> Path:
    """Saves clean (top row) and attacked (bottom row) images with their predictions as a PNG.

    A prediction is green when right and red when wrong; an attacked image classified as the word written on it (not
    its own class) says so.
    """
    from matplotlib.figure import Figure

    if not examples:
        raise ValueError("no examples to plot")
    n = len(examples)
    fig = Figure(figsize=(2.0 * n, 5.4))
    axes = fig.subplots(2, n, squeeze=False)
    for col, ex in enumerate(examples):
        for row, (image, pred, caption) in enumerate(((ex.clean, ex.clean_pred, f"true: {classes[ex.label]}"),
                                                      (ex.attacked, ex.attacked_pred, f"wrote: {classes[ex.word]}"))):
            ax = axes[row][col]
            ax.imshow(np.asarray(image), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            colour = "tab:green" if pred == ex.label else "tab:red"
            read = " (the word)" if row == 1 and pred == ex.word != ex.label else ""
            ax.set_title(f"{caption}\npred: {classes[pred]}{read}", fontsize=8, color=colour)
    axes[0][0].set_ylabel("clean")
    axes[1][0].set_ylabel("attacked")
    fig.suptitle(title or "typographic attack", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def typographic_record(result: TypographicResult, dataset: str, model: str, pretrained: str,
                       attack: TypographicAttack, language: str = "en",
                       extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The result as a CLIP_benchmark-style record (``clipforge.eval.results``): task ``zeroshot_classification``
    with ``attack`` (the options), ``classes`` (the label set) and ``extra_class`` (the added word, if any)."""
    from clipforge.eval.results import result_record

    more = {"attack": {"kind": "typographic", **attack.to_dict()}, "classes": result.classes,
            "extra_class": result.extra_class, **(extra or {})}
    return result_record(dataset, model, pretrained, "zeroshot_classification", result.metrics, language,
                         result.n_samples, result.skipped, extra=more)


# --- the synthetic world ------------------------------------------------------------------------------------------


class SyntheticTask(EvalDataset):
    """One of the synthetic world's zero-shot tasks (``shape``, ``colour``, ``count``, ``composition``) as a dataset.

    Args:
        task: The task's name.
        size: Images (the world's ``zeroshot_tasks(size)``).
        seed: The world's seed (the quickstart's: 0).
        image_size: The side the scenes are drawn at (the model's input size).
        language: Class names' and templates' language.
        split: ``test`` or ``val``.

    Raises:
        ValueError: an unknown task (the message lists the tasks).
    """

    def __init__(self, task: str = "shape", size: int = 500, seed: int = 0, image_size: int = 64,
                 language: str = "en", split: str = "test"):
        from clipforge.data.config import SyntheticDataConfig
        from clipforge.data.synthetic import SyntheticWorld

        super().__init__()
        world = SyntheticWorld(SyntheticDataConfig(seed=seed).world_config(image_size))
        tasks = {t.name: t for t in world.zeroshot_tasks(size, language=language, split=split)}
        if task not in tasks:
            raise ValueError(f"--data: synthetic task must be one of {', '.join(sorted(tasks))}, got {task!r}")
        self.task_data = tasks[task]
        self.name = task
        self.classes = list(self.task_data.classnames)
        self.templates = list(self.task_data.templates)

    def __iter__(self) -> Iterator[Sample]:
        for i, (image, label) in enumerate(zip(self.task_data.images, self.task_data.labels, strict=True)):
            yield Sample(image, label=label, source=f"synthetic:{self.name}:{self.task_data.split}:{i}")


def open_synthetic(spec: str, image_size: int, size: int = 500, seed: int = 0, language: str = "en",
                   split: str = "test") -> SyntheticTask:
    """``synthetic:TASK`` (``synthetic:shape``) opened as a :class:`SyntheticTask` drawn at ``image_size``.

    Raises:
        ValueError: ``spec`` does not start with ``synthetic:`` or names an unknown task.
    """
    if not spec.startswith(SYNTHETIC_PREFIX):
        raise ValueError(f"--data: expected synthetic:TASK, got {spec!r}")
    return SyntheticTask(spec[len(SYNTHETIC_PREFIX):] or "shape", size, seed, image_size, language, split)


__all__ = ["FONTS", "POSITIONS", "WORD_MODES", "Example", "SyntheticTask", "TypographicAttack", "TypographicResult",
           "choose_word", "evaluate_typographic", "image_rng", "label_box", "label_set", "open_synthetic",
           "parse_colour", "plot_examples", "typographic_record", "word_mask", "write_word"]
