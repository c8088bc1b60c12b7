"""Fine-tuning recipes side by side: what each gains on a new task and keeps of the old ones, at one budget.

Starts from a model trained on the synthetic world in English (``clipforge quickstart``'s ``runs/quickstart/final``)
and fine-tunes it on Russian captions only (the data of ``configs/finetune_lora.yaml``) with each recipe for the same
steps and batch: plain fine-tuning, LiT (``lock: image``), LoRA (``configs/finetune_lora.yaml``), layer-wise decay
with partial unlocking (``configs/finetune_layer_decay.yaml``), and WiSE-FT, the base and the plain fine-tune
interpolated weight by weight (``merge_models``) at several alphas. Every model is evaluated as
``benchmarks/lora_finetune.py`` evaluates one: the synthetic world's held-out split of the run's eval config, Russian
(the target: plain metric names) and English (kept: ``@en``). Prints JSON and plots target against kept.

    clipforge quickstart
    python benchmarks/finetune_recipes.py --base runs/quickstart/final --plot docs/images/finetune-recipes.png
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
LORA = ROOT / "configs/finetune_lora.yaml"
DECAY = ROOT / "configs/finetune_layer_decay.yaml"
# plain and LiT: the layer-decay config's optimiser (lr 5e-4, weight decay 0.1) with the decay and unlocking off,
# so "decay" differs from "plain" by those two options alone.
PLAIN = {"optim.image_layer_decay": 1.0, "optim.text_layer_decay": 1.0, "unlock.image_blocks": None,
         "unlock.at_step": None}
RECIPES: dict[str, tuple[Path, dict[str, Any]]] = {
    "plain": (DECAY, PLAIN),
    "lit": (DECAY, {**PLAIN, "lock": "image"}),
    "lora": (LORA, {}),
    "decay": (DECAY, {}),
}
KEYS = ("zeroshot/shape", "zeroshot/colour", "zeroshot/count", "retrieval/text_retrieval_recall@1",
        "retrieval/image_retrieval_recall@1")


def train_recipe(name: str, base: str, out: Path, steps: int, batch_size: int) -> tuple[Path, dict[str, Any]]:
    """Trains one recipe from ``base`` into ``out/name``; returns its ``final/`` and what the run reported.

    Args:
        name: A key of ``RECIPES``.
        base: The model to start from (anything ``clipforge.load`` opens).
        out: The folder the run directory goes under.
        steps: Optimiser steps.
        batch_size: The global batch.

    Returns:
        The final model's directory and ``{"seconds", "steps", "overrides", "config"}``.
    """
    from clipforge.train import init_runtime, load_config, train

    path, extra = RECIPES[name]
    overrides = {**extra, "model": base, "output_dir": str(out / name), "steps": steps, "batch_size": batch_size,
                 "checkpoint_every": steps, "eval.every": 0}
    if name == "decay":  # the config unlocks the whole image tower after a third of its 300 steps: keep the share
        overrides["unlock.at_step"] = steps // 3
    config = load_config(path, overrides)
    start = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # the run's log lines; stdout is the JSON
        result = train(config, init_runtime())
    info = {"seconds": round(time.perf_counter() - start, 1), "steps": result.step,
            "config": str(path.relative_to(ROOT)),
            "overrides": {k: v for k, v in overrides.items() if k not in ("model", "output_dir")}}
    return Path(result.run_dir) / "final", info


def main(argv: list[str]) -> int:
    import clipforge
    from clipforge.checkpoints.merge import merge_models
    from clipforge.data.synthetic import SyntheticWorld
    from clipforge.train import load_config
    from clipforge.train.data import world_config
    from clipforge.train.evaluate import build_eval_sets, evaluate_languages
    from clipforge.transforms import model_transforms

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="runs/quickstart/final", help="the English-trained model to start from")
    parser.add_argument("--out", default=None, help="folder for the runs (default: a temporary one)")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--alphas", default="0,0.25,0.5,0.75,1", help="WiSE-FT alphas (base→plain fine-tune)")
    parser.add_argument("--recipes", default=",".join(RECIPES), help=f"comma-separated, of {list(RECIPES)}")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--plot", default=None, help="write the target-vs-kept plot (PNG) here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    names = [n for n in args.recipes.split(",") if n]
    unknown = [n for n in names if n not in RECIPES]
    if unknown:
        parser.error(f"--recipes: unknown {unknown}; expected some of {list(RECIPES)}")
    alphas = [float(a) for a in args.alphas.split(",")]
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="finetune_recipes_"))

    config = load_config(LORA, {"model": args.base})
    base, _, text_processor = clipforge.load(args.base)
    _, eval_tf = model_transforms(base.config)
    world = SyntheticWorld(world_config(config.data, base.config.vision.image_size))
    e = config.eval
    sets = build_eval_sets(world, eval_tf, e.size, e.retrieval_size, e.languages, e.split)
    device = torch.device("cpu")

    def evaluate(model: torch.nn.Module) -> dict[str, float]:
        return {k: round(v, 4) for k, v in evaluate_languages(model, sets, text_processor, device).items()}

    metrics: dict[str, dict[str, float]] = {"base": evaluate(base)}
    runs: dict[str, Any] = {}
    for name in names:
        try:
            final, runs[name] = train_recipe(name, args.base, out, args.steps, args.batch_size)
            metrics[name] = evaluate(clipforge.load(str(final))[0])
        except Exception as error:  # a failed recipe is reported, not hidden
            runs[name] = {"error": f"{type(error).__name__}: {error}"}
            print(f"{name}: failed: {runs[name]['error']}", file=sys.stderr)
    if "plain" in metrics:
        tuned = clipforge.load(str(out / "plain/final"))[0]
        for alpha in alphas:
            metrics[f"wise_ft@{alpha:g}"] = evaluate(merge_models(base, tuned, alpha))
    table = {name: {f"{k.split('/')[1]} {lang}": m[k + suffix] for lang, suffix in (("ru", ""), ("en", "@en"))
                    for k in KEYS} for name, m in metrics.items()}
    result = {"base": args.base, "steps": args.steps, "batch_size": args.batch_size, "languages": e.languages,
              "runs_dir": str(out), "runs": runs, "table": table, "metrics": metrics}
    print(json.dumps(result, indent=1, default=str))
    if args.plot:
        plot(table, args.plot)
    return 0


def plot(table: dict[str, dict[str, float]], path: str) -> None:
    """Target (ru) against kept (en) zero-shot shape and text R@1: a point per recipe, the WiSE-FT curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    for ax, metric, label in ((axes[0], "shape", "zero-shot shape accuracy"),
                              (axes[1], "text_retrieval_recall@1", "text retrieval R@1")):
        wise = sorted((float(n.split("@")[1]), r) for n, r in table.items() if n.startswith("wise_ft@"))
        if wise:
            ax.plot([r[f"{metric} ru"] for _, r in wise], [r[f"{metric} en"] for _, r in wise], "-o", color="0.6",
                    label="WiSE-FT (base → plain)", zorder=1)
            for a, r in wise:
                ax.annotate(f"α={a:g}", (r[f"{metric} ru"], r[f"{metric} en"]), textcoords="offset points",
                            xytext=(4, -10), fontsize=7, color="0.4")
        for name, r in table.items():
            if not name.startswith("wise_ft@"):
                ax.scatter(r[f"{metric} ru"], r[f"{metric} en"], s=60, label=name, zorder=2)
        ax.set_xlabel(f"target: Russian {label}")
        ax.set_ylabel(f"kept: English {label}")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="lower left")
    fig.suptitle("Fine-tuning the quickstart model to Russian captions: gained vs kept (same steps per recipe)")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
