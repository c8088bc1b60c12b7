"""Multimodal units in a tiny model trained on typographic scenes, against the same model trained without them.

For each model (``NAME=PATH``): how well it reads (each shape's name rendered alone with the Unifont renderer,
classified zero-shot among the shapes' prompts), and the neuron finder (``clipforge.eval.neurons``) on each layer over
the synthetic world's plain test scenes (no labels in them) with the world's words as the vocabulary: the best units,
how many get the full score (all top images one shape, whose name is the unit's top rendered word), how many units'
top word names their images' shape (and how many would by chance), and which shapes they cover.
Prints one JSON object in the shape of ``benchmarks/results/*.json``; with ``--output``, writes each model's report;
with ``--png``, copies the first model's best unit's panel there.

    clipforge train --config configs/quickstart.yaml --threads 1 steps=600 eval.every=600 \\
        output_dir=/tmp/neurons-demo/typographic data.typographic.fraction=1.0 \\
        data.typographic.own_name_fraction=0.8 data.typographic.mention_fraction=1.0
    clipforge train --config configs/quickstart.yaml --threads 1 steps=600 eval.every=600 \\
        output_dir=/tmp/neurons-demo/control
    python benchmarks/neurons_typographic.py --model typographic=/tmp/neurons-demo/typographic/final \\
        --model control=/tmp/neurons-demo/control/final --layer visual.layer4 --layer embedding.text \\
        --output /tmp/neurons-demo/reports --png docs/images/neurons-typographic-unit.png
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any


def reading(model: Any) -> dict[str, Any]:
    """Zero-shot shape accuracy on the shapes' names rendered alone (no shape drawn), and on 500 plain test scenes
    (the world's shape task: no labels in them)."""
    import torch

    from clipforge.data.synthetic import SHAPES, SyntheticWorld, WorldConfig, task_prompts
    from clipforge.eval.neurons.vocab import image_size, render_words
    from clipforge.eval.zeroshot import build_classifier

    classnames, templates = task_prompts("shape", "en", SHAPES)
    classifier = build_classifier(model, classnames, templates, use_cache=False)  # (D, C)
    side = image_size(model)
    images = torch.stack([model.transform(im) for im in render_words(list(SHAPES), side)])
    predicted = (model.encode_images(images) @ classifier).argmax(dim=1).tolist()
    task = next(t for t in SyntheticWorld(WorldConfig(image_size=side)).zeroshot_tasks(500) if t.name == "shape")
    scenes = torch.stack([model.transform(im) for im in task.images])
    hits = (model.encode_images(scenes) @ classifier).argmax(dim=1) == torch.tensor(task.labels)
    return {"accuracy": sum(p == i for i, p in enumerate(predicted)) / len(SHAPES),
            "read_as": {s: classnames[p] for s, p in zip(SHAPES, predicted)},
            "plain_scenes_shape_accuracy": float(hits.float().mean())}


def finder(model: Any, args: argparse.Namespace, name: str, layer: str) -> dict[str, Any]:
    """The neuron finder's figures over every unit of ``layer``; writes the report when asked."""
    from clipforge.data.synthetic import SHAPES
    from clipforge.eval.neurons import analyse, open_images, write
    from clipforge.eval.neurons.vocab import image_size

    start = time.perf_counter()
    images = open_images(args.data, image_size(model))
    result = analyse(model, images, layer, vocabulary=["synthetic"], top_units=args.top_units,
                     featvis_steps=args.featvis_steps, seed=args.seed, batch_size=64)
    full = [s for s in result.scores if s.score == 1.0]
    shapes = [s for s in result.scores if s.concept in SHAPES]
    named = [s for s in shapes if s.word_rank == 1]
    out = {
        "units": len(result.scores),
        "vocabulary": len(result.words),
        "full_score_units": len(full),
        "full_score_concepts": dict(sorted(Counter(s.concept for s in full).items())),
        "full_score_with_word_z_2": sum(1 for s in full if (s.word_z or 0) >= 2),
        "mean_score": sum(s.score for s in result.scores) / len(result.scores),
        "units_whose_top_word_names_their_shape": len(named),
        "of_them_by_shape": dict(sorted(Counter(s.concept for s in named).items())),
        "expected_by_chance": round(len(shapes) / len(result.words), 1),  # each of V words equally likely first
        "best": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in s.to_dict().items()}
                 for s in result.ranking],
        "seconds": round(time.perf_counter() - start, 1),
    }
    if args.output:
        page = write(result, Path(args.output) / f"{name}-{layer}")
        out["report"] = str(page)
        if args.png and name == args.png_model and layer == args.layer[0] and result.ranking:
            shutil.copyfile(page.parent / f"unit-{result.ranking[0].unit}.png", args.png)
            out["png"] = {"path": args.png, "unit": result.ranking[0].unit}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", required=True, metavar="NAME=PATH", help="a saved model, named")
    p.add_argument("--data", default="synthetic:test:2000")
    p.add_argument("--layer", action="append", help="a layer (repeatable; default visual.layer4)")
    p.add_argument("--top-units", type=int, default=10)
    p.add_argument("--featvis-steps", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", help="a folder for each model's report")
    p.add_argument("--png", help="copy the best unit's panel of the first model here (needs --output)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    args.layer = args.layer or ["visual.layer4"]
    import numpy
    import PIL
    import torch

    from clipforge.eval.loading import load_eval_model

    torch.set_num_threads(args.threads)
    models = dict(m.split("=", 1) for m in args.model)
    args.png_model = next(iter(models))
    output: dict[str, Any] = {"data": args.data, "layers": args.layer, "vocabulary": "synthetic", "models": {}}
    for name, path in models.items():
        model, _, _ = load_eval_model(path, device="cpu")
        output["models"][name] = {"path": path, "reading": reading(model),
                                  "finder": {layer: finder(model, args, name, layer) for layer in args.layer}}
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                check=False).stdout.strip()
    except OSError:
        commit = "unknown"
    print(json.dumps({
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.processor() or platform.machine()}, {args.threads} torch thread(s)",
        "versions": {"torch": torch.__version__, "python": platform.python_version(), "numpy": numpy.__version__,
                     "pillow": PIL.__version__},
        "command": "python benchmarks/neurons_typographic.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "output": output,
        "source": f"printed by benchmarks/neurons_typographic.py at commit {commit}",
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
