"""Fine-tuning recipes side by side: what each gains on a new task and keeps of the old ones, at one budget.

Starts from a model trained on the synthetic world in English (``clipforge quickstart``'s ``runs/quickstart/final``)
and fine-tunes it on Russian captions only with each recipe for the same steps and batch: plain fine-tuning
(``configs/finetune_wise_ft.yaml`` without its sweep), LiT (the same with ``lock: image``), LoRA
(``configs/finetune_lora.yaml``), layer-wise decay with partial unlocking (``configs/finetune_layer_decay.yaml``),
distillation from the base (``configs/finetune_distill.yaml``: plain plus the teacher), decay + unlocking with the
same teacher, and WiSE-FT: the base and the plain fine-tune interpolated weight by weight (``merge_models``) at
several alphas. Every model is evaluated as ``benchmarks/lora_finetune.py`` evaluates one: the synthetic world's
held-out split (world seed 0, the same for every run), Russian (the target: plain metric names) and English (kept:
``@en``).

With ``--seeds 0 1 2`` each recipe is trained once per seed: the seed sets the run's ``seed`` (initialisation, data
order, caption picks) and ``data.seed`` (the world the training samples are drawn from); WiSE-FT merges each seed's
plain fine-tune. Prints JSON (per-seed values, mean and sample standard deviation per metric) and plots target
against kept (means with one standard deviation as error bars).

    clipforge quickstart
    python benchmarks/finetune_recipes.py --seeds 0 1 2 --plot docs/images/finetune-recipes.png
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
LORA = ROOT / "configs/finetune_lora.yaml"
DECAY = ROOT / "configs/finetune_layer_decay.yaml"
WISE = ROOT / "configs/finetune_wise_ft.yaml"  # the plain fine-tune (and its sweep, done here per seed instead)
DISTILL = ROOT / "configs/finetune_distill.yaml"  # the plain fine-tune plus the base as teacher
TEACHER = "distill.teacher"  # set to --base for the recipes that distil
# name -> (config, overrides). plain, lit and distill share the layer-decay config's optimiser (lr 5e-4, weight
# decay 0.1) without decay or unlocking, so "decay" differs from "plain" by those two options alone, and "distill"
# and "decay+distill" differ from "plain" and "decay" by the teacher alone.
RECIPES: dict[str, tuple[Path, dict[str, Any]]] = {
    "plain": (WISE, {"wise_ft": None}),
    "lit": (WISE, {"wise_ft": None, "lock": "image"}),
    "lora": (LORA, {}),
    "decay": (DECAY, {}),
    "distill": (DISTILL, {TEACHER: None}),
    "decay+distill": (DECAY, {TEACHER: None}),
}
KEYS = ("zeroshot/shape", "zeroshot/colour", "zeroshot/count", "retrieval/text_retrieval_recall@1",
        "retrieval/image_retrieval_recall@1")


def train_recipe(name: str, base: str, out: Path, steps: int, batch_size: int, seed: int
                 ) -> tuple[Path, dict[str, Any]]:
    """Trains one recipe from ``base`` into ``out/name`` at ``seed``; returns its ``final/`` and what it reported.

    Args:
        name: A key of ``RECIPES``.
        base: The model to start from (anything ``clipforge.load`` opens); also the teacher of distilling recipes.
        out: The folder the run directory goes under.
        steps: Optimiser steps.
        batch_size: The global batch.
        seed: The run's ``seed`` and ``data.seed``.

    Returns:
        The final model's directory and ``{"seconds", "steps", "config", "overrides"}``.
    """
    from clipforge.train import init_runtime, load_config, train

    path, extra = RECIPES[name]
    overrides = {**extra, "model": base, "output_dir": str(out / name), "steps": steps, "batch_size": batch_size,
                 "checkpoint_every": steps, "eval.every": 0, "plots": False, "seed": seed, "data.seed": seed}
    if TEACHER in extra:
        overrides[TEACHER] = base
    if path == DECAY:  # the config unlocks the whole image tower after a third of its 300 steps: keep the share
        overrides["unlock.at_step"] = steps // 3
    config = load_config(path, overrides)
    start = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # the run's log lines; stdout is the JSON
        result = train(config, init_runtime())
    shutil.rmtree(Path(result.run_dir) / "checkpoints", ignore_errors=True)  # the optimiser state: not needed here
    info = {"seconds": round(time.perf_counter() - start, 1), "steps": result.step,
            "config": str(path.relative_to(ROOT)),
            "overrides": {k: v for k, v in overrides.items() if k not in ("model", "output_dir")}}
    return Path(result.run_dir) / "final", info


def table_row(metrics: dict[str, float]) -> dict[str, float]:
    """The table's columns of one evaluation: each of ``KEYS`` in Russian (``... ru``) and English (``... en``)."""
    return {f"{k.split('/')[1]} {lang}": metrics[k + suffix] for lang, suffix in (("ru", ""), ("en", "@en"))
            for k in KEYS}


