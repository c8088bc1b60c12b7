"""``clipforge train`` (a run from a YAML config plus dotted overrides) and ``clipforge quickstart``.

    clipforge train --config configs/tiny_synthetic.yaml optim.lr=1e-3 steps=200
    clipforge train --config configs/tiny_synthetic.yaml --resume latest
    torchrun --nproc_per_node=2 -m clipforge.cli.main train --config configs/tiny_synthetic.yaml
    clipforge quickstart            # tiny-rn on the synthetic world, on the CPU, in minutes
    clipforge quickstart --model clippo-tiny    # CLIPPO, captions in English, Russian and Japanese
    clipforge train --config run.yaml data.kind=shards "data.urls=a/{0..9}.tar::b/{0..3}.tar" --data-weights 3 1

The same entry point serves single-process and ``torchrun`` launches: the runtime (rank, world size,
device) comes from the environment, never from the config.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from clipforge.cli.args import positive_int

QUICKSTART_CONFIG = "configs/quickstart.yaml"


def register(sub: argparse._SubParsersAction) -> None:
    """Adds the ``train`` and ``quickstart`` verbs."""
    p = sub.add_parser("train", help="train a model from a YAML config (dotted overrides: optim.lr=1e-3 steps=200)")
    p.add_argument("--config", help="YAML train config (default: the built-in defaults)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted config overrides")
    p.add_argument("--resume", help="'latest' (the run dir's newest checkpoint, if any) or a checkpoint path")
    p.add_argument("--data-weights", nargs="+", type=float, metavar="W",
                   help="one sampling weight per shard source (data.urls 'a/{0..9}.tar::b/{0..3}.tar' with "
                        "--data-weights 3 1); the same as the override data.weights=[3,1]")
    p.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when available")
    p.add_argument("--threads", type=positive_int, help="intra-op CPU threads (default: torch's choice)")
    p.set_defaults(func=train_command)

    p = sub.add_parser("quickstart", help="train a tiny model on the synthetic world (CPU, minutes) and print results")
    p.add_argument("--model", help="the model of one of the quickstart configs (configs/quickstart*.yaml), e.g. "
                                   "clippo-tiny; default: the one of configs/quickstart.yaml")
    p.add_argument("--config", help=f"the quickstart config (default: {QUICKSTART_CONFIG} of this checkout)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted config overrides")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="default: cpu")
    p.add_argument("--threads", type=positive_int,
                   help="intra-op CPU threads (default: the cores the data workers leave)")
    p.set_defaults(func=quickstart_command)


def train_command(args: argparse.Namespace) -> int:
    """Validates the config (before any work), then trains; prints the final evaluation on rank 0."""
    from clipforge.train import init_runtime, load_config, parse_overrides, prepare, shutdown, train

    overrides = parse_overrides(args.overrides)
    if args.data_weights:
        overrides["data.weights"] = args.data_weights
    config = load_config(args.config, overrides)
    prepared = prepare(config)  # every check that reads files, before any work
    _set_threads(args.threads)
    runtime = init_runtime(args.device)
    try:
        config.check_world_size(runtime.world_size)
        result = train(config, runtime, resume=args.resume, prepared=prepared)
    finally:
        shutdown(runtime)
    if runtime.is_main:
        print(results_table(result.eval, config.eval.languages[0]))
        print(f"run dir: {result.run_dir} ({result.step} steps, {result.wall_time:.0f} s)")
    return 0


def quickstart_command(args: argparse.Namespace) -> int:
    """Trains the quickstart config and prints a results table; plots land in the run dir."""
    from clipforge.train import init_runtime, load_config, parse_overrides, train

    path = Path(args.config) if args.config else _find_quickstart_config(args.model)
    config = load_config(path, parse_overrides(args.overrides))
    # One OpenMP thread per core the data workers leave free: an oversubscribed pool contends for the cores.
    _set_threads(args.threads or max(1, (os.cpu_count() or 1) - config.data.num_workers))
    runtime = init_runtime(args.device)
    print(f"quickstart: {config.model} on the synthetic world, {config.steps} steps of {config.batch_size} "
          f"({path}); run dir {config.output_dir}")
    result = train(config, runtime)
    print(results_table(result.eval, config.eval.languages[0]))
    print(f"wall time {result.wall_time:.0f} s; plots and metrics in {result.run_dir}: "
          "loss.png, zeroshot.png, similarity.png, metrics.jsonl")
    return 0


def _set_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


def _find_quickstart_config(model: str | None = None) -> Path:
    """``configs/quickstart.yaml`` (or the ``configs/quickstart*.yaml`` that trains ``model``), in the current
    folder or in the checkout this package runs from."""
    import yaml

    for root in (Path.cwd(), Path(__file__).resolve().parents[3]):
        default = root / QUICKSTART_CONFIG
        if not default.is_file():
            continue
        if model is None:
            return default
        found = {yaml.safe_load(p.read_text()).get("model"): p for p in sorted(default.parent.glob("quickstart*.yaml"))}
        if model not in found:
            raise ValueError(f"no quickstart config trains {model!r}; there are: {', '.join(sorted(found))}")
        return found[model]
    raise FileNotFoundError(f"{QUICKSTART_CONFIG} not found; pass --config")


def results_table(metrics: dict[str, float], first_language: str = "") -> str:
    """Zero-shot accuracy per task and retrieval recall as an aligned text table, one column per language.

    Keys of the first evaluated language are plain (``zeroshot/shape``); the others end in ``@<lang>``.
    """
    if not metrics:
        return "(no evaluation)"
    names = {"text_retrieval": "image → caption", "image_retrieval": "caption → image"}
    cells: dict[str, dict[str, float]] = {}  # row name -> language -> value
    languages = [""]
    for key, value in metrics.items():
        kind, _, rest = key.partition("/")
        if kind not in ("zeroshot", "retrieval"):
            continue
        name, at, language = rest.rpartition("@")
        if not (at and language.isalpha()):
            name, language = rest, ""
        if kind == "retrieval":
            what, k = name.split("_recall")
            name = f"{names.get(what, what)} R{k}"
        if language not in languages:
            languages.append(language)
        cells.setdefault(f"{kind}:{name}", {})[language] = value
    header = ["zero-shot top-1 / retrieval", *(lang or first_language or "score" for lang in languages)]
    rows = [header]
    for kind in ("zeroshot", "retrieval"):
        if kind == "retrieval" and any(k.startswith("retrieval:") for k in cells):
            rows.append(["retrieval", *([""] * len(languages))])
        for row, values in cells.items():
            if row.startswith(kind + ":"):
                row_cells = (f"{values[lang]:6.1%}" if lang in values else "" for lang in languages)
                rows.append([row.split(":", 1)[1], *row_cells])
    widths = [max(len(r[i]) for r in rows) + 2 for i in range(len(header))]
    return "\n".join("  " + "".join(f"{c:<{w}}" for c, w in zip(r, widths)).rstrip() for r in rows)


def main(argv: list[str] | None = None) -> int:
    """Runs only these verbs (``python -m clipforge.cli.train train ...``) until the main entry point lists them."""
    from clipforge.cli import main as cli
    from clipforge.cli.main import main as cli_main

    if "clipforge.cli.train" not in cli.VERB_MODULES:
        cli.VERB_MODULES = [*cli.VERB_MODULES, "clipforge.cli.train"]
    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
