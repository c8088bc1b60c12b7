"""Image decode + resize + crop throughput per CPU core: a plain PIL pipeline vs clipforge's decode path.

    python benchmarks/decode.py                                   # 256 web-size JPEGs → 224, 5 repeats
    python benchmarks/decode.py --model tiny-vit --workers 0 1 2  # + loader vs training-step rate

Same process, same images, same final transform, one thread: the *plain* pipeline is what most training
code does (``Image.open(...).convert("RGB")``, then resize the shorter side bicubic, centre crop, to tensor);
*clipforge* decodes through ``clipforge.data.decode.decode_image``: ``Image.draft`` makes libjpeg decode at
1/2, 1/4 or 1/8 scale (DCT-domain reduce-on-decode) as long as the output still covers the target, then
``Image.reduce`` box-filters by whole factors down to at most 2× the target, then the same final
transform. Images are seeded, photo-like JPEGs (smooth colour fields plus grain, quality 90) of 500–1024
px a side. Images/s per core is images over process CPU time (robust when other jobs share the machine);
wall-clock rates are printed beside it. Each figure is the median of ``--repeats``; ``mean_abs_diff`` is
the mean absolute difference of the two pipelines' normalised outputs (what reduce-on-decode changes).

With ``--workers``, shards of these JPEGs are read through the training loader (``clipforge.train.data``,
tar shards, decode + random resized crop + tokenizer) with each number of DataLoader workers, and the
loader's images/s is compared with the training step's samples/s for ``--model`` at ``--batch-size`` on
this machine (forward + backward + AdamW, all cores): ``loader_fraction`` is the share of the step rate
the loader sustains (≥ 1: data loading is not the bottleneck). On a shared CPU both compete for cores.
When CUDA and torchvision are present, the nvJPEG path (``clipforge.data.device_decode``) is timed too.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from PIL import Image

import clipforge
from clipforge.data.decode import DecodeLimits, decode_image, draft_size
from clipforge.data.webdataset import write_tar_shard
from clipforge.models.config import OPENAI_MEAN, OPENAI_STD
from clipforge.train.loss import clip_loss
from clipforge.transforms import EvalTransform, TrainTransform


def web_jpegs(n: int, seed: int = 0, low: int = 500, high: int = 1024) -> list[bytes]:
    """``n`` photo-like JPEGs (quality 90), each side uniform in [low, high]."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        width, height = (int(v) for v in rng.integers(low, high + 1, 2))
        coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((width, height), 3)
        pixels = np.asarray(coarse, dtype=np.int16) + rng.normal(0, 6, (height, width, 3)).astype(np.int16)
        buffer = io.BytesIO()
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, format="JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def plain_open(data: bytes) -> Image.Image:
    """The reference decode: full-size, RGB."""
    return Image.open(io.BytesIO(data)).convert("RGB")


def pipelines(size: int) -> dict[str, Callable[[bytes, random.Random], torch.Tensor]]:
    """The four timed pipelines: {plain, clipforge} × {eval (resize + centre crop), train (random resized crop)}."""
    evaluate, augment = EvalTransform(size, OPENAI_MEAN, OPENAI_STD), TrainTransform(size, OPENAI_MEAN, OPENAI_STD)
    limits = DecodeLimits()
    train_side = draft_size(size, augment=True)
    return {
        "plain_eval": lambda data, rng: evaluate(plain_open(data)),
        "clipforge_eval": lambda data, rng: evaluate(decode_image(data, limits, size)),
        "plain_train": lambda data, rng: augment(plain_open(data), rng),
        "clipforge_train": lambda data, rng: augment(decode_image(data, limits, train_side), rng),
    }


def time_pipeline(fn: Callable[[bytes, random.Random], torch.Tensor], jpegs: list[bytes],
                  repeats: int) -> dict[str, float]:
    """Median images/s per core (process CPU time) and per wall-clock second over ``repeats`` passes."""
    per_core, wall = [], []
    for r in range(repeats):
        rng = random.Random(r)
        c0, w0 = time.process_time(), time.perf_counter()
        for data in jpegs:
            fn(data, rng)
        per_core.append(len(jpegs) / (time.process_time() - c0))
        wall.append(len(jpegs) / (time.perf_counter() - w0))
    return {"images_per_s_per_core": round(statistics.median(per_core), 1),
            "images_per_s_wall": round(statistics.median(wall), 1)}


def fidelity(size: int, jpegs: list[bytes]) -> float:
    """Mean |plain − clipforge| of the eval outputs (normalised units; one unit ≈ 0.27 of the pixel range)."""
    fns = pipelines(size)
    diffs = [(fns["plain_eval"](d, None) - fns["clipforge_eval"](d, None)).abs().mean().item() for d in jpegs]
    return round(float(np.mean(diffs)), 4)


