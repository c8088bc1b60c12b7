"""The small-data recipe on the synthetic quickstart: configs/quickstart.yaml plain and with the recipe keys of
configs/small_data.yaml (issue #20's "no worse than the plain recipe on the quickstart"), side by side.

    python benchmarks/quickstart_recipes.py --work /tmp/qs-recipes --seeds 0 1 2 --jobs 2 --threads 1
    python benchmarks/quickstart_recipes.py --work /tmp/qs-recipes --seeds 0 --recipe-overrides declip.nn_weight=0

``--recipe-overrides`` (an ablation) changes the recipe row alone; it becomes its own row, named with them
(``recipe[declip.nn_weight=0]``), and its own run folders, so the same ``--work`` keeps the plain row's runs.

Each run is ``clipforge train`` in its own process on the quickstart config with ``seed`` set (initialisation and
data order; the synthetic world, ``data.seed``, and its evaluation sets stay the quickstart's). The ``recipe`` row
adds ``configs/small_data.yaml``'s recipe keys (``RECIPE_KEYS``), its learning rate and its batch, and nothing
else: same model, world, number of samples (the steps are the plain row's samples over the recipe's batch) and the
rest of the optimiser. The quickstart draws fresh scenes every step
(``data.augment: false``), so the recipe's main view is the unaugmented one and its extra views (SLIP's, DeCLIP's)
are the model's training crops. An ``augment`` that only acts on transparent images (``stroke``, ``fill``,
``backgrounds``) is left out: the scenes are opaque, so it would change nothing but need ``data.augment: true``,
whose crops the quickstart does not use.

Prints JSON: per row and seed the end-of-run zero-shot and retrieval scores and the wall time, the mean ± std per
row, and the recipe's means over the plain row's (``ratio_to_plain``). Runs already finished under ``--work`` (a
``scores.json`` beside the same ``train.yaml``) are read back, not trained again.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_name  # benchmarks/machine.py

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks" / "icons"))
import compare  # noqa: E402  # benchmarks/icons/compare.py: the runner's helpers

QUICKSTART = ROOT / "configs" / "quickstart.yaml"
SMALL_DATA = ROOT / "configs" / "small_data.yaml"
RECIPE_KEYS = ("augment", "text_augment", "slip", "declip", "label_smoothing")
RECIPE_OPTIM_KEYS = ("lr",)  # the recipe's learning rate (its other optimiser settings are the icon run's)
RECIPE_BATCH_KEY = "batch_size"  # the recipe's batch: the same samples in its number of steps
# ``augment`` options that act on transparent images alone: a no-op on the quickstart's opaque scenes.
TRANSPARENT_ONLY = frozenset({"stroke", "stroke_radius", "fill", "fill_opacity", "backgrounds"})


def recipe_keys(path: Path = SMALL_DATA) -> dict[str, Any]:
    """The recipe of a small-data config: its ``RECIPE_KEYS``, ``optim.lr`` and ``batch_size`` (the rest is the
    icon run's data, budget and optimiser)."""
    config = yaml.safe_load(path.read_text(encoding="utf-8"))
    found = {k: config[k] for k in RECIPE_KEYS if config.get(k) is not None}
    if not found:
        raise ValueError(f"{path}: none of {', '.join(RECIPE_KEYS)} is set; nothing to compare")
    optim = {k: v for k, v in (config.get("optim") or {}).items() if k in RECIPE_OPTIM_KEYS}
    if optim:
        found["optim"] = optim
    if config.get(RECIPE_BATCH_KEY) is not None:
        found[RECIPE_BATCH_KEY] = config[RECIPE_BATCH_KEY]
    return found


def row_configs(steps: int | None = None, recipe_overrides: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """``plain`` (the quickstart config) and ``recipe`` (it plus the small-data recipe, with ``recipe_overrides``:
    dotted ``key=value`` items applied to that row alone, for ablations), as config dicts."""
    from clipforge.config import apply_overrides, parse_overrides

    plain = yaml.safe_load(QUICKSTART.read_text(encoding="utf-8"))
    if steps is not None:
        plain["steps"] = steps
        plain["eval"] = {**plain["eval"], "every": 0}  # only the end-of-run evaluation
    keys = recipe_keys()
    if not plain["data"].get("augment", True) and set(keys.get("augment", {})) <= TRANSPARENT_ONLY:
        keys.pop("augment", None)  # it would need data.augment: true (crops the quickstart does not use) to do nothing
    recipe = compare.merge(plain, keys)
    if recipe_overrides:
        recipe = apply_overrides(recipe, parse_overrides(recipe_overrides), "--recipe-overrides")
    recipe["steps"] = compare.steps_at(plain["steps"], plain["batch_size"], recipe["batch_size"])  # plain's samples
    return {"plain": plain, "recipe": recipe}


def final_scores(run_dir: Path) -> dict[str, float]:
    """The end-of-run evaluation: every ``zeroshot/`` and ``retrieval/`` score of the last record holding one."""
    last: dict[str, float] = {}
    for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        scores = {k: float(v) for k, v in record.items() if k.startswith(("zeroshot/", "retrieval/"))}
        if scores:
            last = scores
    if not last:
        raise RuntimeError(f"{run_dir}/metrics.jsonl: no zeroshot/ or retrieval/ scores (did the evaluation run?)")
    return last


def train_run(config: dict[str, Any], run_dir: Path, seed: int, threads: int) -> dict[str, float]:
    """One run in its own process, or its memo (``scores.json``) when ``train.yaml`` is unchanged."""
    run_dir.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump({**config, "seed": seed, "output_dir": str(run_dir)})
    path, memo = run_dir / "train.yaml", run_dir / "scores.json"
    if memo.is_file() and path.is_file() and path.read_text(encoding="utf-8") == text:
        return json.loads(memo.read_text(encoding="utf-8"))
    memo.unlink(missing_ok=True)
    path.write_text(text, encoding="utf-8")
    start = time.perf_counter()
    compare.run([compare.CLIPFORGE, "train", "--config", str(path), "--device", "cpu", "--threads", str(threads)],
                run_dir / "train.log")
    scores = {**final_scores(run_dir), "train_s": round(time.perf_counter() - start, 1)}
    memo.write_text(json.dumps(scores), encoding="utf-8")
    return scores


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, required=True, help="the runs (outside the repo)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, help="shorter runs than the quickstart's (a smoke test; default: its own)")
    p.add_argument("--threads", type=int, default=1, help="torch threads of each run")
    p.add_argument("--jobs", type=int, default=1, help="runs at once")
    p.add_argument("--recipe-overrides", nargs="+", metavar="KEY=VALUE",
                   help="dotted config overrides of the recipe row alone (an ablation: declip.nn_weight=0)")
    p.add_argument("--rows", nargs="+", choices=["plain", "recipe"], default=["plain", "recipe"])
    args = p.parse_args(argv)
    rows = {k: v for k, v in row_configs(args.steps, args.recipe_overrides).items() if k in args.rows}
    if args.recipe_overrides and "recipe" in rows:  # its own row (and run folders), beside the shipped recipe's
        rows[f"recipe[{','.join(args.recipe_overrides)}]"] = rows.pop("recipe")
    tasks = [(row, seed) for seed in args.seeds for row in rows]
    start = time.perf_counter()
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        futures = {task: pool.submit(train_run, rows[task[0]], args.work / f"{task[0]}-seed{task[1]}", task[1],
                                     args.threads) for task in tasks}
        results: dict[str, list[dict[str, float]]] = {row: [] for row in rows}
        for (row, seed), future in futures.items():
            results[row].append({"seed": seed, **future.result()})
            print(f"[quickstart_recipes] {row} seed {seed} done", file=sys.stderr)
    summary = compare.summarise({row: [{k: v for k, v in r.items() if k != "seed"} for r in runs]
                                 for row, runs in results.items()}, anchor="plain")
    print(json.dumps({"benchmark": "quickstart_recipes", "machine": cpu_name(),
                      "torch": torch.__version__, "threads": args.threads, "jobs": args.jobs,
                      "steps": {row: config["steps"] for row, config in rows.items()},
                      "batch_size": {row: config["batch_size"] for row, config in rows.items()},
                      "recipe": recipe_keys(), "recipe_overrides": args.recipe_overrides or [],
                      "results": results, "summary": summary,
                      "wall_s": round(time.perf_counter() - start, 1)}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
