"""What a resolution and context change costs, and what fine-tuning at the new sizes gets back.

Evaluates the quickstart model (64 px, 32 tokens) at its own size; the same weights resized to 96 px and 64 tokens
(``resize_image_size``: the attention-pool grid bicubically; ``resize_context``: Long-CLIP's stretch, the first 20
positions kept), with no training; and ``configs/finetune_resize.yaml``'s fine-tune at the new sizes. Each is scored
on the synthetic world's held-out split drawn at the model's own input size (English zero-shot tasks and caption
retrieval). Prints JSON.

    clipforge quickstart
    python benchmarks/resize_finetune.py --base runs/quickstart/final
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs/finetune_resize.yaml"


def evaluate(model: torch.nn.Module, text_processor, size: int, retrieval_size: int) -> dict[str, float]:
    """The world's English tasks on its ``val`` split, drawn at the model's input size."""
    from clipforge.data.config import SyntheticDataConfig
    from clipforge.data.synthetic import SyntheticWorld
    from clipforge.train.evaluate import build_eval_sets, evaluate_languages
    from clipforge.transforms import model_transforms

    _, eval_tf = model_transforms(model.config)
    world = SyntheticWorld(SyntheticDataConfig(seed=0).world_config(model.config.vision.image_size))
    sets = build_eval_sets(world, eval_tf, size, retrieval_size, ("en",), "val")
    metrics = evaluate_languages(model, sets, text_processor, torch.device("cpu"))
    return {k: round(v, 4) for k, v in metrics.items()}


def main(argv: list[str]) -> int:
    import clipforge
    from clipforge.models.resize import resize_context, resize_image_size
    from clipforge.train import init_runtime, load_config, train

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="runs/quickstart/final")
    parser.add_argument("--out", default=None, help="the run directory (default: a temporary one)")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    config = load_config(CONFIG, {"model": args.base, "steps": args.steps, "plots": False,
                                  "output_dir": args.out or tempfile.mkdtemp(prefix="resize_finetune_")})
    size, context = config.model_overrides["vision"]["image_size"], config.model_overrides["text"]["context_length"]
    e = config.eval
    base, _, tokenizer = clipforge.load(args.base)
    rows = {f"base at {base.config.vision.image_size} px": evaluate(base, tokenizer, e.size, e.retrieval_size)}
    resized = resize_context(resize_image_size(copy.deepcopy(base), size), context)
    stretched_tokenizer = clipforge.get_text_processor(resized, args.base)  # the base's vocabulary, padded longer
    rows[f"resized to {size} px / {context} tokens, no training"] = evaluate(resized, stretched_tokenizer, e.size,
                                                                             e.retrieval_size)
    start = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):
        result = train(config, init_runtime())
    seconds = round(time.perf_counter() - start, 1)
    tuned, _, tuned_tokenizer = clipforge.load(Path(result.run_dir) / "final")
    rows[f"fine-tuned at {size} px / {context} tokens, {args.steps} steps"] = evaluate(
        tuned, tuned_tokenizer, e.size, e.retrieval_size)
    print(json.dumps({"base": args.base, "config": str(CONFIG.relative_to(ROOT)), "steps": args.steps,
                      "train_seconds": seconds, "image_size": size, "context_length": context, "rows": rows},
                     indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