def summarise(per_seed: dict[str, dict[str, float]]) -> dict[str, Any]:
    """``{"mean", "std", "per_seed"}`` over the seeds of one model: per column, the mean and the sample standard
    deviation (``n - 1``; 0 for one seed)."""
    columns = next(iter(per_seed.values()))
    mean = {c: round(statistics.fmean(r[c] for r in per_seed.values()), 4) for c in columns}
    std = {c: round(statistics.stdev([r[c] for r in per_seed.values()]), 4) if len(per_seed) > 1 else 0.0
           for c in columns}
    return {"mean": mean, "std": std, "per_seed": per_seed}


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
    parser.add_argument("--out", default=None, help="folder for the runs (default: a temporary one, removed)")
    parser.add_argument("--keep-models", action="store_true", help="keep each run's final/ (32 MB each)")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="train every recipe once per seed")
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
    if len(set(args.seeds)) != len(args.seeds) or min(args.seeds) < 0:
        parser.error(f"--seeds: expected distinct integers >= 0, got {args.seeds}")
    alphas = [float(a) for a in args.alphas.split(",")]
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="finetune_recipes_"))

    config = load_config(LORA, {"model": args.base})  # the evaluation: world seed 0's val split, ru and en
    base, _, text_processor = clipforge.load(args.base)
    _, eval_tf = model_transforms(base.config)
    world = SyntheticWorld(world_config(config.data, base.config.vision.image_size))
    e = config.eval
    sets = build_eval_sets(world, eval_tf, e.size, e.retrieval_size, e.languages, e.split)
    device = torch.device("cpu")

    def evaluate(model: torch.nn.Module) -> dict[str, float]:
        return {k: round(v, 4) for k, v in evaluate_languages(model, sets, text_processor, device).items()}

    started = time.perf_counter()
    metrics: dict[str, dict[str, dict[str, float]]] = {"base": {"all": evaluate(base)}}  # it has no seed
    runs: dict[str, dict[str, Any]] = {}
    for seed in args.seeds:
        seed_out, key = out / f"seed{seed}", str(seed)
        for name in names:
            try:
                final, runs.setdefault(name, {})[key] = train_recipe(name, args.base, seed_out, args.steps,
                                                                            args.batch_size, seed)
                tuned = clipforge.load(str(final))[0]
                metrics.setdefault(name, {})[key] = evaluate(tuned)
            except Exception as error:  # a failed recipe is reported, not hidden
                runs.setdefault(name, {})[key] = {"error": f"{type(error).__name__}: {error}"}
                print(f"{name} seed {seed}: failed: {runs[name][key]['error']}", file=sys.stderr)
                continue
            if name == "plain":
                for alpha in alphas:
                    metrics.setdefault(f"wise_ft@{alpha:g}", {})[key] = evaluate(merge_models(base, tuned, alpha))
            if not args.keep_models:
                shutil.rmtree(final, ignore_errors=True)
            print(f"seed {seed} {name}: " + ", ".join(f"{k} {v:.3f}" for k, v in
                                                     table_row(metrics[name][key]).items()), file=sys.stderr)
    table = {name: summarise({s: table_row(m) for s, m in per_seed.items()}) for name, per_seed in metrics.items()}
    result = {"base": args.base, "steps": args.steps, "batch_size": args.batch_size, "seeds": args.seeds,
              "languages": e.languages, "runs_dir": str(out), "seconds": round(time.perf_counter() - started, 1),
              "runs": runs, "table": table,
              "metrics": metrics}
    print(json.dumps(result, indent=1, default=str))
    if args.plot:
        plot(table, args.plot, len(args.seeds))
    if not args.out:
        shutil.rmtree(out, ignore_errors=True)
    return 0


def plot(table: dict[str, dict[str, Any]], path: str, n_seeds: int) -> None:
    """Target (ru) against kept (en) zero-shot shape and text R@1: a point per recipe (mean ± one standard deviation
    over the seeds in both directions), and the WiSE-FT curve of the means."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6))
    for ax, metric, label in ((axes[0], "shape", "zero-shot shape accuracy"),
                              (axes[1], "text_retrieval_recall@1", "text retrieval R@1")):
        ru, en = f"{metric} ru", f"{metric} en"
        wise = sorted((float(n.split("@")[1]), r) for n, r in table.items() if n.startswith("wise_ft@"))
        if wise:
            ax.errorbar([r["mean"][ru] for _, r in wise], [r["mean"][en] for _, r in wise],
                        xerr=[r["std"][ru] for _, r in wise], yerr=[r["std"][en] for _, r in wise], fmt="-o",
                        color="0.6", ms=4, capsize=2, label="WiSE-FT (base → plain)", zorder=1)
            for a, r in wise:
                ax.annotate(f"α={a:g}", (r["mean"][ru], r["mean"][en]), textcoords="offset points",
                            xytext=(4, -10), fontsize=7, color="0.4")
        for name, r in table.items():
            if not name.startswith("wise_ft@"):
                ax.errorbar(r["mean"][ru], r["mean"][en], xerr=r["std"][ru], yerr=r["std"][en], fmt="o", ms=7,
                            capsize=3, label=name, zorder=2)
        ax.set_xlabel(f"target: Russian {label}")
        ax.set_ylabel(f"kept: English {label}")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="lower left")
    seeds = f"mean ± std over {n_seeds} seeds" if n_seeds > 1 else "one seed"
    fig.suptitle(f"Fine-tuning the quickstart model to Russian captions: gained vs kept (same steps; {seeds})")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