def loader_rate(jpegs: list[bytes], model: torch.nn.Module, workers: int, batch_size: int, batches: int,
                folder: str) -> float:
    """Images/s of the training loader over shards of ``jpegs`` with ``workers`` DataLoader workers."""
    from clipforge.train import Runtime, load_config
    from clipforge.train.data import TrainData

    config = load_config(None, {"data.kind": "shards", "data.urls": folder, "data.num_workers": workers,
                                "data.resampled": True, "batch_size": batch_size})
    train_tf, _ = clipforge.transforms.model_transforms(model.config)
    data = TrainData(config.data, train_tf, clipforge.get_text_processor(model), batch_size, 0, Runtime(),
                     model.config.vision.image_size)
    iterator = iter(data.loader(0, batches + 1))
    next(iterator)  # workers started and warm
    t0 = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * batch_size / (time.perf_counter() - t0)


def step_rate(model: torch.nn.Module, batch_size: int, steps: int) -> float:
    """Training samples/s of ``model`` (forward + backward + AdamW on the CPU, all threads), median of ``steps``."""
    size, context = model.config.vision.image_size, model.config.text.context_length
    images, tokens = torch.randn(batch_size, 3, size, size), torch.randint(1, 400, (batch_size, context))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    times = []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        out = model(images, tokens)
        clip_loss(out.image_features, out.text_features, out.logit_scale).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i:  # the first step warms up
            times.append(time.perf_counter() - t0)
    return batch_size / statistics.median(times)


def gpu_rate(size: int, jpegs: list[bytes], repeats: int, batch: int = 64) -> dict[str, Any] | None:
    """nvJPEG decode + resize + crop images/s on CUDA, or ``None`` without CUDA/torchvision."""
    from clipforge.data.device_decode import DeviceJPEGDecoder, device_decode_unavailable

    if device_decode_unavailable("cuda") is not None:
        return None
    decode = DeviceJPEGDecoder(size, OPENAI_MEAN, OPENAI_STD, "cuda")
    rates = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for i in range(0, len(jpegs), batch):
            decode(jpegs[i:i + batch])
        torch.cuda.synchronize()
        rates.append(len(jpegs) / (time.perf_counter() - t0))
    return {"images_per_s": round(statistics.median(rates), 1), "device": torch.cuda.get_device_name()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--size", type=int, default=224, help="output side of the decode comparison")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workers", type=int, nargs="*", default=[], help="loader worker counts to measure")
    parser.add_argument("--model", default="tiny-vit", help="preset whose training step the loader is compared to")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--batches", type=int, default=8, help="loader batches timed per worker count")
    args = parser.parse_args()

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    jpegs = web_jpegs(args.images)
    report: dict[str, Any] = {
        "images": args.images, "mean_kb": round(sum(map(len, jpegs)) / len(jpegs) / 1024, 1), "size": args.size,
        "repeats": args.repeats, "cpu_count": os.cpu_count(), "pillow": Image.__version__, "torch": torch.__version__,
        "pipelines": {name: time_pipeline(fn, jpegs, args.repeats) for name, fn in pipelines(args.size).items()},
        "mean_abs_diff_eval": fidelity(args.size, jpegs[:32]),
    }
    p = report["pipelines"]
    for kind in ("eval", "train"):
        report[f"speedup_{kind}"] = round(p[f"clipforge_{kind}"]["images_per_s_per_core"]
                                          / p[f"plain_{kind}"]["images_per_s_per_core"], 2)
    report["gpu_nvjpeg"] = gpu_rate(args.size, jpegs, args.repeats)
    if args.workers:
        torch.set_num_threads(threads)
        model = clipforge.create_model(args.model)
        steps = step_rate(model, args.batch_size, steps=5)
        torch.set_num_threads(1)  # the workers' own threads; the main process only collates
        with tempfile.TemporaryDirectory() as folder:
            for s in range(4):
                write_tar_shard(os.path.join(folder, f"{s:05d}.tar"),
                                [{"__key__": f"{s}{i:04d}", "jpg": data, "txt": "a photo"}
                                 for i, data in enumerate(jpegs[s::4])])
            rates = {w: loader_rate(jpegs, model, w, args.batch_size, args.batches, folder) for w in args.workers}
        report["loader"] = {
            "model": args.model, "image_size": model.config.vision.image_size, "batch_size": args.batch_size,
            "train_step_samples_per_s": round(steps, 1), "torch_threads_for_step": threads,
            "by_workers": {str(w): {"images_per_s": round(r, 1), "loader_fraction": round(r / steps, 2)}
                           for w, r in rates.items()},
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
