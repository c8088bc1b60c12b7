"""The WiSE-FT sweep at the end of a fine-tune (Wortsman et al. 2022, "Robust fine-tuning of zero-shot models").

A run that starts from a checkpoint and sets ``wise_ft: {alphas: [0, 0.25, 0.5, 0.75, 1]}`` ends by interpolating,
weight by weight, the model it started from (α = 0) and the model it ended with (α = 1)
(``clipforge.checkpoints.merge.merge_models``), and evaluating each interpolated model with the run's own
evaluations (the synthetic world's tasks, ``eval.sets``). It writes:

- ``wise_ft.json``: ``{"<alpha>": {"<metric>": value, ...}, ...}``, in the order of ``alphas``;
- ``wise_ft.png``: each metric against α;
- with ``save_best: <metric>``, the model of the α that scores highest on that metric as ``final_wise/`` (a model
  directory like ``final/``). Nothing else is saved: the sweep costs one evaluation per α, no disk.
"""

from __future__ import annotations

import copy
import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from clipforge.config import ConfigError


@dataclass(frozen=True)
class WiseFTConfig:
    """The WiSE-FT sweep (``wise_ft:`` in a train config; only for a run that starts from a checkpoint).

    Attributes:
        alphas: The fine-tuned model's weights in the interpolation, each in [0, 1], distinct (0: the starting
            checkpoint, 1: the final model).
        save_best: A metric key of the run's evaluations (``zeroshot/shape``, ``<set>/acc1``): the model of the α
            with its highest value is saved as ``final_wise/``; ``None`` saves no model.
    """

    alphas: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    save_best: str | None = None

    def __post_init__(self) -> None:
        if not self.alphas:
            raise ConfigError("wise_ft.alphas: expected a non-empty list of numbers in [0, 1]")
        for a in self.alphas:
            if isinstance(a, bool) or not isinstance(a, (int, float)) or not math.isfinite(a) or not 0 <= a <= 1:
                raise ConfigError(f"wise_ft.alphas: expected numbers in [0, 1] (the fine-tuned model's weight), "
                                  f"got {a!r}")
        if len(set(self.alphas)) != len(self.alphas):
            raise ConfigError(f"wise_ft.alphas: each alpha once, got {list(self.alphas)}")
        if self.save_best is not None and not self.save_best.strip():
            raise ConfigError("wise_ft.save_best: expected a metric key (e.g. zeroshot/shape) or null")


def start_snapshot(model: torch.nn.Module) -> torch.nn.Module:
    """A CPU copy of the run's model before its first step: the sweep's α = 0 end (the training moves the original)."""
    return copy.deepcopy(model).cpu()


def _plain(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` without LoRA adapters: a LoRA model merged on a copy (the adapters stay on the original)."""
    from clipforge.models.lora import lora_config, merge_lora

    return merge_lora(copy.deepcopy(model)) if lora_config(model) is not None else model


def sweep(config: WiseFTConfig, start: torch.nn.Module, final: torch.nn.Module,
          evaluate: Callable[[torch.nn.Module], dict[str, float]], device: torch.device
          ) -> dict[float, dict[str, float]]:
    """Evaluates ``(1 − α)·start + α·final`` at each of ``config.alphas``; ``{alpha: metrics}``.

    Each interpolated model is built on the CPU (``merge_models``; exact at α = 0 and 1), moved to ``device`` for
    ``evaluate`` and dropped; ``start`` and ``final`` are not modified.

    Raises:
        ValueError: ``start`` and ``final`` differ in architecture (``merge_models``).
    """
    from clipforge.checkpoints.merge import merge_models

    a, b = _plain(start), _plain(final)
    results: dict[float, dict[str, float]] = {}
    for alpha in config.alphas:
        merged = merge_models(a, b, float(alpha))  # type: ignore[arg-type]  # on a's device: the CPU
        results[float(alpha)] = evaluate(merged.to(device))
        del merged
    return results


def best_alpha(results: dict[float, dict[str, float]], metric: str) -> float:
    """The α whose metrics score highest on ``metric`` (the first such α on a tie).

    Raises:
        ValueError: no result has ``metric`` (naming the keys there are).
    """
    scored = [(m[metric], alpha) for alpha, m in results.items() if metric in m]
    if not scored:
        keys = sorted({k for m in results.values() for k in m})
        raise ValueError(f"wise_ft.save_best: no evaluation gave {metric!r}; the metrics are {keys}")
    top = max(score for score, _ in scored)
    return next(alpha for score, alpha in scored if score == top)


def write_table(results: dict[float, dict[str, float]], path: Path) -> Path:
    """``wise_ft.json``: ``{"<alpha>": metrics}`` in sweep order."""
    path.write_text(json.dumps({repr(a): m for a, m in results.items()}, indent=2) + "\n", encoding="utf-8")
    return path


def plot_sweep(results: dict[float, dict[str, float]], path: Path) -> Path:
    """``wise_ft.png``: each metric against α (0: the starting checkpoint, 1: the fine-tune)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    alphas = sorted(results)
    keys = sorted({k for m in results.values() for k in m})
    fig = plt.figure(figsize=(7, 4))
    ax = fig.add_subplot(1, 1, 1)
    for key in keys:
        ax.plot(alphas, [results[a].get(key, float("nan")) for a in alphas], marker="o", label=key)
    ax.set_xlabel("alpha (0: start checkpoint, 1: fine-tuned)")
    ax.set_ylabel("metric")
    ax.set_title("WiSE-FT: weight-space interpolation")
    ax.grid(alpha=0.3)
    if keys:
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def run_sweep(config: WiseFTConfig, start: torch.nn.Module, final: torch.nn.Module,
              evaluate: Callable[[torch.nn.Module], dict[str, float]], device: torch.device, run_dir: Path,
              text_processor: Any) -> dict[float, dict[str, float]]:
    """The end-of-run sweep (rank 0): ``sweep``, then ``wise_ft.json``, ``wise_ft.png`` and, with ``save_best``,
    ``final_wise/``. A ``save_best`` metric that no evaluation gives is reported on stderr and saves nothing."""
    results = sweep(config, start, final, evaluate, device)
    write_table(results, run_dir / "wise_ft.json")
    plot_sweep(results, run_dir / "wise_ft.png")
    for alpha, metrics in results.items():
        print(f"wise_ft alpha {alpha:g}: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()), file=sys.stderr)
    if config.save_best is not None:
        try:
            alpha = best_alpha(results, config.save_best)
        except ValueError as e:
            print(f"warning: {e}; final_wise/ not saved", file=sys.stderr)
            return results
        from clipforge.checkpoints.merge import merge_models
        from clipforge.checkpoints.native import save_pretrained
        from clipforge.train.classify import save_with_head

        best = merge_models(_plain(start), _plain(final), alpha)  # type: ignore[arg-type]
        save_with_head(best, run_dir / "final_wise", text_processor, save_pretrained)  # a classifier head beside
        print(f"wise_ft: alpha {alpha:g} is best on {config.save_best}; saved {run_dir / 'final_wise'}",
              file=sys.stderr)
    return results
