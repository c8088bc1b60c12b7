"""Zero-shot classification: a classifier built from class names and prompt templates (CLIP paper, §3.1.4).

Each class's prompts (``template.format(classname)`` for every template) are embedded and L2-normalised,
averaged, and the mean re-normalised: ensembling in embedding space, which costs one text embedding
per class at test time. The classifier (D, C) is cached on disk under a hash of the model's fingerprint,
the class names and the templates, so a second evaluation of the same model skips the text tower.

Metrics (streamed, one batch in memory): top-1 and top-5 accuracy and the mean per-class recall (the
average over classes with test samples of the fraction of that class predicted correctly), from a
confusion matrix that is also returned for plotting.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from clipforge.eval.adapter import EvalModel
from clipforge.eval.datasets import EvalDataset, iter_batches
from clipforge.eval.prompts import fill


def default_cache_dir() -> Path:
    """``$CLIPFORGE_CACHE/zeroshot`` if set, else ``~/.cache/clipforge/zeroshot``."""
    root = os.environ.get("CLIPFORGE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "clipforge")
    return Path(root) / "zeroshot"


def classifier_key(fingerprint: str, classnames: Sequence[str], templates: Sequence[str]) -> str:
    """The cache key of a zero-shot classifier: a hash of the model fingerprint, class names and templates."""
    payload = json.dumps({"model": fingerprint, "classes": list(classnames), "templates": list(templates)})
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:32]


def build_classifier(model: EvalModel, classnames: Sequence[str], templates: Sequence[str],
                     cache_dir: str | Path | None = None, use_cache: bool = True, batch_size: int = 256,
                     progress: bool = False) -> torch.Tensor:
    """Zero-shot classifier weights (D, C): per class, the re-normalised mean of its normalised prompt embeddings.

    Args:
        model: The model to embed the prompts with.
        classnames: One name per class, in label order.
        templates: Prompt templates with ``{}`` for the class name.
        cache_dir: Where classifiers are cached (:func:`default_cache_dir` when ``None``).
        use_cache: Read and write the cache.
        batch_size: Prompts per text-tower batch.
        progress: Show a progress bar over classes.

    Raises:
        ValueError: When there are no class names or no templates.
    """
    if not classnames or not templates:
        raise ValueError("zero-shot needs at least one class name and one template")
    path = None
    if use_cache:
        cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        path = cache / f"{classifier_key(model.fingerprint(), classnames, templates)}.npy"
        if path.is_file():
            return torch.from_numpy(np.load(path, allow_pickle=False))
    # Classes in groups so that each text batch holds whole classes' prompts.
    per_batch = max(1, batch_size // len(templates))
    columns = []
    for start in tqdm(range(0, len(classnames), per_batch), desc="classifier", unit="batch", disable=not progress):
        names = classnames[start:start + per_batch]
        prompts = [fill(t, c) for c in names for t in templates]
        emb = model.encode_texts(prompts, normalize=True, batch_size=batch_size)  # (n * T, D)
        emb = emb.view(len(names), len(templates), -1).mean(dim=1)  # (n, D)
        columns.append(F.normalize(emb, dim=-1))
    weights = torch.cat(columns).T.contiguous()  # (D, C)
    if path is not None:
        _save_atomic(path, weights.numpy())
    return weights


def _save_atomic(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        np.save(f, array, allow_pickle=False)
    os.replace(tmp, path)


@dataclass
class ClassificationMeter:
    """Accumulates top-1 / top-5 hits and a confusion matrix over batches of logits.

    Args:
        num_classes: C.
    """

    num_classes: int
    n: int = 0
    top1: int = 0
    top5: int = 0
    confusion: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.confusion = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    def update(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        """Adds a batch: logits (B, C) and integer targets (B,)."""
        k = min(5, self.num_classes)
        topk = logits.topk(k, dim=1).indices  # (B, k)
        hits = topk == targets[:, None]
        self.n += len(targets)
        self.top1 += int(hits[:, 0].sum())
        self.top5 += int(hits.any(dim=1).sum())
        np.add.at(self.confusion, (targets.numpy(), topk[:, 0].numpy()), 1)

    def metrics(self) -> dict[str, float | None]:
        """``acc1``, ``acc5`` (``None`` with fewer than 5 classes, as CLIP_benchmark) and ``mean_per_class_recall``."""
        if self.n == 0:
            raise ValueError("no samples were evaluated")
        support = self.confusion.sum(axis=1)
        present = support > 0
        recall = np.diag(self.confusion)[present] / support[present]
        return {
            "acc1": self.top1 / self.n,
            "acc5": self.top5 / self.n if self.num_classes >= 5 else None,
            "mean_per_class_recall": float(recall.mean()),
        }


def classification_metrics(logits: torch.Tensor, targets: torch.Tensor) -> dict[str, float | None]:
    """Top-1, top-5 and mean per-class recall of logits (N, C) against targets (N,)."""
    meter = ClassificationMeter(logits.shape[1])
    meter.update(logits, targets)
    return meter.metrics()


@dataclass
class ZeroShotResult:
    """Metrics, the confusion matrix (true × predicted), and the samples evaluated and skipped."""

    metrics: dict[str, float | None]
    confusion: np.ndarray
    n_samples: int
    skipped: list[tuple[str, str]]


def evaluate_zeroshot(model: EvalModel, dataset: EvalDataset | Iterable, classnames: Sequence[str],
                      templates: Sequence[str], batch_size: int = 64, cache_dir: str | Path | None = None,
                      use_cache: bool = True, progress: bool = False,
                      weights: torch.Tensor | None = None) -> ZeroShotResult:
    """Zero-shot classification of a labelled dataset.

    Args:
        model: The model.
        dataset: Yields :class:`~clipforge.eval.datasets.Sample` with labels (index into ``classnames``).
        classnames: One name per class.
        templates: Prompt templates.
        batch_size: Images per batch.
        cache_dir: Classifier cache (see :func:`build_classifier`).
        use_cache: Use the classifier cache.
        progress: Show progress bars.
        weights: A classifier ``(D, C)`` to score with instead of the one the prompts build (a trained head's
            weights, transposed: ``clipforge.train.classify``); ``templates`` are then unused.

    Raises:
        ValueError: When a label is outside the class list or no image could be read, or ``weights`` does not
            have one column per class.
    """
    if weights is None:
        weights = build_classifier(model, classnames, templates, cache_dir, use_cache, progress=progress)
    elif weights.ndim != 2 or weights.shape[1] != len(classnames):
        raise ValueError(f"classifier weights of shape {tuple(weights.shape)} for {len(classnames)} classes: "
                         f"expected (embedding width, {len(classnames)})")
    meter = ClassificationMeter(len(classnames))
    for images, metas in tqdm(iter_batches(dataset, model.transform, batch_size), desc="zero-shot", unit="batch",
                              disable=not progress):
        if any(m.label is None for m in metas):
            raise ValueError(f"{metas[0].source}: no class label (is this a captioned retrieval dataset?)")
        targets = torch.tensor([m.label for m in metas], dtype=torch.long)
        if targets.min() < 0 or targets.max() >= len(classnames):
            raise ValueError(f"label {int(targets.max())} outside the {len(classnames)} class names")
        logits = model.encode_images(images) @ weights  # (B, C)
        meter.update(logits, targets)
    skipped = list(getattr(dataset, "skipped", []))
    if meter.n == 0:
        raise ValueError(f"no images could be read ({len(skipped)} skipped)")
    return ZeroShotResult(meter.metrics(), meter.confusion, meter.n, skipped)


def plot_confusion(confusion: np.ndarray, classnames: Sequence[str], path: str | Path, title: str = "") -> Path:
    """Saves a row-normalised confusion matrix (true rows × predicted columns) as a PNG.

    Class names label the axes up to 50 classes; beyond that the ticks are left out.
    """
    # A bare Figure renders with Agg and leaves pyplot's global state (and any chosen backend) alone.
    from matplotlib.figure import Figure

    rows = confusion.sum(axis=1, keepdims=True)
    norm = confusion / np.maximum(rows, 1)
    n = len(classnames)
    side = min(4 + 0.3 * n, 20)
    fig = Figure(figsize=(side, side))
    ax = fig.subplots()
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 50:
        ax.set_xticks(range(n), labels=classnames, rotation=90, fontsize=8)
        ax.set_yticks(range(n), labels=classnames, fontsize=8)
    ax.set_title(title or "zero-shot confusion (row-normalised)")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path
