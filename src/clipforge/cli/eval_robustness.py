"""``clipforge eval robustness``: effective robustness (Taori et al. 2020; CLIP paper §3.3) of one or more models.

Each model is scored zero-shot (and with ``--linear-probe``, by logistic regressions on its frozen features trained on
``--train-data``, the in-distribution training split) on the in-distribution set ``--id`` and on every ``--shift
NAME=DATA``, a set of the same classes under a distribution shift. A shifted set that covers only some of the
classes is scored with the logits restricted to those classes, and its point's in-distribution accuracy is measured on
the same classes. Then, per shift, a line is fitted to OOD against ID accuracy on logit axes, and every point's
effective robustness (its accuracy above the line) is printed.

Examples::

    clipforge eval robustness --model runs/quickstart/final --id shifts/id --templates shifts/templates.txt \\
        --shift outline=shifts/outline --shift sketch=shifts/sketch \\
        --linear-probe --train-data shifts/train --k-shot 1,2,4,8 --fit probes --output results/robustness
    clipforge eval robustness --model ViT-B-32:openai --model RN50:openai --id imagenet/val --classnames imagenet \\
        --templates imagenet --shift imagenet-v2=imagenetv2-matched-frequency --shift imagenet-r=imagenet-r \\
        --shift imagenet-a=imagenet-a --shift imagenet-sketch=sketch --shift objectnet=objectnet-1.0/images \\
        --fit baseline --output results/robustness

A shift named ``imagenet-v2``, ``imagenet-sketch``, ``imagenet-r``, ``imagenet-a`` or ``objectnet`` reads its folders
with that benchmark's shipped class mapping (``--id`` must then be ImageNet's WordNet-id folders); any other shifted
set's class folders must carry names of ``--id``'s classes. ``--fit``: ``all`` (a line over every point given),
``probes`` (over the linear probes: the models trained on the ID data, as Taori et al.'s baseline), ``zeroshot``,
``baseline`` (the shipped ImageNet lines, fitted over imagenet-testbed's standard models), or a JSON file
``{"SHIFT": {"slope": s, "intercept": b}}``.

Writes ``OUTPUT/<model>.json`` (CLIP_benchmark-style records, one per head and set), ``OUTPUT/robustness.json`` (the
points, the lines and each point's effective robustness) and ``OUTPUT/robustness.png`` (the plot).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from clipforge.cli.args import ACTIVATIONS, non_negative_int, positive_int, whole_numbers
from clipforge.data.decode import ALPHA_RULES

FITS = ("all", "probes", "zeroshot", "baseline")


def shift_arg(text: str) -> tuple[str, str]:
    """An argparse type: ``NAME=DATA`` → ``(NAME, DATA)``, both non-empty, NAME without ``/``."""
    name, sep, data = text.partition("=")
    name = name.strip()
    if not sep or not name or not data or "/" in name:
        raise argparse.ArgumentTypeError(f"expected NAME=DATA (e.g. imagenet-r=/data/imagenet-r), got {text!r}")
    return name, data


def register(tasks: argparse._SubParsersAction) -> None:
    """Adds the ``robustness`` task to the ``eval`` verb's tasks."""
    p = tasks.add_parser("robustness", help="effective robustness: OOD vs ID accuracy of zero-shot and probes",
                         description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", required=True,
                   help="a model (as eval zeroshot's --model); repeat for several")
    p.add_argument("--id", dest="id_data", required=True, metavar="DATA",
                   help="the in-distribution evaluation set (image folder, table or CLIP_benchmark webdataset)")
    p.add_argument("--shift", action="append", type=shift_arg, required=True, metavar="NAME=DATA",
                   help="a shifted set of the same classes; repeat for several")
    p.add_argument("--classnames", default=None, help="class names of --id: a built-in set or a file "
                                                      "(default: its own)")
    p.add_argument("--templates", default=None, help="prompt templates: a built-in set or a file (default: the "
                                                     "dataset's, else imagenet)")
    p.add_argument("--linear-probe", action="store_true",
                   help="also score logistic-regression probes on the model's features, trained on --train-data")
    p.add_argument("--train-data", default=None, help="the in-distribution training split (with --linear-probe)")
    p.add_argument("--k-shot", type=whole_numbers(1), default=(),
                   help="also probes trained on k images per class, comma-separated (e.g. 1,2,4,8): points lower on "
                        "the ID axis for the trend")
    p.add_argument("--fit", default="all", metavar="FIT",
                   help=f"the trend line: {', '.join(FITS)} or a JSON file (default: all)")
    p.add_argument("--output", required=True, metavar="DIR", help="where the results and the plot go")
    p.add_argument("--split", default="test", help="shard sub-folder of webdataset sets (default: test)")
    p.add_argument("--alpha", choices=ALPHA_RULES, default="white", help="transparent images (as eval zeroshot)")
    p.add_argument("--batch-size", type=positive_int, default=64, help="images per batch, ≥ 1 (default: 64)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="of the probes' validation split and k-shot "
                                                                    "draws (default: 0)")
    p.add_argument("--device", default=None, help="cpu, cuda, … (default: cuda if available)")
    p.add_argument("--allow-pickle", action="store_true", help="allow a pickled checkpoint as --model")
    p.add_argument("--act", choices=ACTIVATIONS, default=None, help="MLP activation of an OpenAI/open_clip --model")
    p.add_argument("--cache-dir", default=None, help="cache root (default: $CLIPFORGE_CACHE or ~/.cache/clipforge)")
    p.add_argument("--no-classifier-cache", action="store_true", help="rebuild the zero-shot classifiers")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=run_robustness)


