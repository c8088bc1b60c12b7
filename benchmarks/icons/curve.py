"""The icon benchmark's learning curve: ``compare.py``'s rows trained on each nested training subset (issue #20).

Every row trains on each learning-curve subset of a ``benchmarks/icons/build.py`` output (``<size>px/curve/<n>/``,
the first ``n`` training pairs) and on the full training set, always for the same sample budget (steps × batch):
a small subset is seen many times over, which is what the curve measures (how much each recipe gets from few
pairs, and how fast it overfits them). The subsets and their pair counts come from ``manifest.json``
(``data.<size>.curve``). Rows, shape, budget and seeds are ``compare.py``'s (the same arguments); OpenCLIP's row
reads a white-composited copy of each subset (``compare.open_clip_shards``), written once per subset and removed
after it.

    python benchmarks/icons/curve.py --data /tmp/icons-out --work /tmp/icons-curve --rows openclip clipforge clippo \\
        --seeds 0 1 2 --plot /tmp/icons-curve.png --open-clip-pythonpath /tmp/ocshim:/tmp/octrain-deps > curve.json
    python benchmarks/icons/curve.py --plot-from curve.json --plot curve.png    # redraw only, no training

Prints JSON: the shared setup, and per subset (keyed by its pair count) the pairs, the passes over them, per row
and seed the scores, and the mean ± std per row with ratios to each row's anchor. The same JSON is rewritten in
``<work>/curve.json`` after every run, so an interrupted curve keeps what it finished. ``--plot`` draws cross-style
and unseen-concept top-1 against training pairs (log axis), one line per row with ± std error bars.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compare  # this folder's module, next to the script

PLOTTED = {"cross_style_top1": "cross-style top-1 (%)", "unseen_concepts_top1": "unseen-concept top-1 (%)"}


def curve_subsets(data: Path, size: int) -> list[tuple[int, Path]]:
    """The learning curve's training folders, fewest pairs first: ``(pairs, folder)`` for each entry of
    ``manifest.json``'s ``data.<size>.curve`` (the nested subsets and the full training set).

    Raises:
        ValueError: The manifest has no curve for ``size``, or a subset's shards hold another number of pairs
            (their ``stats.json``).
        FileNotFoundError: The manifest or a subset's folder is missing.
    """
    path = data / "manifest.json"
    manifest = json.loads(path.read_text(encoding="utf-8"))
    try:
        curve = manifest["data"][str(size)]["curve"]
    except (KeyError, TypeError):
        raise ValueError(f"{path}: no data.{size}.curve (expected a build.py --out with --sizes {size})") from None
    subsets = []
    for key, rel in curve.items():
        pairs, folder = int(key), data / rel
        if not folder.is_dir():
            raise FileNotFoundError(f"{path}: data.{size}.curve.{key}: no folder {folder}")
        stats = folder / "stats.json"
        if stats.exists():
            samples = json.loads(stats.read_text(encoding="utf-8"))["samples"]
            if samples != pairs:
                raise ValueError(f"{stats}: {samples} samples, but {path} says {pairs} pairs for data.{size}.curve")
        subsets.append((pairs, folder))
    return sorted(subsets)


def summarise_curve(results: Mapping[str, Mapping[str, list[dict[str, float]]]],
                    anchors: Mapping[str, str]) -> dict[str, Any]:
    """Per subset, ``compare.summarise`` of its rows' per-seed scores (the ``seed`` entries left out).

    Args:
        results: Subset (its pair count, as a string) → row → one dict of scores per seed.
        anchors: Row → the row its ratios divide by.
    """
    return {n: compare.summarise({row: [{k: v for k, v in s.items() if k != "seed"} for s in seeds]
                                  for row, seeds in rows.items()}, anchors=anchors)
            for n, rows in results.items()}


def curve_json(header: Mapping[str, Any], subsets: Sequence[tuple[int, Path]],
               results: Mapping[str, Mapping[str, list[dict[str, float]]]], samples: int) -> dict[str, Any]:
    """The curve's JSON: ``header`` (the setup), the subset sizes, and per subset its pairs, passes, folder, per-seed
    results and summary (:func:`summarise_curve`)."""
    anchors = header.get("anchors", {})
    summary = summarise_curve(results, anchors)
    curve = {str(pairs): {"pairs": pairs, "passes": round(samples / pairs, 2), "folder": str(folder),
                          "results": results.get(str(pairs), {}), "summary": summary.get(str(pairs), {})}
             for pairs, folder in subsets}
    return {**header, "sizes": [pairs for pairs, _ in subsets], "curve": curve}


def run_curve(setup: compare.Setup, rows: Sequence[str], recipes: Mapping[str, Mapping[str, Any]],
              subsets: Sequence[tuple[int, Path]], seeds: Sequence[int], work: Path, jobs: int = 1) -> dict[str, Any]:
    """Runs every row and seed on every subset (subsets outside: OpenCLIP's copy of one is written once), ``jobs``
    training processes at once; rewrites ``work/curve.json`` after each run and returns the JSON (:func:`curve_json`).

    The full training set's runs live in ``work`` itself, where ``compare.py --work`` puts them, so a curve given
    the comparison's work folder reads those runs back instead of training them again; subset ``n``'s in
    ``work/curve/<n>``."""
    from concurrent.futures import ThreadPoolExecutor

    header = {**compare.describe(setup, rows, recipes), "seeds": list(seeds)}
    results: dict[str, dict[str, list[dict[str, float]]]] = {}
    started = time.perf_counter()
    work.mkdir(parents=True, exist_ok=True)
    for pairs, folder in subsets:
        sub_work = work if folder.name == "train" else work / "curve" / str(pairs)
        if compare.OPENCLIP in rows:  # its shard copy, once, before any job needs it
            compare.open_clip_inputs(folder, sub_work / "open_clip_shards", pairs, setup.samples)
        runs = [(seed, row) for seed in seeds for row in rows]

        def one(run: tuple[int, str], folder: Path = folder, pairs: int = pairs,
                sub_work: Path = sub_work) -> dict[str, float]:
            scores = compare.run_row(setup, run[1], recipes, folder, pairs, sub_work, run[0])
            print(f"[curve] {pairs} pairs, {run[1]} seed {run[0]}: {scores}", file=sys.stderr, flush=True)
            return scores

        with ThreadPoolExecutor(max(1, jobs)) as pool:
            for (seed, row), scores in zip(runs, pool.map(one, runs), strict=True):
                results.setdefault(str(pairs), {}).setdefault(row, []).append({"seed": seed, **scores})
                out = curve_json(header, subsets, results, setup.samples)
                (work / "curve.json").write_text(json.dumps(out, indent=1), encoding="utf-8")
        if sub_work is not work:
            shutil.rmtree(sub_work / "open_clip_shards", ignore_errors=True)  # a pass per sample budget: large
    return {**curve_json(header, subsets, results, setup.samples), "wall_s": round(time.perf_counter() - started, 1)}


def plot_curve(result: Mapping[str, Any], path: Path) -> Path:
    """Draws cross-style and unseen-concept top-1 (in %) against training pairs (log axis) from a curve JSON: one
    line per row, ± std error bars; writes a PNG at ``path`` and returns it.

    Raises:
        ValueError: The JSON has no ``curve`` entry with results (not a ``curve.py`` output).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullLocator

    curve = result.get("curve")
    if not isinstance(curve, dict) or not any(entry.get("summary") for entry in curve.values()):
        raise ValueError("not a curve.py result: expected a 'curve' entry with per-subset summaries")
    entries = sorted(curve.values(), key=lambda e: e["pairs"])
    rows = list(dict.fromkeys([*result.get("rows", []), *(r for e in entries for r in e["summary"])]))
    fig, axes = plt.subplots(1, len(PLOTTED), figsize=(5.5 * len(PLOTTED), 4.2))
    for ax, (metric, label) in zip(axes, PLOTTED.items()):
        for row in rows:
            points = [(e["pairs"], 100 * e["summary"][row][metric]["mean"], 100 * e["summary"][row][metric]["std"])
                      for e in entries if metric in e["summary"].get(row, {})]
            if points:
                x, y, err = zip(*points)
                ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=row)
        ax.set_xscale("log")
        ax.set_xticks([e["pairs"] for e in entries], [f"{e['pairs']:,}" for e in entries])  # the subsets' sizes
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xlabel("training pairs")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=8)
    seeds = result.get("seeds", [])
    fig.suptitle(f"icons {result.get('image_size', '?')} px, {result.get('model', '?')}, "
                 f"{result.get('samples', '?')} samples per run, {len(seeds)} seed(s): mean ± std", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the curve (or only redraws a saved one with ``--plot-from``), prints the JSON, draws ``--plot``."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    compare.add_arguments(p)
    p.add_argument("--subsets", type=int, nargs="+", help="only these subset sizes of the manifest (default: all)")
    p.add_argument("--plot", type=Path, help="write the PNG here")
    p.add_argument("--plot-from", type=Path, help="a saved curve JSON: redraw it to --plot, train nothing")
    args = p.parse_args(argv)
    if args.plot_from is not None:
        if args.plot is None:
            p.error("--plot-from needs --plot (where the PNG goes)")
        try:
            plot_curve(json.loads(args.plot_from.read_text(encoding="utf-8")), args.plot)
        except (OSError, ValueError) as e:
            p.error(f"argument --plot-from: {args.plot_from}: {e}")
        print(f"[curve] wrote {args.plot}", file=sys.stderr)
        return 0
    setup, recipes = compare.parse_setup(p, args)
    try:
        subsets = curve_subsets(args.data, args.size)
    except (OSError, ValueError) as e:
        p.error(f"argument --data: {e}")
    if args.subsets:
        missing = sorted(set(args.subsets) - {n for n, _ in subsets})
        if missing:
            p.error(f"argument --subsets: {missing} are not in the manifest's curve {[n for n, _ in subsets]}")
        subsets = [(n, folder) for n, folder in subsets if n in args.subsets]
    result = run_curve(setup, args.rows, recipes, subsets, args.seeds, args.work, args.jobs)
    print(json.dumps(result, indent=1))
    if args.plot is not None:
        plot_curve(result, args.plot)
        print(f"[curve] wrote {args.plot}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
