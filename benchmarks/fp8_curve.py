"""Float8 against bf16 training on the synthetic world: the same config, seed and batches, two loss curves (issue #25).

``precision: fp8`` trains the linear layers in float8 (``clipforge.train.fp8``). This trains
``configs/quickstart.yaml`` with a ViT (``tiny-vit``: a transformer's linear layers are where float8 acts; every one
of tiny-vit's has dimensions that are multiples of 16) once in bf16 and once in fp8, and prints JSON with both loss
curves, their gap and the end-of-run zero-shot scores and wall times:

    python benchmarks/fp8_curve.py --device cuda --steps 1000              # Hopper / Ada: float8 tensor cores
    python benchmarks/fp8_curve.py --device cpu --steps 300 --emulate      # float8's numerics, emulated

Off a GPU with float8 tensor cores, ``--emulate`` runs torchao's emulation (the same casts and scales, the matmuls
in higher precision): its wall time says nothing about float8's speed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_name  # noqa: E402  # benchmarks/machine.py


def run(precision: str, args: argparse.Namespace) -> dict[str, Any]:
    """One training run: its logged losses, end-of-run scores and wall time."""
    from clipforge.train import init_runtime, load_config, parse_overrides, train

    overrides = [f"model={args.model}", f"steps={args.steps}", f"precision={precision}", "plots=false",
                 f"eval.every={args.steps}", "checkpoint_every=0", f"compile={str(args.compile).lower()}",
                 f"output_dir={args.work / precision}", f"seed={args.seed}", *args.overrides]
    if precision == "fp8":
        overrides += [f"fp8.recipe={args.recipe}", f"fp8.emulate={str(args.emulate).lower()}"]
    config = load_config(ROOT / "configs" / "quickstart.yaml", parse_overrides(overrides))
    start = time.perf_counter()
    result = train(config, init_runtime(args.device))
    return {"losses": {step: round(loss, 5) for step, loss in result.losses}, "eval": result.eval,
            "wall_s": round(time.perf_counter() - start, 1)}


def gap(bf16: dict[int, float], fp8: dict[int, float], tail: int) -> dict[str, float]:
    """How far the fp8 curve lies from the bf16 one: at the end, and on average over the last ``tail`` logged
    steps (both signed: fp8 minus bf16), and the largest absolute gap anywhere."""
    steps = sorted(set(bf16) & set(fp8))
    last = steps[-tail:]
    return {"final": round(fp8[steps[-1]] - bf16[steps[-1]], 5),
            "mean_last": round(statistics.mean(fp8[s] - bf16[s] for s in last), 5),
            "max_abs": round(max(abs(fp8[s] - bf16[s]) for s in steps), 5), "tail_points": len(last)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--model", default="tiny-vit")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--recipe", choices=["tensorwise", "rowwise", "rowwise_with_gw_hp"], default="tensorwise")
    p.add_argument("--emulate", action="store_true", help="float8's numerics off Hopper/Ada GPUs (slow)")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--tail", type=int, default=10, help="logged points the mean gap is taken over")
    p.add_argument("--work", type=Path, default=Path("/tmp/clipforge-fp8-curve"))
    p.add_argument("overrides", nargs="*", help="train-config overrides for both runs (key=value)")
    args = p.parse_args(argv)
    runs = {precision: run(precision, args) for precision in ("bf16", "fp8")}
    device = torch.cuda.get_device_name() if args.device == "cuda" else cpu_name()
    report = {"benchmark": "fp8_curve", "device": device, "torch": torch.__version__, "model": args.model,
              "steps": args.steps, "recipe": args.recipe, "emulate": args.emulate, "compile": args.compile,
              "overrides": args.overrides, "gap": gap(runs["bf16"]["losses"], runs["fp8"]["losses"], args.tail),
              "speedup": round(runs["bf16"]["wall_s"] / runs["fp8"]["wall_s"], 3), "runs": runs}
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
