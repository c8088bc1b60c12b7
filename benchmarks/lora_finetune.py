"""What a LoRA fine-tune gained and kept: the base model beside the run's merged model and its adapters.

Evaluates, on the synthetic world's held-out split of the run's own eval config (its languages: the target one and
the ones to keep), the base model the run started from, the run's merged ``final/`` model, and the base with
``final/adapters`` loaded onto it (the two must agree); prints JSON with the metrics and the adapter set's size.

    clipforge train --config configs/finetune_lora.yaml model=runs/quickstart/final
    python benchmarks/lora_finetune.py --run runs/finetune_lora
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch


def main(argv: list[str]) -> int:
    import clipforge
    from clipforge.data.synthetic import SyntheticWorld
    from clipforge.train import load_config
    from clipforge.train.data import world_config
    from clipforge.train.evaluate import build_eval_sets, evaluate_languages
    from clipforge.train.lora import load_adapters
    from clipforge.transforms import model_transforms

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="a LoRA run directory (config.yaml, final/, final/adapters/)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    run = Path(args.run)
    config = load_config(run / "config.yaml")
    base, _, text_processor = clipforge.load(config.model)
    merged = clipforge.load(str(run / "final"))[0]
    adapted = load_adapters(clipforge.load(config.model)[0], run / "final/adapters")
    _, eval_tf = model_transforms(base.config)
    world = SyntheticWorld(world_config(config.data, base.config.vision.image_size))
    e = config.eval
    sets = build_eval_sets(world, eval_tf, e.size, e.retrieval_size, e.languages, e.split)
    device = torch.device("cpu")
    rows = {name: evaluate_languages(model, sets, text_processor, device)
            for name, model in (("base", base), ("lora_merged", merged), ("lora_adapters", adapted))}
    adapters = run / "final/adapters/adapters.safetensors"
    out = {"run": str(run), "base": config.model, "lora": config.lora and vars(config.lora), "languages": e.languages,
           "adapter_bytes": adapters.stat().st_size, "model_bytes": (run / "final/model.safetensors").stat().st_size,
           "metrics": {name: {k: round(v, 4) for k, v in m.items()} for name, m in rows.items()}}
    print(json.dumps(out, indent=1, default=list))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
