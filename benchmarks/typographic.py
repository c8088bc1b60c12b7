"""Typographic attacks on the quickstart model: zero-shot shape accuracy clean vs with a word written on each scene.

The synthetic world's ``shape`` task (test split, seed 0: the quickstart's world) attacked with ``clipforge.eval.
typographic`` under several conditions, in one run and against the same clean images:

- ``other``: another shape's name on every scene (the attack); ``own``: the scene's own shape name (the control: it
  covers the same pixels, so a drop there is occlusion, not reading);
- two label sizes (the box's height as a fraction of the image: 0.25 centred, 0.15 at a random place);
- ``iPod``: a word that is no shape, scored as an extra class (the CLIP paper's example).

``attack_success`` is the share of attacked scenes classified as the written word; ``clean_as_word`` the same share
on the clean scenes; for ``other``, ``word_share_of_errors`` is the share of the wrongly classified attacked scenes
that went to the written word, against ``1 / (classes - 1)`` if the errors fell on the other classes uniformly (what
a model that does not read would show). Prints JSON; ``--png`` also saves the ``other`` condition's
clean/attacked pairs.

    clipforge quickstart
    python benchmarks/typographic.py --model runs/quickstart/final --png docs/images/typographic-quickstart-shape.png
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time

import torch

CONDITIONS = {  # name -> TypographicAttack options
    "other_center_0.25": {"word": "other", "position": "center", "size": 0.25},
    "own_center_0.25": {"word": "own", "position": "center", "size": 0.25},
    "other_random_0.15": {"word": "other", "position": "random", "size": 0.15},
    "own_random_0.15": {"word": "own", "position": "random", "size": 0.15},
    "iPod_center_0.25": {"word": "iPod", "position": "center", "size": 0.25},
}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="runs/quickstart/final")
    p.add_argument("--images", type=int, default=500, help="scenes of the shape task (default: 500)")
    p.add_argument("--task", default="shape")
    p.add_argument("--seed", type=int, default=0, help="the attack's seed")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--png", default=None, help="save the first condition's clean/attacked pairs here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from clipforge.eval.loading import load_eval_model
    from clipforge.eval.typographic import TypographicAttack, evaluate_typographic, open_synthetic, plot_examples

    model, name, _ = load_eval_model(args.model, "cpu")
    data = open_synthetic(f"synthetic:{args.task}", model.model.config.vision.image_size, args.images)
    assert data.classes and data.templates
    out: dict = {"settings": {"model": args.model, "data": f"synthetic:{args.task}", "images": args.images,
                              "split": "test", "world_seed": 0, "attack_seed": args.seed, "classes": data.classes,
                              "font": "unifont", "text_colour": "black", "box_colour": "white",
                              "threads": args.threads},
                 "conditions": {}}
    with tempfile.TemporaryDirectory() as cache:
        for i, (cond, options) in enumerate(CONDITIONS.items()):
            attack = TypographicAttack(seed=args.seed, **options)  # type: ignore[arg-type]
            start = time.perf_counter()
            r = evaluate_typographic(model, data, data.classes, data.templates, attack, batch_size=100,
                                     cache_dir=cache, n_examples=8 if i == 0 else 0)
            row = {**options, **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.metrics.items()},
                   "extra_class": r.extra_class, "seconds": round(time.perf_counter() - start, 1)}
            if options["word"] == "other":  # of the scenes it got wrong, how many went to the written word
                wrong = 1 - float(r.metrics["attacked_acc1"] or 0)
                row["word_share_of_errors"] = round(float(r.metrics["attack_success"] or 0) / max(wrong, 1e-9), 4)
                row["word_share_of_errors_if_errors_were_uniform"] = round(1 / (len(data.classes) - 1), 4)
            out["conditions"][cond] = row
            if i == 0 and args.png:
                plot_examples(r.examples, r.classes, args.png,
                              f"{name} ({args.model}), synthetic {args.task}: another shape's name written on it")
    clean = {c: v["clean_acc1"] for c, v in out["conditions"].items()}
    out["clean_acc1_same_in_every_condition"] = len({v for k, v in clean.items() if "iPod" not in k}) == 1
    out["versions"] = {"torch": torch.__version__, "python": platform.python_version()}
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
