"""Result files in CLIP_benchmark's format, so its tooling (tables, plots) reads clipforge results.

::

    {"dataset": "cifar10", "model": "ViT-B/32", "pretrained": "runs/x/final", "task": "zeroshot_classification",
     "metrics": {"acc1": 0.9, "acc5": 0.99, "mean_per_class_recall": 0.9}, "language": "en",
     "data": {"n_samples": 10000, "n_skipped": 0, "skipped": []}}

``task`` is ``zeroshot_classification``, ``zeroshot_retrieval`` or ``linear_probe``; the ``data`` block
(clipforge's addition) counts the samples evaluated and lists the first skipped ones with the reason.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

TASKS = ("zeroshot_classification", "zeroshot_retrieval", "linear_probe")


def result_record(dataset: str, model: str, pretrained: str, task: str, metrics: dict[str, Any],
                  language: str = "en", n_samples: int | None = None,
                  skipped: list[tuple[str, str]] | None = None, max_listed: int = 20,
                  extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Builds one result record (see the module docstring); NaN metrics become ``null``.

    Args:
        dataset: Dataset name or path.
        model: Model (architecture) name.
        pretrained: Where the weights came from (a path, or ``random`` for an untrained preset).
        task: One of :data:`TASKS`.
        metrics: The metric values.
        language: Language of the prompts/captions.
        n_samples: Samples evaluated.
        skipped: ``(source, reason)`` of skipped samples; the first ``max_listed`` are listed.
        max_listed: How many skipped samples to list.
        extra: More top-level keys (e.g. the probe's chosen C).
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; one of {TASKS}")
    clean = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()}
    record: dict[str, Any] = {"dataset": dataset, "model": model, "pretrained": pretrained, "task": task,
                              "metrics": clean, "language": language}
    skipped = skipped or []
    record["data"] = {"n_samples": n_samples, "n_skipped": len(skipped),
                      "skipped": [{"source": s, "reason": r} for s, r in skipped[:max_listed]]}
    record.update(extra or {})
    return record


def write_results(path: str | Path, record: dict[str, Any]) -> Path:
    """Writes a record as indented JSON (creating folders); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path
