"""``clipforge vqa train|eval|ask``: VQA by rendering, the question drawn above the image for CLIPPO.

Examples::

    clipforge vqa train --config configs/vqa_tiny.yaml                       # clippo-tiny from random init
    clipforge vqa train --config configs/vqa_tiny.yaml model=runs/clippo/final steps=500
    clipforge vqa eval --model runs/vqa_tiny/final --size 400
    clipforge vqa ask --model runs/vqa_tiny/final --image scene.png --question "what colour is the star?"

``train`` writes ``final/`` (the model), ``results.json`` (accuracy per question type on seen and held-out
combinations), ``accuracy.png``, ``loss.png``, ``metrics.jsonl`` and ``config.yaml`` into the run dir.
"""

from __future__ import annotations

import argparse
import json
import sys


def register(sub: argparse._SubParsersAction) -> None:
    """Adds the ``vqa`` verb with its ``train``, ``eval`` and ``ask`` tasks."""
    p = sub.add_parser("vqa", help="VQA by rendering: fine-tune CLIPPO with the question drawn above the image",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    tasks = p.add_subparsers(dest="task", metavar="TASK", required=True)

    tr = tasks.add_parser("train", help="fine-tune on the synthetic VQA world, then evaluate (seen / held-out)")
    tr.add_argument("--config", help="YAML VQA config (default: the built-in defaults)")
    tr.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. steps=200 model=DIR")
    _runtime(tr)
    tr.set_defaults(func=train_command)

    ev = tasks.add_parser("eval", help="accuracy per question type of a fine-tuned model (seen / held-out)")
    ev.add_argument("--model", required=True, help="a model directory written by `clipforge vqa train`")
    ev.add_argument("--size", type=int, default=400, help="test examples for each of seen and held-out (default 400)")
    ev.add_argument("--output", help="write the results as JSON here")
    _runtime(ev)
    ev.set_defaults(func=eval_command)

    ask = tasks.add_parser("ask", help="answer one question about one image")
    ask.add_argument("--model", required=True, help="a model directory written by `clipforge vqa train`")
    ask.add_argument("--image", required=True, help="an image file")
    ask.add_argument("--question", required=True, help='e.g. "what colour is the star?"')
    ask.add_argument("--top-k", type=int, default=3, help="answers shown (default 3)")
    ask.add_argument("--save-input", metavar="PNG", help="also save the composed model input")
    _runtime(ask)
    ask.set_defaults(func=ask_command)


def _runtime(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", help="cpu, cuda … (default: cpu)")
    p.add_argument("--threads", type=int, help="intra-op CPU threads (default: torch's choice)")


def _set_threads(threads: int | None) -> None:
    if threads is not None:
        if threads < 1:
            raise ValueError(f"--threads must be at least 1, got {threads}")
        import torch

        torch.set_num_threads(threads)


def train_command(args: argparse.Namespace) -> int:
    """Validates the config and what it names on disk (before any work), fine-tunes, prints the accuracy table."""
    from clipforge.config import parse_overrides
    from clipforge.vqa.train import load_vqa_config, prepare_vqa, train_vqa

    config = load_vqa_config(args.config, parse_overrides(args.overrides))
    _set_threads(args.threads)
    prepared = prepare_vqa(config)  # reads a saved starting model once; a band that does not fit fails here
    result = train_vqa(config, args.device, prepared)
    print(accuracy_table(result.results))
    print(f"model: {result.model_dir}; results, plots and metrics in {result.run_dir} ({result.wall_time:.0f} s)")
    return 0


def eval_command(args: argparse.Namespace) -> int:
    """Evaluates a saved VQA model on the test split of the synthetic world it was trained on."""
    from pathlib import Path

    from clipforge.vqa.checkpoint import load_vqa, saved_inputs
    from clipforge.vqa.data import SyntheticVQA
    from clipforge.vqa.evaluate import evaluate_splits, write_json

    if args.size < 1:
        raise ValueError(f"--size must be at least 1, got {args.size}")
    _set_threads(args.threads)
    model, inputs = load_vqa(args.model, args.device)
    composer, data = saved_inputs(model, inputs)
    results = evaluate_splits(model, SyntheticVQA(data, composer.image_region[0]), composer, args.size)
    print(accuracy_table(results))
    if args.output:
        write_json(Path(args.output), results)
    return 0


def ask_command(args: argparse.Namespace) -> int:
    """Prints the top answers with their probabilities."""
    from pathlib import Path

    from PIL import Image, UnidentifiedImageError

    from clipforge.vqa.checkpoint import load_vqa, saved_inputs
    from clipforge.vqa.compose import band_height
    from clipforge.vqa.evaluate import predict

    if args.top_k < 1:
        raise ValueError(f"--top-k must be at least 1, got {args.top_k}")
    _set_threads(args.threads)
    try:
        with Image.open(args.image) as image:
            image = image.convert("RGB")
    except UnidentifiedImageError:
        raise ValueError(f"{args.image}: not a readable image") from None
    model, inputs = load_vqa(args.model, args.device)
    composer, _ = saved_inputs(model, inputs)
    needed = band_height(composer.renderer, [args.question])
    if needed > composer.band:
        print(f"note: the question needs a {needed}-px band, the model reads {composer.band} px: its end is cut",
              file=sys.stderr)
    pixels = composer([image], [args.question])
    if args.save_input:
        Image.fromarray(pixels[0].permute(1, 2, 0).numpy()).save(Path(args.save_input))
    probs = predict(model, pixels)[0]
    top = probs.topk(min(args.top_k, len(model.answers)))
    print(args.question)
    for p, i in zip(top.values.tolist(), top.indices.tolist()):
        print(f"  {p:7.2%}  {model.answers[i]}")
    return 0


def accuracy_table(results: dict) -> str:
    """Accuracy per question type on seen and held-out combinations, each beside its best constant answer."""
    groups = [g for g in ("seen", "heldout") if g in results]
    header = ["question type"] + [h for g in groups for h in (g, f"{g} const.")]
    rows = [header]
    for kind in results[groups[0]]["accuracy"]:
        cells = [f"{results[g][key].get(kind, float('nan')):6.1%}" for g in groups
                 for key in ("accuracy", "constant_baseline")]
        rows.append([kind, *cells])
    width = max(len(r[0]) for r in rows) + 2
    lines = ["  " + r[0].ljust(width) + "".join(c.rjust(15) for c in r[1:]) for r in rows]
    return "\n".join(lines) + "\n  held out: " + json.dumps(results.get("heldout_combinations", {}))
