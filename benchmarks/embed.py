"""Embedding throughput on the CPU: ``clipforge embed``'s engine versus a plain open_clip loop, same images.

    python benchmarks/embed.py                                  # 384 JPEGs of 640×480, ViT-B/32, fp32 and bf16,
                                                                # and the onnx backend: fp32 and int8
    python benchmarks/embed.py --images 2000 --repeats 5 --workers 4 --batch-size 64

Both sides embed the same seeded, photo-like JPEGs (640×480, quality 90, written to a temporary folder) with a
ViT-B/32 of random weights (the architecture is what sets the cost; the weights need not match), the same torch
threads, the same DataLoader worker count and the same batch size:

- *open_clip*: ``open_clip.create_model_and_transforms("ViT-B-32", pretrained=None)``; a DataLoader over
  ``preprocess(PIL.Image.open(path))``; ``model.encode_image`` under ``torch.no_grad()`` (and
  ``torch.autocast("cpu", bfloat16)`` for bf16), features L2-normalised and kept as float16: what a user's loop does.
- *clipforge*: ``clipforge.search.embed.embed_source`` with clipforge's ``ViT-B-32`` preset into a fresh collection
  folder (``--precision`` fp32 or bf16; float16 storage), timed end to end: file listing, workers, writing the
  parts.
- *clipforge, onnx backend* (``clipforge embed --backend onnx [--quantize int8]``): the same engine with the towers
  in onnxruntime (``clipforge.search.onnx_backend``), fp32 and int8. The towers are exported once before the runs
  (``export_seconds``: what a fresh DIR pays once; a resumed run reuses its export) and the same export serves every
  run; each row's ratio is against the plain open_clip loop at fp32 of the same run.

Images/s is wall-clock, the median of ``--repeats`` runs (the two sides alternate, so a change in the machine's
load hits both; ``ratio_median_of_runs`` pairs each run's two sides). The decode pipelines alone (the same loaders
without a model) and the image towers alone (a random batch) are timed too, to show where the time goes. With
``--device cuda`` both models run on the GPU (decoding stays on the CPU workers), for a comparison with
clip-retrieval's published 1,500 images/s (RTX 3080). Prints JSON.
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_name  # benchmarks/machine.py


def write_jpegs(folder: Path, n: int, size: tuple[int, int] = (640, 480), seed: int = 0) -> list[Path]:
    """``n`` photo-like JPEGs (smooth colour fields plus grain, quality 90) in ``folder``."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize(size, Image.Resampling.BICUBIC)
        pixels = np.asarray(coarse, dtype=np.int16) + rng.normal(0, 6, (size[1], size[0], 3)).astype(np.int16)
        buffer = io.BytesIO()
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, format="JPEG", quality=90)
        path = folder / f"{i:05d}.jpg"
        path.write_bytes(buffer.getvalue())
        paths.append(path)
    return paths


class Files(torch.utils.data.Dataset):
    """The plain loop's dataset: ``preprocess(Image.open(path))``."""

    def __init__(self, paths: list[Path], preprocess: Any):
        self.paths, self.preprocess = paths, preprocess

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.preprocess(Image.open(self.paths[i]))


def open_clip_loop(model: Any, preprocess: Any, paths: list[Path], batch_size: int, workers: int,
                   precision: str | None, device: torch.device) -> float:
    """Images/s of the plain open_clip loop (``precision``: None for the loader alone, without a model)."""
    loader = torch.utils.data.DataLoader(Files(paths, preprocess), batch_size=batch_size, num_workers=workers,
                                         pin_memory=device.type == "cuda")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    start, out = time.perf_counter(), []
    with torch.no_grad(), autocast:
        for x in loader:
            if precision is not None:
                features = model.encode_image(x.to(device, non_blocking=True)).float()
                out.append(F.normalize(features, dim=-1).half().cpu().numpy())
    return len(paths) / (time.perf_counter() - start)


def clipforge_run(model: Any, folder: Path, out: Path, batch_size: int, workers: int, precision: str | None,
                  backend: str = "torch", quantize: str | None = None) -> float:
    """Images/s of clipforge's engine into a new collection (``precision`` None: its loader alone; ``backend`` onnx:
    ``model`` is an ``OnnxEvalModel``)."""
    from clipforge.data.sources import source_config
    from clipforge.search.embed import EmbedSettings, embed_source
    from clipforge.search.items import ItemSource, PartStream, PixelPrep, identity

    start = time.perf_counter()
    if precision is None:
        source = ItemSource(source_config(str(folder)), model.transform.size, 10_000)
        stream = PartStream(source, list(range(source.num_parts)), batch_size, PixelPrep(model.transform))
        loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=workers, collate_fn=identity,
                                             prefetch_factor=4 if workers else None)
        n = sum(len(m["row"]) for m in loader if not m.get("end"))
    else:
        settings = EmbedSettings(batch_size=batch_size, workers=workers, precision=precision, backend=backend,
                                 quantize=quantize, progress=False)
        n = embed_source(model, {"spec": "ViT-B-32", "pretrained": None}, source_config(str(folder)), out,
                         settings)["embedded"]
    return n / (time.perf_counter() - start)


