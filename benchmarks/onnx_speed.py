"""ONNX on the CPU: PyTorch eager, torch.compile, onnxruntime fp32 and int8, one tower, same inputs, one process.

Two parts, one JSON object (the layout of ``benchmarks/results/``):

- latency: median wall time of one forward pass at batch 1 and batch 32 (and images/s) of the image tower of
  ``--latency-model`` (default ViT-B/32, random weights: the speed does not depend on them) in PyTorch eager
  (``inference_mode``), ``torch.compile`` (default mode; its compile time is reported, a failure is recorded),
  onnxruntime with the fp32 export and with the int8 export (``clipforge export --quantize int8``: MatMul/Gemm
  weights, a scale per output channel), and, to show why the int8 export leaves convolutions alone, an int8 graph
  whose convolutions are quantised too. Each variant's cosine similarity to the eager features is reported beside it.
- zero-shot: top-1 accuracy on the synthetic world's validation tasks of the PyTorch model and of its fp32 and int8
  exports run by onnxruntime (``clipforge.train.evaluate``'s scoring, the exports' own text and image graphs).
  Beside them, an int8 graph with one weight scale per matrix (what the export does not do, and why).
  The model is ``--model DIR``, or, when none is given, ``configs/quickstart.yaml`` trained for ``--train-steps``
  steps first (reported in the JSON).

Targets: int8 throughput at batch 32 at least twice eager's, int8 zero-shot accuracy within 1 point of fp32's on
every task.

    python benchmarks/onnx_speed.py                                  # ViT-B/32 latency; quickstart trained 300 steps
    python benchmarks/onnx_speed.py --model runs/quickstart/final    # zero-shot of a trained model
    python benchmarks/onnx_speed.py --latency-model tiny-vit --repeats 3 --train-steps 40   # a smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {"int8_vs_eager_throughput_batch32": 2.0, "int8_zeroshot_points_below_fp32": 1.0}


def timed(fn: Callable[[], Any], repeats: int, warmup: int) -> dict[str, float]:
    """Median and best wall time of ``fn`` in milliseconds, after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return {"median_ms": 1000 * statistics.median(times), "min_ms": 1000 * min(times), "runs": repeats}


def cosine_min(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return float(((a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))).min())


def ort_session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def quantize_static_int8(src: Path, dst: Path, feeds: list[dict[str, np.ndarray]]) -> str | None:
    """Static int8 (QDQ, MinMax calibration on ``feeds``, weights per channel) of the export's MatMul/Gemm.

    Returns None, or the error as text when onnxruntime could not quantise the graph (then ``dst`` is not written).
    """
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from clipforge.export.onnx import INT8_OP_TYPES

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.feeds = iter(feeds)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.feeds, None)

    try:
        quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        op_types_to_quantize=list(INT8_OP_TYPES))
    except Exception as e:
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return None