def _open(args: argparse.Namespace, data: str, what: str) -> Any:
    from clipforge.eval.tasks import open_task_data

    try:
        return open_task_data(data, "zeroshot", split=args.split, alpha=args.alpha)
    except (OSError, ValueError) as e:
        raise ValueError(f"{what}: {e}") from None


def _fits(args: argparse.Namespace, points: list[Any], shift_names: list[str]) -> dict[str, Any]:
    from clipforge.eval.robustness import LinearFit, baseline_fits, fit_trends

    if args.fit == "baseline":
        shipped = baseline_fits()
        missing = [n for n in shift_names if n not in shipped]
        if missing:
            raise ValueError(f"--fit baseline: no shipped line for {', '.join(missing)} (shipped: "
                             f"{', '.join(shipped)}); use --fit all, probes or a JSON file")
        return {n: shipped[n] for n in shift_names}
    if args.fit in FITS:
        select = {"all": None, "probes": lambda p: p.head == "linear_probe",
                  "zeroshot": lambda p: p.head == "zeroshot"}[args.fit]
        try:
            return fit_trends(points, select, source=f"fit over {args.fit}")
        except ValueError as e:
            raise ValueError(f"--fit {args.fit}: {e}; give more models, --k-shot probes, --fit baseline or a "
                             "JSON file of lines") from None
    path = Path(args.fit)
    if not path.is_file():
        raise ValueError(f"--fit: expected one of {', '.join(FITS)} or a JSON file, got {args.fit!r}")
    try:
        given = json.loads(path.read_text(encoding="utf-8"))
        fits = {n: LinearFit(float(given[n]["slope"]), float(given[n]["intercept"]), 0, str(path))
                for n in shift_names}
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"--fit {path}: expected {{\"SHIFT\": {{\"slope\": s, \"intercept\": b}}}} for every "
                         f"shift ({', '.join(shift_names)}): {e!r}") from None
    return fits


def _records(points: list[Any], table: dict[str, Any], id_name: str) -> list[dict[str, Any]]:
    from clipforge.eval.results import result_record

    records = []
    for p in points:
        zs = p.head == "zeroshot"
        task, key = ("zeroshot_classification", "acc1") if zs else ("linear_probe", "lp_acc1")
        base = {"head": p.label, **p.extra}
        records.append(result_record(id_name, p.model, p.pretrained, task, {key: p.id_acc}, n_samples=p.n_id,
                                     extra={**base, "set": "id"}))
        for s, q in p.shifts.items():
            row = table[p.label][s]
            metrics = {key: q.acc, f"id_{key}_on_classes": q.id_acc, "expected_" + key: row["expected"],
                       "effective_robustness": row["effective_robustness"], "logit_distance": row["logit_distance"]}
            records.append(result_record(s, p.model, p.pretrained, task, metrics, n_samples=q.n,
                                         extra={**base, "set": "shift", "n_id_on_classes": q.n_id}))
    return records


