"""ONNX export parity per preset: fp32's largest difference from PyTorch, fp16's and int8's lowest cosine, as JSON.

    python benchmarks/export_parity.py                          # the small presets (random weights, seed 0)
    python benchmarks/export_parity.py --presets ViT-B-32       # any preset name

Each preset is built with ``torch.manual_seed(0)`` (random weights) and exported three times with
``clipforge.export.export_onnx`` (fp32, ``precision="fp16"``, ``quantize="int8"``); the figures are the ones the
exporter's own check writes to ``export.json`` (``parity``: onnxruntime beside PyTorch on random inputs, two batch
sizes, two text lengths where the length is dynamic). The CPU's name and instruction-set flags are printed too:
onnxruntime's int8 kernels differ with them (VNNI or not).
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
from pathlib import Path
from typing import Any

import torch

CASES: dict[str, tuple[str, dict[str, Any]]] = {  # row -> (preset, overrides)
    "tiny-vit": ("tiny-vit", {}),
    "tiny-vit, MAP pooling": ("tiny-vit", {"vision": {"pool": "map"}}),
    "tiny-rn": ("tiny-rn", {}),
    "clippo-tiny": ("clippo-tiny", {}),
    "siglip-tiny": ("siglip-tiny", {}),
}
VARIANTS: dict[str, dict[str, Any]] = {"fp32": {}, "fp16": {"precision": "fp16"}, "int8": {"quantize": "int8"}}


def cpu() -> dict[str, Any]:
    """The CPU's model name and the SIMD flags onnxruntime's kernels choose between (Linux; empty elsewhere)."""
    info: dict[str, Any] = {"machine": platform.machine(), "model": platform.processor(), "flags": []}
    path = Path("/proc/cpuinfo")
    if path.is_file():
        for line in path.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and not info["model"]:
                info["model"] = value.strip()
            if key.strip() == "flags":
                info["flags"] = sorted(f for f in value.split() if f.startswith(("avx", "amx")) or "vnni" in f)
                break
    return info


def parity(preset: str, overrides: dict[str, Any], work: Path) -> dict[str, Any]:
    """Each variant's ``export.json`` parity record per tower, for one randomly initialised preset."""
    from clipforge import create_model
    from clipforge.export import export_onnx

    torch.manual_seed(0)
    model = create_model(preset, **overrides).eval()
    found: dict[str, Any] = {}
    for variant, options in VARIANTS.items():
        out = export_onnx(model, work / variant, **options)
        records = json.loads((out / "export.json").read_text())["parity"]
        key = "max_abs_diff" if variant == "fp32" else "cosine_min"
        found[variant] = {tower: record[key] for tower, record in records.items()}
    return found


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", nargs="+", help="preset names instead of the small cases")
    args = p.parse_args(argv)
    cases = {name: (name, {}) for name in args.presets} if args.presets else CASES
    import onnxruntime

    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (row, (preset, overrides)) in enumerate(cases.items()):
            rows[row] = parity(preset, overrides, Path(tmp) / str(i))
    print(json.dumps({"benchmark": "export_parity", "cpu": cpu(), "torch": torch.__version__,
                      "onnxruntime": onnxruntime.__version__, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
