"""DDP vs FSDP2 per rank: step time and the memory each rank holds, N CPU processes (gloo) or N GPUs (NCCL).

Each mode runs in its own process group on the same model and global batch: ``ddp`` (every rank holds the whole model,
gradients averaged once per step: the loop's ``parallel: ddp``) and ``fsdp`` (``clipforge.train.fsdp.shard_model``,
the loop's ``parallel: fsdp``). A step is what the loop does: features gathered with gradient, the CLIP loss,
backward, gradient averaging (FSDP: reduce-scatter), clipping, AdamW. Prints one JSON object: per mode the median
step time over the timed steps, each rank's parameter/gradient/optimiser bytes (counted from its shards) and its
peak resident memory (``ru_maxrss``; on CUDA also peak allocated memory).

    python benchmarks/fsdp.py --model ViT-B/32 --nproc 2 --batch-size 8 --steps 3
    python benchmarks/fsdp.py --device cuda --nproc 1 --model ViT-B/16 --batch-size 256   # FSDP2's own overhead
    python benchmarks/fsdp.py --device cuda --nproc 1 --model ViT-bigG/14 --batch-size 32 --cpu-offload --fsdp-only

With one process the fsdp mode still shards (a group of one): it measures what FSDP2 itself costs over the plain
step, and with ``--cpu-offload`` whether a model trains on one GPU from CPU memory.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

import clipforge
from clipforge.train.distributed import all_reduce_gradients, init_runtime, shutdown
from clipforge.train.fsdp import clip_grad_norm, memory_report, replicated_parameters, shard_model
from clipforge.train.gradcache import forward_backward
from clipforge.train.loss import clip_loss
from clipforge.train.optim import build_optimizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_name  # benchmarks/machine.py


def _worker(rank: int, args: argparse.Namespace, mode: str, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(args.nproc),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(args.threads)
    runtime = init_runtime(args.device)
    try:
        torch.manual_seed(0)
        model = clipforge.create_model(args.model).to(runtime.device).train()
        if mode == "fsdp":
            shard_model(model, runtime, None, cpu_offload=args.cpu_offload, in_one_process=True)
        params = [p for p in model.parameters() if p.requires_grad]
        reduced = replicated_parameters(params) if mode == "fsdp" else params
        offloaded = mode == "fsdp" and args.cpu_offload
        optimizer = build_optimizer(model, 1e-4, 0.2, (0.9, 0.98), 1e-6,
                                    torch.device("cpu") if offloaded else runtime.device)
        size, context = model.config.vision.image_size, model.config.text.context_length
        local = args.batch_size // args.nproc
        images = torch.randn(local, 3, size, size, device=runtime.device)
        texts = torch.randint(1, 49000, (local, context), device=runtime.device)
        times = []
        for step in range(args.warmup + args.steps):
            if runtime.device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            forward_backward(model, images, texts, clip_loss, runtime)
            all_reduce_gradients(reduced, runtime)
            if mode == "fsdp":
                clip_grad_norm(params, 1.0, runtime)
            else:
                torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if runtime.device.type == "cuda":
                torch.cuda.synchronize()
            if step >= args.warmup:
                times.append(time.perf_counter() - start)
        report = memory_report(model)
        result = {"rank": rank, "step_s": statistics.median(times), "parameter_bytes": report.parameters,
                  "gradient_bytes": report.gradients, "optimizer_bytes": report.optimizer,
                  "model_parameter_bytes": report.total_parameters,
                  "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
        if runtime.device.type == "cuda":
            result["peak_cuda_bytes"] = torch.cuda.max_memory_allocated(runtime.device)
        Path(out, f"{mode}-{rank}.json").write_text(json.dumps(result))
    finally:
        shutdown(runtime)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ViT-B/32")
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8, help="global batch")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--cpu-offload", action="store_true", help="fsdp mode: shards in CPU memory (CUDA only)")
    parser.add_argument("--fsdp-only", action="store_true", help="skip the ddp mode (a model too big for it)")
    args = parser.parse_args()
    modes = {}
    with tempfile.TemporaryDirectory() as out:
        for mode in ("fsdp",) if args.fsdp_only else ("ddp", "fsdp"):
            mp.spawn(_worker, args=(args, mode, _free_port(), out), nprocs=args.nproc, join=True)
            ranks = [json.loads(Path(out, f"{mode}-{r}.json").read_text()) for r in range(args.nproc)]
            modes[mode] = {"step_s_median": statistics.median(r["step_s"] for r in ranks), "ranks": ranks}
    gib = 2**30
    summary = {mode: {"step_s": round(m["step_s_median"], 3),
                      "state_gib_per_rank": round(max(r["parameter_bytes"] + r["gradient_bytes"] + r["optimizer_bytes"]
                                                      for r in m["ranks"]) / gib, 3),
                      "peak_rss_gib_per_rank": round(max(r["peak_rss_bytes"] for r in m["ranks"]) / gib, 3)}
               for mode, m in modes.items()}
    print(json.dumps({"model": args.model, "nproc": args.nproc, "global_batch": args.batch_size,
                      "device": args.device, "threads_per_process": args.threads, "steps": args.steps,
                      "machine": cpu_name(), "torch": torch.__version__,
                      "summary": summary,
                      "fsdp_step_time_ratio": round(modes["fsdp"]["step_s_median"] / modes["ddp"]["step_s_median"], 3)
                      if "ddp" in modes else None, "cpu_offload": args.cpu_offload,
                      "modes": modes}, indent=2))


if __name__ == "__main__":
    main()