def latency(name: str, batches: list[int], repeats: int, threads: int, work: Path,
            static_int8: bool = True) -> dict[str, Any]:
    """Every variant's latency and throughput at each batch size, with its cosine to eager's features."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from clipforge.api import create_model
    from clipforge.export import export_onnx

    torch.manual_seed(0)
    model = create_model(name).eval()
    visual, size = model.visual, model.config.vision.image_size
    fp32 = export_onnx(model, work / "latency-fp32", towers=("image",))
    int8 = export_onnx(model, work / "latency-int8", towers=("image",), quantize="int8")
    conv = work / "latency-int8-conv.onnx"  # every op quantize_dynamic knows, convolutions included
    conv_error = None
    try:
        quantize_dynamic(str(fp32 / "image.onnx"), str(conv), weight_type=QuantType.QInt8, per_channel=True,
                         reduce_range=True)  # the export's 7-bit weights: only the convolutions differ
    except Exception as e:  # e.g. a ResNet: BatchNorm folded into its convolutions is not an initializer
        conv_error = f"{type(e).__name__}: {e}"
    sessions = {"onnxruntime_fp32": ort_session(fp32 / "image.onnx", threads),
                "onnxruntime_int8": ort_session(int8 / "image.onnx", threads)}
    if conv_error is None:
        sessions["onnxruntime_int8_with_conv"] = ort_session(conv, threads)
    # Static int8: random weights, so calibration on random pixels (4 batches of 4); only its speed is meaningful.
    static = work / "latency-int8-static.onnx"
    calibration = [{"pixels": torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(100 + i)).numpy()}
                   for i in range(4)]
    start = time.perf_counter()
    static_error = quantize_static_int8(fp32 / "image.onnx", static, calibration) if static_int8 else "not run"
    static_s = round(time.perf_counter() - start, 1)
    if static_error is None:
        sessions["onnxruntime_int8_static"] = ort_session(static, threads)
    compiled: Any = None
    compile_record: dict[str, Any] = {}
    try:
        compiled = torch.compile(visual)
    except Exception as e:
        compile_record = {"error": f"{type(e).__name__}: {str(e).splitlines()[0]}"}

    results: dict[str, Any] = {}
    for batch in batches:
        x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(batch))
        feed = {"pixels": x.numpy()}
        warm, reps = (2, repeats * 4) if batch == 1 else (1, repeats)
        with torch.inference_mode():
            reference = visual(x).numpy()
            row: dict[str, Any] = {"pytorch_eager": timed(lambda x=x: visual(x), reps, warm)}
            if compiled is not None and "error" not in compile_record:
                try:
                    start = time.perf_counter()
                    out = compiled(x).numpy()
                    compile_record.setdefault("compile_s_first_call", {})[str(batch)] = time.perf_counter() - start
                    row["pytorch_compiled"] = {**timed(lambda x=x: compiled(x), reps, warm),
                                               "cosine_to_eager": cosine_min(out, reference)}
                except Exception as e:
                    compile_record = {"error": f"{type(e).__name__}: {str(e).splitlines()[0]}"}
        for label, sess in sessions.items():
            out = sess.run(["features"], feed)[0]
            row[label] = {**timed(lambda s=sess, f=feed: s.run(["features"], f), reps, warm),
                          "cosine_to_eager": cosine_min(out, reference)}
        eager = row["pytorch_eager"]["median_ms"]
        for record in row.values():
            record["images_per_s"] = batch / (record["median_ms"] / 1000)
            record["throughput_vs_eager"] = eager / record["median_ms"]
        results[f"batch_{batch}"] = row
    return {"model": f"{name} image tower (random weights)", "image_size": size, "threads": threads,
            "results": results, "torch_compile": compile_record or {"ok": True},
            "int8_with_conv_error": conv_error,
            "int8_static": {"error": static_error, "quantize_s": static_s,
                            "calibration": "4 batches of 4 random images"}}


class OnnxModel(torch.nn.Module):
    """An export directory's graphs behind ``encode_image`` / ``encode_text``, for clipforge's evaluation."""

    def __init__(self, directory: Path, threads: int):
        super().__init__()
        manifest = json.loads((directory / "export.json").read_text())
        self.sessions = {tower: ort_session(directory / record["file"], threads)
                         for tower, record in manifest["towers"].items()}
        self.logit_scale = torch.nn.Parameter(torch.tensor(float(np.log(manifest["logit_scale"]))))

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        x = torch.from_numpy(self.sessions["image"].run(["features"], {"pixels": images.numpy()})[0])
        return torch.nn.functional.normalize(x, dim=-1) if normalize else x

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        x = torch.from_numpy(self.sessions["text"].run(["features"], {"tokens": tokens.numpy()})[0])
        return torch.nn.functional.normalize(x, dim=-1) if normalize else x


def train_quickstart(steps: int, directory: Path) -> Path:
    """``configs/quickstart.yaml`` for ``steps`` steps into ``directory``; its ``final`` model directory."""
    from clipforge.train import init_runtime, load_config, parse_overrides, train

    overrides = parse_overrides([f"steps={steps}", f"output_dir={directory}", "eval.every=0"])
    config = load_config(ROOT / "configs/quickstart.yaml", overrides)
    with contextlib.redirect_stdout(sys.stderr):  # the training log is not part of the JSON
        result = train(config, init_runtime("cpu"))
    return result.run_dir / "final"


def zero_shot(model_dir: Path, size: int, threads: int, work: Path, calibration: int = 256) -> dict[str, Any]:
    """Zero-shot top-1 (%) per synthetic task of the PyTorch model and of its fp32, fp16 and int8 exports.

    int8 is the export's (dynamic) and a static (QDQ) one calibrated on ``calibration`` training-split scenes and
    their captions through the eval transform and the text processor.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from clipforge.api import load
    from clipforge.data.synthetic import SyntheticWorld
    from clipforge.export import export_onnx
    from clipforge.export.onnx import INT8_OP_TYPES
    from clipforge.train import load_config
    from clipforge.train.evaluate import build_eval_set, evaluate

    model, eval_tf, processor = load(model_dir, device="cpu")
    data = load_config(ROOT / "configs/quickstart.yaml").data  # the synthetic world, seed 0, the val split
    world = SyntheticWorld(data.world_config(model.config.vision.image_size))
    eval_set = build_eval_set(world, eval_tf, size, 0, "en", "val")
    cpu = torch.device("cpu")
    scores = {"pytorch": evaluate(model, eval_set, processor, cpu)}
    for label, precision, quantize in (("onnx_fp32", "fp32", None), ("onnx_fp16", "fp16", None),
                                       ("onnx_int8", "fp32", "int8")):
        out = export_onnx(model, work / f"zeroshot-{label}", precision=precision, quantize=quantize,
                          text_processor=processor)
        scores[label] = evaluate(OnnxModel(out, threads), eval_set, processor, cpu)
    # Static int8 (QDQ): activation ranges calibrated on training-split scenes (not the val split scored here).
    fp32_dir, static_dir = work / "zeroshot-onnx_fp32", work / "zeroshot-onnx_int8_static"
    shutil.copytree(fp32_dir, static_dir)
    samples = [world.sample("train", i) for i in range(calibration)]
    images = torch.stack([eval_tf(s.image) for s in samples]).numpy()
    tokens = processor([s.caption for s in samples]).numpy()
    static_errors = {}
    for tower, name, array in (("image", "pixels", images), ("text", "tokens", tokens)):
        feeds = [{name: array[i:i + 32]} for i in range(0, len(array), 32)]
        error = quantize_static_int8(fp32_dir / f"{tower}.onnx", static_dir / f"{tower}.onnx", feeds)
        if error is not None:  # that tower stays fp32 in the static variant; the error is reported
            static_errors[tower] = error
    scores["onnx_int8_static"] = evaluate(OnnxModel(static_dir, threads), eval_set, processor, cpu)
    # What the export does not do, for comparison: one weight scale per matrix instead of one per output channel.
    per_tensor = work / "zeroshot-onnx_int8_per_tensor"
    shutil.copytree(work / "zeroshot-onnx_fp32", per_tensor)
    for tower in ("image", "text"):
        quantize_dynamic(str(work / "zeroshot-onnx_fp32" / f"{tower}.onnx"), str(per_tensor / f"{tower}.onnx"),
                         weight_type=QuantType.QInt8, op_types_to_quantize=list(INT8_OP_TYPES),
                         reduce_range=True)  # as the export, but one scale per matrix
    scores["onnx_int8_per_tensor"] = evaluate(OnnxModel(per_tensor, threads), eval_set, processor, cpu)
    percent = {label: {k.split("/", 1)[1]: round(100 * v, 2) for k, v in s.items() if k.startswith("zeroshot/")}
               for label, s in scores.items()}
    def below(label: str) -> dict[str, float]:
        return {task: round(percent["onnx_fp32"][task] - percent[label][task], 2) for task in percent["onnx_fp32"]}

    drop = below("onnx_int8")
    return {"model": str(model_dir), "images_per_task": size,
            "top1_percent": percent, "int8_points_below_fp32": drop,
            "int8_points_below_fp32_mean": round(statistics.mean(drop.values()), 2),
            "fp16_points_below_fp32": below("onnx_fp16"), "int8_static_points_below_fp32": below("onnx_int8_static"),
            "int8_static": {"calibration": f"{calibration} training-split scenes and their captions, batches of 32",
                            "format": "QDQ, MinMax, int8 activations and per-channel int8 weights, MatMul/Gemm",
                            "errors": static_errors or None}}


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latency-model", default="ViT-B/32", help="preset whose image tower is timed")
    parser.add_argument("--batches", default="1,32", help="comma-separated batch sizes (default: 1,32)")
    parser.add_argument("--repeats", type=int, default=7, help="timed calls per variant at batch > 1 (×4 at 1)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads for torch and ORT")
    parser.add_argument("--model", default=None, help="a trained model directory for the zero-shot part")
    parser.add_argument("--train-steps", type=int, default=300, help="quickstart steps when --model is not given")
    parser.add_argument("--eval-size", type=int, default=200, help="images per zero-shot task (default: 200)")
    parser.add_argument("--calibration", type=int, default=256, help="static int8 calibration scenes (default 256)")
    parser.add_argument("--skip-zeroshot", action="store_true", help="time only")
    parser.add_argument("--skip-latency", action="store_true", help="zero-shot only")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()
    started = time.perf_counter()
    import onnxruntime

    from clipforge.export.onnx import INT8_OP_TYPES

    output: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="clipforge-onnx-bench-") as tmp:
        work = Path(tmp)
        if not args.skip_latency:
            output["latency"] = latency(args.latency_model, [int(b) for b in args.batches.split(",")],
                                        args.repeats, args.threads, work)
        if not args.skip_zeroshot:
            trained = None
            if args.model is None:
                start = time.perf_counter()
                model_dir = train_quickstart(args.train_steps, work / "quickstart")
                trained = {"config": "configs/quickstart.yaml", "steps": args.train_steps,
                           "wall_time_s": round(time.perf_counter() - start, 1)}
            else:
                model_dir = Path(args.model)
            output["zeroshot"] = {**zero_shot(model_dir, args.eval_size, args.threads, work,
                                                  args.calibration), "trained_here": trained}
    row = output["latency"]["results"].get("batch_32") if "latency" in output else None
    measured = {}
    if row:
        measured["int8_vs_eager_throughput_batch32"] = round(row["onnxruntime_int8"]["throughput_vs_eager"], 2)
    if "zeroshot" in output:
        measured["int8_zeroshot_points_below_fp32"] = max(output["zeroshot"]["int8_points_below_fp32"].values())
    output["targets"] = {k: {"target": v, "measured": measured.get(k),
                             "met": None if k not in measured else (measured[k] >= v if "throughput" in k
                                                                    else measured[k] <= v)}
                         for k, v in TARGETS.items()}
    output["int8_op_types"] = list(INT8_OP_TYPES)
    output["wall_time_s"] = round(time.perf_counter() - started, 1)
    record = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{os.cpu_count()}-core CPU ({platform.machine()}, {platform.processor() or 'unknown'}); load "
                   f"average {load_start[0]:.2f} at the start, {os.getloadavg()[0]:.2f} at the end",
        "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
                     "python": platform.python_version(), "clipforge": f"commit {git_commit()}"},
        "command": "python benchmarks/onnx_speed.py " + " ".join(argv),
        "output": output,
        "source": f"printed by benchmarks/onnx_speed.py at commit {git_commit()}",
    }
    print(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