def run_robustness(args: argparse.Namespace) -> int:
    """Scores every model's heads on ``--id`` and each ``--shift``; fits the trend; writes results and the plot."""
    from clipforge.eval.loading import load_eval_model
    from clipforge.eval.prompts import load_classnames, load_templates
    from clipforge.eval.results import write_results
    from clipforge.eval.robustness import class_mapping, measure_model, plot_robustness, robustness_table
    from clipforge.eval.tasks import zeroshot_labels

    names = [n for n, _ in args.shift]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"--shift: the name {dup[0]!r} is given more than once")
    if args.linear_probe != bool(args.train_data):
        raise ValueError("--linear-probe and --train-data go together: the probes train on --train-data")
    if args.k_shot and not args.linear_probe:
        raise ValueError("--k-shot needs --linear-probe (it sets the size of further probes)")
    per_model = {"all": 1 + (1 + len(args.k_shot) if args.linear_probe else 0),
                 "probes": 1 + len(args.k_shot) if args.linear_probe else 0, "zeroshot": 1}.get(args.fit)
    if per_model is not None and per_model * len(args.model) < 2:
        raise ValueError(f"--fit {args.fit}: a line needs at least two points and these models and heads give "
                         f"{per_model * len(args.model)}; give more models, --linear-probe with --k-shot, "
                         "--fit baseline or a JSON file of lines")
    classnames = load_classnames(args.classnames) if args.classnames else None
    given_templates = load_templates(args.templates) if args.templates else None
    id_ds = _open(args, args.id_data, "--id")
    try:
        classnames, templates = zeroshot_labels(id_ds, args.id_data, classnames, given_templates)
    except ValueError as e:
        raise ValueError(f"--id: {e}") from None
    id_classes = list(id_ds.classes) if id_ds.classes else list(classnames)
    shifts = {}
    for name, data in args.shift:
        ds = _open(args, data, f"--shift {name}")
        if not ds.classes:
            raise ValueError(f"--shift {name}: {data} has no class list to match against --id's classes")
        shifts[name] = (ds, class_mapping(name, list(ds.classes), id_classes))
    train_ds = None
    if args.linear_probe:
        train_ds = _open(args, args.train_data, "--train-data")
        if train_ds.classes and list(train_ds.classes) != id_classes:
            raise ValueError(f"--train-data: its classes ({', '.join(train_ds.classes[:4])}, …) are not --id's "
                             f"({', '.join(id_classes[:4])}, …) in the same order; labels would not line up")
    cache = Path(args.cache_dir) / "zeroshot" if args.cache_dir else None
    points, labels = [], set()
    for spec in args.model:
        model, name, pretrained = load_eval_model(spec, args.device, args.allow_pickle, args.act)
        if name in labels:  # two checkpoints of one architecture: tell them apart by how they were given
            name = spec
        labels.add(name)
        points += measure_model(model, name, pretrained, id_ds, shifts, classnames, templates, train_ds,
                                args.k_shot, args.batch_size, not args.no_classifier_cache, cache, args.seed,
                                progress=not args.no_progress)
    fits = _fits(args, points, names)
    table = robustness_table(points, fits)
    out = Path(args.output)
    for model in dict.fromkeys(p.model for p in points):
        mine = [p for p in points if p.model == model]
        doc = {"model": model, "pretrained": mine[0].pretrained, "id": str(args.id_data),
               "results": _records(mine, table, str(args.id_data))}
        write_results(out / f"{re.sub(r'[^A-Za-z0-9._-]+', '_', model).strip('_') or 'model'}.json", doc)
    summary = {"id": str(args.id_data), "shifts": {n: str(d) for n, d in args.shift},
               "fits": {s: vars(f) for s, f in fits.items()},
               "points": [{"label": p.label, "model": p.model, "head": p.head, "id_acc1": p.id_acc, **p.extra,
                           "shifts": table[p.label]} for p in points]}
    write_results(out / "robustness.json", summary)
    plot = plot_robustness(points, fits, out / "robustness.png", f"effective robustness ({args.fit} fit)")
    width = max(len(p.label) for p in points)
    print(f"{'point':<{width}}  {'shift':<16} {'ID':>6} {'OOD':>6} {'line':>6} {'eff.rob.':>8}")
    for p in points:
        for s, row in table[p.label].items():
            print(f"{p.label:<{width}}  {s:<16} {row['id_acc']:6.1%} {row['acc']:6.1%} {row['expected']:6.1%} "
                  f"{row['effective_robustness']:+8.1%}")
    print(f"wrote {out}/robustness.json, {plot} and one JSON per model", file=sys.stderr)
    return 0
