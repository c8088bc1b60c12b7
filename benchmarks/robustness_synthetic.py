"""Effective robustness on the synthetic world: zero-shot vs linear probes on the same features, under style shifts.

The CLIP paper's claim (Radford et al. 2021, §3.3, Figure 14): zero-shot CLIP loses much less accuracy under
distribution shift than a classifier fitted to the in-distribution data, even one fitted on CLIP's own features. This
script measures it on data anyone can regenerate: the quickstart model's shape task on the world's test scenes (the
in-distribution set) and on the same scenes drawn six other ways (``clipforge.data.synthetic.shifts``).

Points: zero-shot, a logistic-regression probe on the world's ``val`` scenes (all of them, C chosen on a held-out
part), and probes on k scenes per class (k = 1, 2, 4, ...: the "models trained on the ID data" at lower ID accuracy).
The trend line per shift is fitted over the probes on logit axes (Taori et al.'s baseline: models trained on the
in-distribution data); each point's effective robustness is its shifted accuracy above that line. Every head scores
the same features: each set is embedded once.

Run::

    python benchmarks/robustness_synthetic.py --model runs/quickstart/final \\
        --plot docs/images/robustness-synthetic.png --examples docs/images/robustness-shifts.png

Prints one JSON object (the settings, every point, the lines, and per shift the zero-shot and full-probe figures).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch


def examples_grid(path: Path, n: int = 6) -> None:
    """The first ``n`` test scenes, plain and under every shift, as one PNG (rows: scenes; columns: styles)."""
    from PIL import Image, ImageDraw

    from clipforge.data.synthetic import SyntheticWorld
    from clipforge.data.synthetic.shifts import SHIFTS, shifted_sample

    world = SyntheticWorld()
    cell, head = 96, 16
    columns = ("id", *SHIFTS)
    grid = Image.new("RGB", (cell * len(columns), head + cell * n), "white")
    draw = ImageDraw.Draw(grid)
    for c, name in enumerate(columns):
        draw.text((c * cell + 4, 2), name, fill="black")
        for r in range(n):
            image = world.sample("test", r).image if name == "id" else shifted_sample(world, "test", r, name).image
            grid.paste(image.resize((cell, cell), Image.NEAREST), (c * cell, head + r * cell))
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="runs/quickstart/final")
    ap.add_argument("--size", type=int, default=1000, help="test scenes per set (default: 1000)")
    ap.add_argument("--train-size", type=int, default=1000, help="val scenes the probes train on (default: 1000)")
    ap.add_argument("--k-shot", default="1,2,4,8,16,32", help="fewer-data probes (default: 1,2,4,8,16,32)")
    ap.add_argument("--task", default="shape", help="the world's zero-shot task (default: shape)")
    ap.add_argument("--seed", type=int, default=0, help="of the probes' validation split and k-shot draws")
    ap.add_argument("--plot", default=None, help="write the OOD-vs-ID plot here")
    ap.add_argument("--examples", default=None, help="write a grid of the shifted scenes here")
    args = ap.parse_args()
    torch.set_num_threads(1)

    from clipforge.data.synthetic.shifts import SHIFTS, write_shift_folders
    from clipforge.eval.datasets import ImageFolder
    from clipforge.eval.loading import load_eval_model
    from clipforge.eval.prompts import read_lines
    from clipforge.eval.robustness import class_mapping, fit_trends, measure_model, plot_robustness, robustness_table

    start = time.time()
    k_shots = tuple(int(k) for k in args.k_shot.split(",") if k)
    model, name, pretrained = load_eval_model(args.model, "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        written = write_shift_folders(root, size=args.size, task=args.task, train_size=args.train_size)
        id_ds = ImageFolder(root / "id")
        classnames = [c.replace("_", " ") for c in id_ds.classes]
        templates = read_lines(root / "templates.txt", "templates")
        shifts = {}
        for s in SHIFTS:
            ds = ImageFolder(root / s)
            shifts[s] = (ds, class_mapping(s, ds.classes, id_ds.classes))
        points = measure_model(model, name, pretrained, id_ds, shifts, classnames, templates,
                               ImageFolder(root / "train"), k_shots, batch_size=100, use_cache=False, seed=args.seed)
    fits = fit_trends(points, lambda p: p.head == "linear_probe", source="fit over the probes")
    table = robustness_table(points, fits)
    zs, probe = points[0], points[1]
    summary = {}
    for s in SHIFTS:
        z, p = table[zs.label][s], table[probe.label][s]
        summary[s] = {"zeroshot": {"id_acc1": z["id_acc"], "acc1": z["acc"], "drop": z["id_acc"] - z["acc"],
                                   "effective_robustness": z["effective_robustness"]},
                      "probe": {"id_acc1": p["id_acc"], "acc1": p["acc"], "drop": p["id_acc"] - p["acc"],
                                "effective_robustness": p["effective_robustness"]},
                      "line": {"slope": fits[s].slope, "intercept": fits[s].intercept}}
    out = {
        "model": args.model, "task": args.task, "sizes": written, "k_shots": list(k_shots), "seed": args.seed,
        "fit": "least squares on logit axes over the linear probes (full and k-shot)",
        "id_acc1": {p.label: p.id_acc for p in points},
        "probe_C": probe.extra["C"],
        "summary": summary,
        "mean_effective_robustness": {
            "zeroshot": sum(v["zeroshot"]["effective_robustness"] for v in summary.values()) / len(summary),
            "probe": sum(v["probe"]["effective_robustness"] for v in summary.values()) / len(summary)},
        "points": {p.label: table[p.label] for p in points},
        "seconds": round(time.time() - start, 1),
    }
    if args.plot:
        out["plot"] = str(plot_robustness(points, fits, args.plot,
                                          f"{args.model}: {args.task} task, zero-shot (★) vs probes (●)"))
    if args.examples:
        examples_grid(Path(args.examples))
        out["examples"] = args.examples
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
