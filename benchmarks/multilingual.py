"""Multilingual benchmark: CLIPPO (pixels only) vs CLIP with the 49,408-token BPE, same budget, per language.

Trains each contender on the synthetic world with captions in English, Russian and Japanese for the same
number of steps of the same batch size, evaluates zero-shot classification (prompts in each language)
and caption retrieval per language, and prints JSON plus a Markdown table (docs/clippo.md quotes it).

    python benchmarks/multilingual.py                    # 1200 steps of 64
    python benchmarks/multilingual.py --steps 100        # a quick look
    python benchmarks/multilingual.py --only clippo      # one contender (clip, clippo, clippo+pairs)

Contenders:
    clip          configs/quickstart.yaml's CLIP model with OpenAI's BPE tokenizer and a 77-token context
                  (so no Russian or Japanese caption is cut; byte-level BPE spends many tokens on them),
                  without contrast groups, as CLIPPO's config.
    clippo        configs/quickstart_clippo.yaml without text pairs: image–caption pairs only.
    clippo+pairs  the same with 25 % of each batch given to text/text pairs (two captions of one scene in
                  two languages), CLIPPO's recipe.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).parents[1]
LANGUAGES = ("en", "ru", "ja")
TASKS = ("shape", "colour", "composition")


def contenders() -> dict[str, tuple[Path, list[str]]]:
    """name → (config file, overrides)."""
    multilingual = [f"data.languages=[{', '.join(LANGUAGES)}]", f"eval.languages=[{', '.join(LANGUAGES)}]"]
    return {
        # The same data as CLIPPO's config (no contrast groups), so only the text side differs.
        "clip": (ROOT / "configs/quickstart.yaml", [*multilingual, "model_overrides.text.context_length=77",
                                                    "data.contrast_group=1"]),
        "clippo": (ROOT / "configs/quickstart_clippo.yaml", [*multilingual, "text_pairs.fraction=0"]),
        "clippo+pairs": (ROOT / "configs/quickstart_clippo.yaml", [*multilingual, "text_pairs.fraction=0.25"]),
    }


def run(name: str, path: Path, overrides: list[str], steps: int, batch_size: int, out: Path) -> dict:
    """Trains one contender and returns its final evaluation and timing."""
    from clipforge.train import init_runtime, load_config, parse_overrides, train

    warmup = min(load_config(path, parse_overrides(overrides)).schedule.warmup_steps, steps)  # the config's own
    config = load_config(path, parse_overrides([*overrides, f"steps={steps}", f"batch_size={batch_size}",
                                                "eval.every=0", "plots=false", f"output_dir={out / name}",
                                                f"schedule.warmup_steps={warmup}"]))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) - config.data.num_workers))
    start = time.perf_counter()
    result = train(config, init_runtime("cpu"))
    return {"model": config.model, "config": str(path.relative_to(ROOT)), "overrides": overrides,
            "wall_time_s": round(time.perf_counter() - start, 1), "eval": result.eval}


def table(results: dict[str, dict]) -> str:
    """Markdown: one row per contender, zero-shot top-1 per task and language."""
    head = "| model | " + " | ".join(f"{t} {lang}" for t in TASKS for lang in LANGUAGES) + " | wall s |"
    rows = [head, "|---|" + "---:|" * (len(TASKS) * len(LANGUAGES) + 1)]
    for name, r in results.items():
        cells = []
        for task in TASKS:
            for i, lang in enumerate(LANGUAGES):
                key = f"zeroshot/{task}" + ("" if i == 0 else f"@{lang}")
                cells.append(f"{r['eval'][key]:.1%}" if key in r["eval"] else "–")
        rows.append(f"| {name} | " + " | ".join(cells) + f" | {r['wall_time_s']:.0f} |")
    return "\n".join(rows)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--only", nargs="*", choices=list(contenders()), help="run only these contenders")
    parser.add_argument("--out", default="runs/multilingual", help="run directories go here")
    args = parser.parse_args(argv)
    results = {}
    for name, (path, overrides) in contenders().items():
        if args.only and name not in args.only:
            continue
        results[name] = run(name, path, overrides, args.steps, args.batch_size, Path(args.out))
    print(json.dumps({"benchmark": "multilingual", "steps": args.steps, "batch_size": args.batch_size,
                      "cpu_count": os.cpu_count(), "results": results}, indent=2))
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
