"""FLYP's data ("fine-tune like you pre-train", Goyal et al. 2022, arXiv:2212.00638): a classification dataset
trained with the contrastive loss against its class prompts.

A labelled source (a class folder, a table's ``label_key`` column) becomes image–caption pairs: item ``i`` is
``(image, prompts)`` where ``prompts`` holds every template filled with the item's class name, one per line. The
batch builder (``clipforge.train.data.StepBatches``) then picks one line per sample with the rng seeded by
``(seed, position)``, exactly as it picks among a sample's several captions, so the caption of each position is
deterministic across builds and resumes.

Templates and class names are resolved here rather than in ``clipforge.data`` because the built-in template sets
live with evaluation (``clipforge.eval.prompts``), which ``data/`` does not import.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from clipforge.config import ConfigError
from clipforge.data.config import CaptionsFromLabels
from clipforge.data.decode import DEFAULT_LIMITS, BadSample
from clipforge.data.folders import ClassFolder
from clipforge.data.tables import TablePairs
from clipforge.eval.prompts import BUILTIN, TEMPLATE_SETS, fill, load_classnames, load_templates, read_lines

WHERE = "data.captions_from_labels"


def resolve_templates(templates: str | Sequence[str], where: str = WHERE) -> list[str]:
    """The templates ``CaptionsFromLabels.templates`` names: a built-in set, a file, or the list itself.

    Raises:
        ConfigError: an unknown set or missing file, a file that is not a list of templates, a template without
            ``{}``; naming ``data.captions_from_labels.templates``.
    """
    if not isinstance(templates, str):
        return list(templates)  # checked by CaptionsFromLabels
    if templates not in TEMPLATE_SETS and not Path(templates).is_file():
        raise ConfigError(f"{where}.templates: unknown template set {templates!r} and no such file (built-in sets: "
                          f"{', '.join(TEMPLATE_SETS)}; or a .txt / .json file, or a list)")
    try:
        loaded = load_templates(templates)
    except (OSError, ValueError) as e:
        raise ConfigError(f"{where}.templates: {e}") from None
    bad = [t for t in loaded if "\n" in t or "\r" in t]
    if bad:
        raise ConfigError(f"{where}.templates: a template is one line, got {bad[0]!r}")
    return loaded


def resolve_classnames(classnames: str | Sequence[str] | None, where: str = WHERE) -> list[str] | None:
    """The names ``CaptionsFromLabels.classnames`` gives (a list, a file or a built-in set), or ``None``.

    Raises:
        ConfigError: a missing or unreadable file, naming ``data.captions_from_labels.classnames``.
    """
    if classnames is None or not isinstance(classnames, str):
        return None if classnames is None else list(classnames)
    try:
        names = load_classnames(classnames) if classnames in BUILTIN else read_lines(classnames, "class names")
    except (OSError, ValueError) as e:
        raise ConfigError(f"{where}.classnames: {e}") from None
    return [n.replace("\n", " ").strip() for n in names]


class ClassPrompts(torch.utils.data.Dataset):
    """Item ``i`` is ``(image, prompts)``: the labelled source's image and every template filled with its class name,
    one per line (the batch builder picks one per sample); a bad image or empty label raises ``BadSample``.

    Args:
        source: A ``ClassFolder`` (items ``(image, class index)``) or a ``TablePairs`` read on its label column
            (items ``(image, label cell)``: a class index or a class name).
        labels: Each label value (a table cell, stripped) → class index; ``None``: the items carry indices.
        classnames: The name of each class, in class order.
        templates: Prompt templates holding ``{}`` (or ``{c}``).
        as_labels: Items are ``(image, str(class index))`` instead (a ``classifier`` run's labels).
    """

    def __init__(self, source: Any, labels: dict[str, int] | None, classnames: Sequence[str],
                 templates: Sequence[str], as_labels: bool = False):
        self.source, self.labels = source, labels
        self.classnames, self.templates = list(classnames), list(templates)
        self.limits = getattr(source, "limits", DEFAULT_LIMITS)
        if as_labels:  # a classifier run (``clipforge.train.classify``): the "caption" is the class index
            self.prompts = [str(k) for k in range(len(self.classnames))]
        else:
            self.prompts = ["\n".join(fill(t, name) for t in self.templates) for name in self.classnames]

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> tuple[Image.Image, str]:
        image, label = self.source[i]
        return image, self.prompts[self.label(label, i)]

    def label(self, value: Any, i: int) -> int:
        """The class index of item ``i``'s label ``value``."""
        if self.labels is None:
            return int(value)
        key = (value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)).strip()
        if not key:
            raise BadSample("no_caption", f"row {i}: no label")
        return self.labels[key]