def forward_rate(encode: Any, batch: torch.Tensor, precision: str) -> float:
    """Images/s of the image tower alone on a random batch (no data loading)."""
    with torch.no_grad(), torch.autocast(batch.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        encode(batch[:2])  # kernels chosen and warm
        start = time.perf_counter()
        encode(batch)
        if batch.device.type == "cuda":
            torch.cuda.synchronize()
    return len(batch) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=384)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads of the model")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--onnx", nargs="*", default=["fp32", "int8"], choices=["fp32", "int8"],
                        help="onnx backend rows (none: skip them; they need fp32 in --precisions and the CPU)")
    parser.add_argument("--device", default="cpu", help="where both models run (cuda: against clip-retrieval's "
                                                        "published 1,500 images/s on an RTX 3080)")
    args = parser.parse_args()
    device = torch.device(args.device)

    import open_clip

    from clipforge.eval.loading import load_eval_model

    torch.set_num_threads(args.threads)
    reference, _, preprocess = open_clip.create_model_and_transforms("ViT-B-32", pretrained=None)
    reference.eval().to(device)
    model = load_eval_model("ViT-B-32", str(device))[0]
    onnx_variants = args.onnx if device.type == "cpu" and "fp32" in args.precisions else []
    rates: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        paths = write_jpegs(folder, args.images)
        mean_kb = sum(p.stat().st_size for p in paths) / len(paths) / 1024
        onnx_models, export_seconds = {}, {}
        if onnx_variants:
            from clipforge.search.onnx_backend import onnx_eval_model

            for name in onnx_variants:
                start = time.perf_counter()
                onnx_models[name] = onnx_eval_model(model, Path(tmp) / f"onnx-{name}",
                                                    quantize=None if name == "fp32" else name)
                export_seconds[name] = round(time.perf_counter() - start, 1)
        for run in range(args.repeats):
            batch = torch.randn(args.batch_size, 3, 224, 224, device=device)
            for precision in args.precisions:
                side = rates.setdefault(f"forward_only_{precision}", {"open_clip": [], "clipforge": []})
                side["open_clip"].append(forward_rate(reference.encode_image, batch, precision))
                side["clipforge"].append(forward_rate(model.model.encode_image, batch, precision))
            for name, onnx in onnx_models.items():  # against the plain loop's fp32 forward of this run
                side = rates.setdefault(f"forward_only_onnx_{name}", {"open_clip": [], "clipforge": []})
                side["open_clip"].append(rates["forward_only_fp32"]["open_clip"][-1])
                side["clipforge"].append(forward_rate(onnx.encode_images, batch, "fp32"))
            for precision in [None, *args.precisions]:
                key = precision or "decode_only"
                side = rates.setdefault(key, {"open_clip": [], "clipforge": []})
                side["open_clip"].append(open_clip_loop(reference, preprocess, paths, args.batch_size, args.workers,
                                                        precision, device))
                side["clipforge"].append(clipforge_run(model, folder, Path(tmp) / f"out-{key}-{run}",
                                                       args.batch_size, args.workers, precision))
                print(f"run {run} {key}: open_clip {side['open_clip'][-1]:.1f}, clipforge "
                      f"{side['clipforge'][-1]:.1f} images/s", file=sys.stderr, flush=True)
            for name, onnx in onnx_models.items():  # the onnx backend against this run's plain fp32 loop
                key = f"onnx_{name}"
                side = rates.setdefault(key, {"open_clip": [], "clipforge": []})
                side["open_clip"].append(rates["fp32"]["open_clip"][-1])
                side["clipforge"].append(clipforge_run(onnx, folder, Path(tmp) / f"out-{key}-{run}", args.batch_size,
                                                       args.workers, "fp32", "onnx", onnx.quantize))
                print(f"run {run} {key}: open_clip fp32 {side['open_clip'][-1]:.1f}, clipforge onnx "
                      f"{side['clipforge'][-1]:.1f} images/s", file=sys.stderr, flush=True)
    figures = {}
    for key, side in rates.items():
        a, b = statistics.median(side["open_clip"]), statistics.median(side["clipforge"])
        paired = statistics.median(c / o for o, c in zip(side["open_clip"], side["clipforge"]))
        figures[key] = {"open_clip_images_per_s": round(a, 1), "clipforge_images_per_s": round(b, 1),
                        "ratio": round(b / a, 2), "ratio_median_of_runs": round(paired, 2),
                        "runs": {k: [round(v, 1) for v in vs] for k, vs in side.items()}}
        if key.startswith(("onnx_", "forward_only_onnx_")):
            figures[key]["reference"] = "the plain open_clip loop at fp32, the same run's figure"
            figures[key]["export_seconds"] = export_seconds[key.rsplit("_", 1)[1]]
    if "fp32" in figures and "bf16" in figures:
        figures["clipforge_bf16_vs_open_clip_fp32"] = round(figures["bf16"]["clipforge_images_per_s"]
                                                            / figures["fp32"]["open_clip_images_per_s"], 2)
    report = {
        "date": datetime.date.today().isoformat(),
        "command": "python " + " ".join(sys.argv),
        "machine": {"cpu": cpu_name(), "cpu_count": os.cpu_count(),
                    "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                    "load_average_at_end": [round(x, 2) for x in os.getloadavg()]},
        "versions": {"torch": torch.__version__, "open_clip": open_clip.__version__, "pillow": Image.__version__,
                     "python": platform.python_version()},
        "settings": {"images": args.images, "image_px": [640, 480], "mean_file_kb": round(mean_kb, 1),
                     "model": "ViT-B/32 (random weights), 224 px", "batch_size": args.batch_size,
                     "workers": args.workers, "torch_threads": args.threads, "repeats": args.repeats,
                     "statistic": "median of wall-clock images/s; the two sides alternate",
                     "onnx": {"variants": onnx_variants, "onnxruntime": _onnxruntime_version(onnx_variants),
                              "session": "intra-op threads = torch threads, sequential, ORT_ENABLE_ALL"}},
        "figures": figures,
    }
    print(json.dumps(report, indent=2))


def _onnxruntime_version(variants: list[str]) -> str | None:
    if not variants:
        return None
    import onnxruntime

    return str(onnxruntime.__version__)


if __name__ == "__main__":
    main()
