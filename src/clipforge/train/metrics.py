"""Run feedback: a metrics JSONL file, TensorBoard when installed, and PNG plots at the end.

Plots use matplotlib's Agg backend (no display needed): the loss curve, zero-shot accuracy over steps,
each real-data evaluation's headline metric over steps (``eval.sets``), and an image × caption cosine-similarity
matrix in the style of the CLIP paper's Figure 6 (bottom).
"""

from __future__ import annotations

import json
import os
import textwrap
import uuid
import warnings
from pathlib import Path
from typing import Any

import numpy as np

METRICS_FILE = "metrics.jsonl"


class MetricsLog:
    """Appends one JSON object per record to ``<run>/metrics.jsonl``, and scalars to TensorBoard (when installed)
    and Weights & Biases (when asked for).

    Weights & Biases: ``wandb.init`` in the run directory (``<run>/wandb/``) with the project ``$WANDB_PROJECT``
    (default ``clipforge``), the run directory's name, the run's config, and a run id kept in ``<run>/wandb_id``:
    a resumed run continues the same W&B run. ``WANDB_MODE=offline`` logs to files only (``wandb sync`` uploads
    them later).

    Args:
        run_dir: The run directory.
        enabled: ``False`` on every rank but 0: calls become no-ops.
        resume_step: When resuming, records after this step (written by the interrupted run after its last
            checkpoint) are dropped first, so the file reads as one uninterrupted run.
        report_to: Where scalars go besides the JSONL file: ``tensorboard`` and/or ``wandb``.
        config: The run's config as a plain dict (shown by W&B).

    Raises:
        ImportError: ``wandb`` asked for and not installed (``pip install 'clipforge[wandb]'``).
    """

    def __init__(self, run_dir: str | Path, enabled: bool = True, resume_step: int | None = None,
                 report_to: tuple[str, ...] = ("tensorboard",), config: dict[str, Any] | None = None):
        self.enabled = enabled
        self.path = Path(run_dir) / METRICS_FILE
        self.writer = None
        self.wandb: Any = None
        if not enabled:
            return
        unknown = set(report_to) - {"tensorboard", "wandb"}
        if unknown:
            raise ValueError(f"report_to: unknown {sorted(unknown)}; expected tensorboard and/or wandb")
        if "wandb" in report_to:  # first: a missing package fails before the metrics file is touched
            self.wandb = start_wandb(Path(run_dir), resume_step is not None, config)
        if resume_step is not None and self.path.is_file():
            kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= resume_step]
            self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        elif resume_step is None:
            self.path.write_text("")
        if "tensorboard" not in report_to:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(Path(run_dir) / "tensorboard"))
        except ImportError:  # tensorboard is optional
            self.writer = None

    def log(self, step: int, values: dict[str, Any]) -> None:
        """Writes ``{"step": step, **values}``."""
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **values}) + "\n")
        scalars = {k: v for k, v in values.items() if isinstance(v, int | float)}
        if self.writer is not None:
            for key, value in scalars.items():
                self.writer.add_scalar(key, value, step)
        if self.wandb is not None and scalars:
            self.wandb.log(scalars, step=step)

    def close(self) -> None:
        """Flushes TensorBoard and finishes the W&B run."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None


WANDB_ID_FILE = "wandb_id"


def start_wandb(run_dir: Path, resume: bool, config: dict[str, Any] | None) -> Any:
    """A W&B run for ``run_dir``: the one whose id ``<run>/wandb_id`` holds when resuming, else a new one.

    Raises:
        ImportError: wandb is not installed.
    """
    try:
        import wandb
    except ImportError:
        raise ImportError("report_to: wandb needs the wandb package: pip install 'clipforge[wandb]'") from None
    id_file = run_dir / WANDB_ID_FILE
    run_id = id_file.read_text().strip() if resume and id_file.is_file() else ""
    if not run_id:
        run_id = uuid.uuid4().hex[:12]  # W&B ids: letters and digits
        run_dir.mkdir(parents=True, exist_ok=True)
        id_file.write_text(run_id + "\n")
    project = os.environ.get("WANDB_PROJECT") or "clipforge"
    return wandb.init(project=project, dir=str(run_dir), name=run_dir.resolve().name, config=config or {},
                      resume="allow", id=run_id)


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Every record of a metrics JSONL file.

    A torn last line (a run killed while appending it) is dropped with a warning; a damaged line elsewhere is an
    error naming the file and line, since it means the file was changed by something other than a run.

    Raises:
        ValueError: a line other than the last is not a JSON object.
    """
    lines = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if isinstance(record, dict):
            records.append(record)
        elif number == len(lines):
            warnings.warn(f"{path}: line {number} is torn (a run stopped while writing it); dropped", stacklevel=2)
        else:
            raise ValueError(f"{path}: line {number} is not a JSON object: {line[:80]!r}")
    return records


