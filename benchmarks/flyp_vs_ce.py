"""FLYP against cross-entropy fine-tuning with a zero-shot-initialised head, on scene labels held out of pre-training.

Starts from the quickstart model (trained on the synthetic world in English, ``clipforge quickstart``) and fine-tunes
it on the world's held-out colour × shape pairs (the ``composition`` task), written as class folders by
``clipforge.train.flyp.write_synthetic_class_folders``: the train folder from the world's val split, the test folder
from its test split. Recipes, each at one budget (steps, batch) and for each seed:

- ``flyp``: ``configs/finetune_flyp.yaml``, the contrastive loss against the class prompts;
- ``ce``: ``configs/finetune_classifier.yaml``, cross-entropy with the head started as the zero-shot classifier;
- ``ce_zeros``: the same with ``classifier.init=zeros`` (a head learnt from nothing);
- ``ce_probe``: the same with ``lock=image`` (the head alone trains: a zero-shot-initialised linear probe);
- ``wise_flyp@α`` / ``wise_ce@α``: WiSE-FT, the zero-shot model (with its zero-shot head for ``ce``) and the
  fine-tune interpolated weight by weight (``merge_models``, the head by ``torch.lerp``).

Target: accuracy on the test folder's composition classes (the head for ``ce*``, the class prompts otherwise). Kept:
the world's English zero-shot shape, colour and count tasks and caption retrieval R@1 on its test split, scored with
the class prompts and the (untouched, for ``ce*``) text tower. Prints JSON: per seed, then mean and std.

    clipforge quickstart
    python benchmarks/flyp_vs_ce.py --base runs/quickstart/final --seeds 0 1 2 --plot docs/images/flyp-vs-ce.png
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
FLYP = ROOT / "configs/finetune_flyp.yaml"
CE = ROOT / "configs/finetune_classifier.yaml"
RECIPES: dict[str, tuple[Path, dict[str, Any]]] = {
    "flyp": (FLYP, {}),
    "ce": (CE, {}),
    "ce_zeros": (CE, {"classifier.init": "zeros"}),
    "ce_probe": (CE, {"lock": "image"}),
}
KEPT = ("zeroshot/shape", "zeroshot/colour", "zeroshot/count", "retrieval/text_retrieval_recall@1",
        "retrieval/image_retrieval_recall@1")


def train_recipe(name: str, base: str, data: Path, out: Path, steps: int, batch_size: int, seed: int
                 ) -> tuple[Path, dict[str, Any]]:
    """Trains recipe ``name`` from ``base`` on ``data/train`` into ``out/<name>-s<seed>``; its ``final/`` and facts."""
    from clipforge.train import init_runtime, load_config, train

    path, extra = RECIPES[name]
    templates = str(data / "templates.txt")
    overrides: dict[str, Any] = {**extra, "model": base, "output_dir": str(out / f"{name}-s{seed}"), "seed": seed,
                                 "steps": steps, "batch_size": batch_size, "checkpoint_every": steps,
                                 "eval.every": 0, "eval.sets": [], "data.path": str(data / "train"),
                                 "plots": False, "schedule.warmup_steps": max(1, steps // 15)}  # 20 of 300
    key = "classifier.templates" if path == CE else "data.captions_from_labels.templates"
    overrides[key] = templates
    config = load_config(path, overrides)
    start = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # the run's log lines; stdout is the JSON
        result = train(config, init_runtime())
    info = {"seconds": round(time.perf_counter() - start, 1), "steps": result.step,
            "config": str(path.relative_to(ROOT)),
            "overrides": {k: v for k, v in overrides.items() if k not in ("model", "output_dir", "data.path", key)}}
    return Path(result.run_dir) / "final", info


class Evaluator:
    """The target (composition on the test folder) and the kept tasks (the world's English tasks), for one base."""

    def __init__(self, base_dir: str, data: Path, size: int, retrieval_size: int):
        import clipforge
        from clipforge.data.config import SyntheticDataConfig
        from clipforge.data.synthetic import SyntheticWorld
        from clipforge.eval.tasks import open_task_data
        from clipforge.train.evaluate import build_eval_sets
        from clipforge.transforms import model_transforms

        self.base, self.eval_tf, self.tokenizer = clipforge.load(base_dir)
        _, eval_tf = model_transforms(self.base.config)
        world = SyntheticWorld(SyntheticDataConfig(seed=0).world_config(self.base.config.vision.image_size))
        self.kept_sets = build_eval_sets(world, eval_tf, size, retrieval_size, ("en",), "test")
        self.target = open_task_data(str(data / "test"), "zeroshot")
        self.classnames = [c.replace("_", " ") for c in sorted(p.name for p in (data / "test").iterdir()
                                                                 if p.is_dir())]
        self.templates = (data / "templates.txt").read_text(encoding="utf-8").split("\n")
        self.templates = [t for t in self.templates if t.strip()]
        self.device = torch.device("cpu")

    def __call__(self, model: torch.nn.Module, head: torch.Tensor | None = None) -> dict[str, float]:
        """``target`` (composition acc1: with ``head`` (classes × width) if given, else the class prompts) and
        the kept metrics."""
        from clipforge.eval import EvalModel
        from clipforge.eval.zeroshot import evaluate_zeroshot
        from clipforge.train.evaluate import eval_mode, evaluate_languages

        with eval_mode(model), torch.no_grad():
            scorer = EvalModel(model, self.eval_tf, self.tokenizer, self.device)
            weights = None if head is None else head.T
            target = evaluate_zeroshot(scorer, self.target, self.classnames, self.templates, use_cache=False,
                                       weights=weights).metrics["acc1"]
        kept = evaluate_languages(model, self.kept_sets, self.tokenizer, self.device)
        return {"target": round(float(target), 4), **{k: round(kept[k], 4) for k in KEPT}}


def summarise(per_seed: dict[str, list[dict[str, float]]]) -> dict[str, dict[str, dict[str, float]]]:
    """Mean and (sample) standard deviation of each metric over the seeds."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for name, runs in per_seed.items():
        out[name] = {}
        for key in runs[0]:
            values = [r[key] for r in runs]
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            out[name][key] = {"mean": round(statistics.fmean(values), 4), "std": round(std, 4)}
    return out


def main(argv: list[str]) -> int:
    import clipforge
    from clipforge.checkpoints.merge import merge_models
    from clipforge.train.classify import load_classifier, zero_shot_head
    from clipforge.train.flyp import write_synthetic_class_folders

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="runs/quickstart/final", help="the English-trained model to start from")
    parser.add_argument("--out", default=None, help="folder for the data and runs (default: a temporary one)")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--images", type=int, default=500, help="images per split of the class folders")
    parser.add_argument("--language", default="en", help="the class names' language (ru: names never seen)")
    parser.add_argument("--alphas", default="0.25,0.5,0.75", help="WiSE-FT alphas between the ends")
    parser.add_argument("--recipes", default=",".join(RECIPES), help=f"comma-separated, of {list(RECIPES)}")
    parser.add_argument("--eval-size", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--plot", default=None, help="write the target-vs-kept plot (PNG) here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    names = [n for n in args.recipes.split(",") if n]
    if unknown := [n for n in names if n not in RECIPES]:
        parser.error(f"--recipes: unknown {unknown}; expected some of {list(RECIPES)}")
    alphas = [float(a) for a in args.alphas.split(",") if a]
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="flyp_vs_ce_"))
    data = out / "data"
    if not (data / "templates.txt").is_file():
        write_synthetic_class_folders(data, size=args.images, language=args.language)
    evaluate = Evaluator(args.base, data, args.eval_size, args.eval_size // 2)
    base = evaluate.base
    zs_head = zero_shot_head(base, evaluate.classnames, evaluate.templates, evaluate.eval_tf, evaluate.tokenizer,
                             evaluate.device).weight.detach()

    per_seed: dict[str, list[dict[str, float]]] = {"zero-shot": [evaluate(base)]}
    runs: dict[str, Any] = {}
    for seed in args.seeds:
        for name in names:
            final, runs[f"{name}-s{seed}"] = train_recipe(name, args.base, data, out, args.steps, args.batch_size,
                                                          seed)
            if name.startswith("ce"):
                model, head, classnames, _, _ = load_classifier(final)
                assert classnames == evaluate.classnames, (classnames, evaluate.classnames)
                per_seed.setdefault(name, []).append(evaluate(model, head.weight.detach()))
                if name == "ce":
                    for a in alphas:
                        merged_head = torch.lerp(zs_head, head.weight.detach(), a)
                        per_seed.setdefault(f"wise_ce@{a:g}", []).append(
                            evaluate(merge_models(base, model, a), merged_head))
            else:
                model = clipforge.load(str(final))[0]
                per_seed.setdefault(name, []).append(evaluate(model))
                if name == "flyp":
                    for a in alphas:
                        per_seed.setdefault(f"wise_flyp@{a:g}", []).append(evaluate(merge_models(base, model, a)))
            print(f"seed {seed} {name}: {per_seed[name][-1]}", file=sys.stderr)
    result = {"base": args.base, "steps": args.steps, "batch_size": args.batch_size, "seeds": args.seeds,
              "images_per_split": args.images, "language": args.language, "classes": evaluate.classnames,
              "runs_dir": str(out), "runs": runs,
              "summary": summarise(per_seed), "per_seed": per_seed}
    print(json.dumps(result, indent=1, default=str))
    if args.plot:
        plot(result["summary"], alphas, args.plot, args.language)
    return 0


def plot(summary: dict[str, dict[str, dict[str, float]]], alphas: list[float], path: str, language: str = "en") -> None:
    """Target accuracy against the mean kept zero-shot accuracy (shape, colour, count): mean ± std per recipe,
    the WiSE-FT curves from zero-shot (α 0) to each fine-tune (α 1)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def point(name: str) -> tuple[float, float, float, float]:
        s = summary[name]
        kept = [s[k]["mean"] for k in KEPT[:3]]
        kept_std = [s[k]["std"] for k in KEPT[:3]]
        return s["target"]["mean"], sum(kept) / 3, s["target"]["std"], sum(kept_std) / 3

    colours = {"zero-shot": "0.3", "flyp": "tab:blue", "ce": "tab:orange", "ce_zeros": "tab:red",
               "ce_probe": "tab:purple"}
    fig, ax = plt.subplots(figsize=(8.4, 4.6))
    for fine in ("flyp", "ce"):
        curve = ["zero-shot", *[f"wise_{fine}@{a:g}" for a in alphas], fine]
        if all(n in summary for n in curve):
            xs, ys = zip(*[point(n)[:2] for n in curve], strict=True)
            ax.plot(xs, ys, "--", marker=".", color=colours[fine], alpha=0.5, label=f"WiSE-FT (zero-shot → {fine})")
    for name in summary:
        if "@" in name:
            continue
        x, y, dx, dy = point(name)
        ax.errorbar(x, y, xerr=dx, yerr=dy, fmt="o", ms=7, capsize=3, label=name, color=colours.get(name))
    ax.set_xlabel("target: held-out colour × shape classes, accuracy")
    ax.set_ylabel("kept: mean English zero-shot accuracy (shape, colour, count)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title(f"FLYP vs cross-entropy fine-tuning of the quickstart model (class names: {language})", fontsize=10)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