def class_prompts(spec: CaptionsFromLabels | Any, source: ClassFolder | TablePairs, path: str = "",
                  where: str = WHERE, as_labels: bool = False) -> ClassPrompts:
    """``source`` (a class folder, or a table read on its label column) with class prompts as its captions.

    Class names default to a folder's sub-folder names with underscores as spaces, or a table's distinct label
    names (sorted). A table whose labels are all indices needs ``classnames``.

    Args:
        spec: The templates and class names (``data.captions_from_labels``).
        source: The labelled reader ``clipforge.data.build_source`` gave.
        path: The data's path, for messages.
        where: The config section named in messages (``data.captions_from_labels`` or ``classifier``).
        as_labels: Items carry the class index as text instead of the prompts (a ``classifier`` run).

    Raises:
        ConfigError: bad templates or class names (:func:`resolve_templates`, :func:`resolve_classnames`), or
            class names that do not fit the classes (their count, a label beyond them); naming the field.
    """
    templates = resolve_templates(spec.templates, where)
    given = resolve_classnames(spec.classnames, where)
    if isinstance(source, ClassFolder):
        classes = [c.replace("_", " ") for c in source.classes]
        if given is not None and len(given) != len(classes):
            raise ConfigError(f"{where}.classnames: {len(given)} name(s) for {len(classes)} class folder(s) in "
                              f"{path} ({', '.join(source.classes[:5])}{', …' if len(classes) > 5 else ''})")
        return ClassPrompts(source, None, given or classes, templates, as_labels)
    values = sorted({str(v.decode("utf-8", "replace") if isinstance(v, bytes) else v).strip()
                     for _, v in source.rows if v is not None} - {""})
    if not values:
        raise ConfigError(f"data.label_key: {path} has no labels in its label column")
    if all(v.lstrip("-").isdigit() for v in values):
        indices = sorted(int(v) for v in values)
        if given is None:
            raise ConfigError(f"{where}.classnames: the labels in {path} are class indices "
                              f"({indices[0]}..{indices[-1]}); name the classes (a list or a file)")
        if indices[0] < 0 or indices[-1] >= len(given):
            raise ConfigError(f"{where}.classnames: {len(given)} name(s), but {path} has labels "
                              f"{indices[0]}..{indices[-1]}")
        return ClassPrompts(source, {v: int(v) for v in values}, given, templates, as_labels)
    if given is not None and len(given) != len(values):
        raise ConfigError(f"{where}.classnames: {len(given)} name(s) for {len(values)} distinct label(s) in "
                          f"{path} (sorted: {', '.join(values[:5])}{', …' if len(values) > 5 else ''})")
    return ClassPrompts(source, {v: k for k, v in enumerate(values)}, given or values, templates, as_labels)


def write_synthetic_class_folders(root: str | Path, size: int = 500, task: str = "composition", seed: int = 0,
                                  image_size: int = 64, language: str = "en") -> dict[str, int]:
    """A FLYP example without user data: one synthetic zero-shot task written as class folders.

    Writes ``root/train/<class>/<i>.png`` from the world's ``val`` split and ``root/test/<class>/<i>.png`` from
    its ``test`` split (class names with spaces as underscores), and ``root/templates.txt`` (the task's templates in
    ``language``). The ``composition`` task's classes are the colour × shape pairs held out of pre-training.

    Args:
        root: The output folder.
        size: Images per split.
        task: ``shape``, ``colour``, ``count`` or ``composition``.
        seed: The world's seed (the quickstart's: 0).
        image_size: The side images are drawn at (the quickstart model's: 64).
        language: The class names' and templates' language (``en``, ``ru``, ``ja``, ...: the world's).

    Returns:
        Images written per split.
    """
    from clipforge.data.config import SyntheticDataConfig
    from clipforge.data.synthetic import SyntheticWorld

    root = Path(root)
    world = SyntheticWorld(SyntheticDataConfig(seed=seed).world_config(image_size))
    written = {}
    for split, folder in (("val", "train"), ("test", "test")):
        tasks = {t.name: t for t in world.zeroshot_tasks(size, language=language, split=split)}
        if task not in tasks:
            raise ValueError(f"task must be one of {sorted(tasks)}, got {task!r}")
        chosen = tasks[task]
        for name in chosen.classnames:  # every class in both splits (a small split may draw none of one)
            (root / folder / name.replace(" ", "_")).mkdir(parents=True, exist_ok=True)
        for i, (image, label) in enumerate(zip(chosen.images, chosen.labels, strict=True)):
            out = root / folder / chosen.classnames[label].replace(" ", "_")
            out.mkdir(parents=True, exist_ok=True)
            image.save(out / f"{i:05d}.png")
        written[folder] = len(chosen.images)
        (root / "templates.txt").write_text("\n".join(chosen.templates) + "\n", encoding="utf-8")
    return written

