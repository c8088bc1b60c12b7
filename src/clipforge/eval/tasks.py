"""Opening an evaluation task's data the way ``clipforge eval`` does, for any caller (the CLI, training's evaluations).

``open_task_data`` opens a path (image folder, table, CLIP_benchmark webdataset folder) with the table columns, image
root and alpha rule; ``zeroshot_labels`` settles a zero-shot task's class names and templates: the given ones (a
built-in set or a file, ``clipforge.eval.prompts``), else the dataset's (an image folder's sub-folder names with
underscores read as spaces), templates defaulting to ``DEFAULT_TEMPLATES``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from clipforge.data.decode import DecodeLimits
from clipforge.data.tables import CAPTION_KEY, IMAGE_KEY
from clipforge.eval.datasets import EvalDataset, ImageFolder, WdsBenchmark, open_dataset
from clipforge.eval.prompts import load_classnames, load_templates

DEFAULT_TEMPLATES = "imagenet"
TASKS = ("zeroshot", "retrieval")


def open_task_data(data: str | Path, task: str, *, image_key: str = IMAGE_KEY, label_key: str | None = None,
                   caption_key: str = CAPTION_KEY, classes: list[str] | None = None, split: str = "test",
                   image_root: str | Path | None = None, alpha: Literal["white", "drop"] = "white") -> EvalDataset:
    """``data`` opened for ``task`` (``zeroshot`` or ``retrieval``), checked to hold labels or captions.

    Raises:
        FileNotFoundError: ``data`` (or its shards) is missing.
        ValueError: its layout is not recognised, a named column is missing, or it does not fit the task (an image
            folder or a classification webdataset for retrieval, a retrieval webdataset for zero-shot).
    """
    if task not in TASKS:
        raise ValueError(f"task: expected one of {list(TASKS)}, got {task!r}")
    retrieval = task == "retrieval"
    dataset = open_dataset(data, image_col=image_key, split=split, image_root=image_root,
                           limits=DecodeLimits(alpha=alpha), classes=classes,
                           **({"caption_col": caption_key, "task": "retrieval"} if retrieval else
                              {"label_col": label_key}))
    if retrieval and (isinstance(dataset, ImageFolder) or dataset.task != "retrieval"):
        raise ValueError(f"{data}: a classification dataset (class labels, no captions); retrieval needs captions: "
                         "a table with a caption column or a webdataset with dataset_type.txt 'retrieval'")
    if not retrieval and isinstance(dataset, WdsBenchmark) and dataset.task == "retrieval":
        raise ValueError(f"{data}: a retrieval dataset (captions, no class labels); zero-shot needs labels")
    return dataset


def zeroshot_labels(dataset: EvalDataset, data: str | Path, classnames: list[str] | None = None,
                    templates: list[str] | None = None) -> tuple[list[str], list[str]]:
    """A zero-shot task's ``(class names, templates)``: those given, else the dataset's, else the defaults.

    Raises:
        ValueError: no class names are given and the dataset has none, or their counts differ.
    """
    if classnames is None:
        if not dataset.classes:
            raise ValueError(f"{data}: no class names; give them (a built-in set or a file)")
        # Folder names use underscores for spaces (golden_retriever); prompts read better without them.
        classnames = [c.replace("_", " ") for c in dataset.classes] if isinstance(dataset, ImageFolder) \
            else list(dataset.classes)
    elif dataset.classes is not None and len(dataset.classes) != len(classnames):
        raise ValueError(f"{len(classnames)} class names given but {data} has {len(dataset.classes)} classes")
    return classnames, templates or dataset.templates or load_templates(DEFAULT_TEMPLATES)


__all__ = ["DEFAULT_TEMPLATES", "TASKS", "load_classnames", "load_templates", "open_task_data", "zeroshot_labels"]
