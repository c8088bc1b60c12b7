"""Evaluations on real data during training: ``eval.sets``, each a zero-shot or retrieval task on a dataset.

A set's data is anything ``clipforge eval`` reads (an image folder, a CSV/TSV/parquet table, a CLIP_benchmark
webdataset folder), opened with ``clipforge.eval.tasks`` and scored by ``clipforge.eval``'s own functions
(``evaluate_zeroshot``, ``evaluate_retrieval``), so a logged value is what ``clipforge eval`` reports for the model
at that step. Metrics are logged as ``<name>/<metric>`` with ``clipforge eval``'s metric names: ``pets/acc1``,
``pets/acc5`` (five classes or more), ``pets/mean_per_class_recall``; ``flickr/image_retrieval_recall@1``,
``flickr/text_retrieval_recall@1``, ... . ``prepare`` opens every set (``check_eval_sets``) before any step, so a
missing folder or a class-count mismatch is a ``ConfigError`` naming the field (``eval.sets[0].data``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from clipforge.config import ConfigError

RESERVED_NAMES = ("zeroshot", "retrieval", "loss", "lr")  # prefixes of the synthetic world's and the loop's metrics
HEADLINE = {"zeroshot": "acc1", "retrieval": "image_retrieval_recall@1"}


@dataclass(frozen=True)
class EvalSetConfig:
    """One evaluation on real data, run every ``every`` steps and at the end.

    Attributes:
        name: Prefix of its metrics (``<name>/acc1``); letters, digits, ``-``, ``_`` and ``.``.
        task: ``zeroshot`` (classification by class prompts) or ``retrieval`` (image↔caption Recall@K).
        data: An image folder (one sub-folder per class), a table (CSV/TSV/parquet) or a CLIP_benchmark webdataset
            folder, as ``clipforge eval --data`` takes it.
        classnames: Zero-shot: a built-in set (``imagenet``, ``cifar10``, ``cifar100``) or a ``.txt``/``.json`` file;
            default: the dataset's (an image folder's sub-folder names).
        templates: Zero-shot: a built-in set (``imagenet``, ``cifar10``, ``cifar100``, ``siglip``) or a file;
            default: the dataset's, else ``imagenet``.
        every: Evaluate every this many steps (and at the end); ``None``: ``eval.every``; 0: at the end only.
        split: Shard sub-folder of a webdataset ``data``.
        image_key: Table column of image paths.
        label_key: Table column of labels (zero-shot; default ``label``).
        caption_key: Table column of captions (retrieval).
        image_root: Folder a table's relative image paths start from (default: the table's folder).
        alpha: Transparent images: ``white`` (composite) or ``drop`` (OpenAI's ``convert("RGB")``).
        batch_size: Images per evaluation batch.
        recall_k: Retrieval: the K of Recall@K.
        head: Zero-shot: score with a ``classifier`` run's trained head (``model.classifier``) instead of class
            prompts; the set's classes must be the head's, in its order.
    """

    name: str
    task: Literal["zeroshot", "retrieval"]
    data: str
    classnames: str | None = None
    templates: str | None = None
    every: int | None = None
    split: str = "test"
    image_key: str = "filepath"
    label_key: str | None = None
    caption_key: str = "caption"
    image_root: str | None = None
    alpha: Literal["white", "drop"] = "white"
    batch_size: int = 64
    recall_k: tuple[int, ...] = (1, 5, 10)
    head: bool = False

    def __post_init__(self) -> None:
        if not self.name or not all(c.isalnum() or c in "-_." for c in self.name):
            raise ConfigError(f"eval.sets: name must be letters, digits, '-', '_' or '.', got {self.name!r}")
        if self.name in RESERVED_NAMES:
            raise ConfigError(f"eval.sets: name {self.name!r} is taken by the run's own metrics; choose another")
        if self.every is not None and self.every < 0:
            raise ConfigError(f"eval.sets ({self.name}): every must be >= 0 or null, got {self.every}")
        if self.batch_size <= 0 or not self.recall_k or min(self.recall_k) < 1:
            raise ConfigError(f"eval.sets ({self.name}): batch_size > 0 and recall_k of integers >= 1 needed")
        if self.task == "retrieval" and (self.classnames or self.templates):
            raise ConfigError(f"eval.sets ({self.name}): classnames and templates are for task zeroshot, not retrieval")
        if self.head and self.task != "zeroshot":
            raise ConfigError(f"eval.sets ({self.name}): head scores class labels: it needs task zeroshot")


def check_set_names(sets: Sequence[EvalSetConfig]) -> None:
    """Raises ``ConfigError`` when two sets share a name (their metrics would mix)."""
    names = [s.name for s in sets]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise ConfigError(f"eval.sets[{i}].name: {name!r} names another set too; names must be unique")


@dataclass
class OpenedSet:
    """A set's dataset, opened, with its zero-shot class names and templates (``None`` for retrieval)."""

    config: EvalSetConfig
    dataset: Any
    classnames: list[str] | None = None
    templates: list[str] | None = None


def open_eval_set(config: EvalSetConfig, where: str) -> OpenedSet:
    """Opens a set's data (and its class names and templates) as ``clipforge eval`` would.

    Args:
        config: The set.
        where: Its place in the config, for messages (``eval.sets[0]``).

    Raises:
        ConfigError: naming the field: ``<where>.classnames`` / ``.templates`` (an unknown set or unreadable file),
            ``<where>.data`` (missing, unreadable, without the labels or captions the task needs), or
            ``<where>.classnames`` when their count differs from the dataset's classes.
    """
    from clipforge.eval.tasks import load_classnames, load_templates, open_task_data, zeroshot_labels

    def field_error(name: str, e: Exception) -> ConfigError:
        return ConfigError(f"{where}.{name}: {e}")

    classnames = templates = None
    try:
        classnames = load_classnames(config.classnames) if config.classnames else None
    except (OSError, ValueError) as e:
        raise field_error("classnames", e) from None
    try:
        templates = load_templates(config.templates) if config.templates else None
    except (OSError, ValueError) as e:
        raise field_error("templates", e) from None
    try:
        dataset = open_task_data(config.data, config.task, image_key=config.image_key, label_key=config.label_key,
                                 caption_key=config.caption_key, classes=classnames, split=config.split,
                                 image_root=config.image_root, alpha=config.alpha)
    except (OSError, ValueError) as e:
        raise field_error("data", e) from None
    if config.task == "retrieval":
        return OpenedSet(config, dataset)
    try:
        classnames, templates = zeroshot_labels(dataset, config.data, classnames, templates)
    except ValueError as e:
        raise field_error("classnames", e) from None
    return OpenedSet(config, dataset, classnames, templates)


def check_eval_sets(sets: Sequence[EvalSetConfig]) -> list[OpenedSet]:
    """Opens every set (``open_eval_set``), in order; ``prepare`` calls it before any step.

    Raises:
        ConfigError: naming the first bad set's field (``eval.sets[i].data``, ...).
    """
    check_set_names(sets)
    return [open_eval_set(s, f"eval.sets[{i}]") for i, s in enumerate(sets)]


def set_due(config: EvalSetConfig, default_every: int, step: int, steps: int) -> bool:
    """Whether the set evaluates after ``step`` (1-based count of steps done): every ``every`` steps and at the end."""
    every = default_every if config.every is None else config.every
    return step == steps or bool(every and step % every == 0)


def any_due(sets: Sequence[EvalSetConfig], default_every: int, step: int, steps: int) -> bool:
    """Whether any set evaluates after ``step`` (the same on every rank: a function of the config and step)."""
    return any(set_due(s, default_every, step, steps) for s in sets)


def evaluate_eval_sets(model: nn.Module, opened: Sequence[OpenedSet], transform: Callable, text_processor: Callable,
                       device: torch.device, step: int, steps: int, default_every: int) -> dict[str, float]:
    """The due sets' metrics, ``<name>/<metric>``, from ``clipforge.eval``'s functions; modes restored afterwards.

    ``acc5`` of a task with fewer than five classes (``None`` in ``clipforge eval``'s results) is left out.
    """
    from clipforge.eval import EvalModel, evaluate_retrieval, evaluate_zeroshot
    from clipforge.train.evaluate import eval_mode

    results: dict[str, float] = {}
    with eval_mode(model), torch.no_grad():
        scorer = EvalModel(model, transform, text_processor, device)
        for s in opened:
            c = s.config
            if not set_due(c, default_every, step, steps):
                continue
            if c.task == "zeroshot":
                assert s.classnames is not None and s.templates is not None
                head = getattr(model, "classifier", None) if c.head else None
                weights = None if head is None else head.weight.detach().T.to(device)
                metrics: dict[str, Any] = evaluate_zeroshot(scorer, s.dataset, s.classnames, s.templates,
                                                            c.batch_size, use_cache=False, weights=weights).metrics
            else:
                metrics = evaluate_retrieval(scorer, s.dataset, c.batch_size, c.recall_k).metrics
            results.update({f"{c.name}/{k}": float(v) for k, v in metrics.items() if v is not None})
    return results


def check_head_sets(opened: Sequence[OpenedSet], num_classes: int | None) -> None:
    """Raises ``ConfigError`` for a ``head: true`` set without a classifier head, or with another class count."""
    for i, s in enumerate(opened):
        if not s.config.head:
            continue
        if num_classes is None:
            raise ConfigError(f"eval.sets[{i}].head: this run trains no classifier head (set classifier:), so "
                              f"there is none to score {s.config.name} with")
        if s.classnames is not None and len(s.classnames) != num_classes:
            raise ConfigError(f"eval.sets[{i}].head: {s.config.name} has {len(s.classnames)} classes, the run's "
                              f"classifier head {num_classes}")


def headline_keys(sets: Sequence[EvalSetConfig]) -> dict[str, str]:
    """Each set's headline metric key (zero-shot: ``<name>/acc1``; retrieval: ``<name>/image_retrieval_recall@1``)."""
    return {s.name: f"{s.name}/{HEADLINE[s.task]}" for s in sets}