def _figure(width: float, height: float) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.figure(figsize=(width, height))


def plot_loss(records: list[dict[str, Any]], path: str | Path) -> None:
    """Training loss (and learning rate, on a second axis) against step."""
    rows = [r for r in records if "loss" in r]
    fig = _figure(7, 4)
    ax = fig.add_subplot()
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], label="loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    if rows and "lr" in rows[0]:
        ax2 = ax.twinx()
        ax2.plot([r["step"] for r in rows], [r["lr"] for r in rows], color="tab:orange", alpha=0.6)
        ax2.set_ylabel("learning rate", color="tab:orange")
    ax.set_title("training loss")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    _close(fig)


def plot_zeroshot(records: list[dict[str, Any]], path: str | Path) -> None:
    """Zero-shot accuracy of each task (and retrieval R@1) against step."""
    rows = [r for r in records if any(k.startswith("zeroshot/") for k in r)]
    fig = _figure(7, 4)
    ax = fig.add_subplot()
    keys = sorted({k for r in rows for k in r if k.startswith("zeroshot/") or k.endswith("recall@1")})
    for key in keys:
        points = [(r["step"], r[key]) for r in rows if key in r]
        ax.plot(*zip(*points), marker="o", label=key.split("/", 1)[1])
    ax.set_xlabel("step")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    if keys:
        ax.legend(loc="lower right", fontsize=8)
    ax.set_title("zero-shot accuracy")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    _close(fig)


def plot_eval_sets(records: list[dict[str, Any]], headlines: dict[str, str], path: str | Path) -> None:
    """Every ``eval.sets`` entry's headline metric (``headlines``: set name → metric key) against step, one plot."""
    fig = _figure(7, 4)
    ax = fig.add_subplot()
    for name, key in headlines.items():
        points = [(r["step"], r[key]) for r in records if key in r]
        if points:
            ax.plot(*zip(*points), marker="o", label=f"{name}: {key.split('/', 1)[1]}")
    ax.set_xlabel("step")
    ax.set_ylabel("accuracy / recall")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    if ax.get_lines():
        ax.legend(loc="lower right", fontsize=8)
    ax.set_title("evaluations on real data")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    _close(fig)


def plot_similarity(similarity: np.ndarray, images: list[Any], captions: list[str], path: str | Path) -> None:
    """Cosine similarity of images (rows, drawn as thumbnails) and captions (columns), values printed."""
    n, m = similarity.shape
    fig = _figure(2 + 0.9 * m, 2.5 + 0.75 * n)
    ax = fig.add_subplot()
    ax.imshow(similarity, cmap="viridis", vmin=similarity.min(), vmax=similarity.max(),
              extent=(-0.5, m - 0.5, n - 0.5, -0.5))
    for i in range(n):
        for j in range(m):
            ax.text(j, i, f"{similarity[i, j]:.2f}", ha="center", va="center", fontsize=7, color="white")
    ax.set_xticks(range(m))
    ax.set_xticklabels([textwrap.fill(c, 24) for c in captions], rotation=90, fontsize=7)
    ax.set_yticks(range(n))
    ax.set_yticklabels([""] * n)
    for i, image in enumerate(images):  # thumbnails as row labels, just left of the matrix
        ax.imshow(np.asarray(image), extent=(-1.45, -0.55, i + 0.45, i - 0.45))
    ax.set_xlim(-1.5, m - 0.5)
    ax.set_ylim(n - 0.5, -0.5)
    ax.set_title("cosine similarity: images × captions")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    _close(fig)


def _close(fig: Any) -> None:
    import matplotlib.pyplot as plt

    plt.close(fig)
