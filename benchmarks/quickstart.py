"""Quickstart benchmark: train configs/quickstart.yaml on the CPU, print JSON with the accuracies and wall time.

The reference is the project's target for the quickstart on a 2-core CPU: at least 90% zero-shot
accuracy on shape and on colour, 60% on held-out colour×shape pairs, within 5 minutes of wall time.

    python benchmarks/quickstart.py                       # the shipped config
    python benchmarks/quickstart.py steps=300 optim.lr=2e-3   # with overrides
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_detail, cpu_name  # benchmarks/machine.py

TARGETS = {"zeroshot/shape": 0.90, "zeroshot/colour": 0.90, "zeroshot/composition": 0.60, "wall_time_s": 300.0}


def main(argv: list[str]) -> int:
    from clipforge.train import init_runtime, load_config, parse_overrides, train

    start = time.perf_counter()
    config = load_config(Path(__file__).parents[1] / "configs/quickstart.yaml", parse_overrides(argv))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) - config.data.num_workers))
    result = train(config, init_runtime("cpu"))
    wall = time.perf_counter() - start
    measured = {**result.eval, "wall_time_s": wall, "final_loss": result.losses[-1][1] if result.losses else None}
    passed = {k: (measured[k] <= v if k == "wall_time_s" else measured.get(k, 0.0) >= v) for k, v in TARGETS.items()}
    print(json.dumps({"benchmark": "quickstart", "overrides": argv, "cpu_count": os.cpu_count(),
                      "machine": cpu_name(), "cpu": cpu_detail(),
                      "threads": torch.get_num_threads(),
                      "steps": config.steps, "batch_size": config.batch_size, "measured": measured,
                      "reference": TARGETS, "meets_reference": passed}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
