"""``clipforge export MODEL OUT --to onnx``: a thin layer over ``clipforge.export.export_onnx``.

Examples::

    clipforge export runs/quickstart/final exported --to onnx                  # image.onnx, text.onnx, export.json
    clipforge export runs/quickstart/final exported-int8 --to onnx --quantize int8
    clipforge export hf-hub:timm/ViT-B-32-SigLIP2-256 siglip2 --to onnx --precision fp16
    clipforge export ViT-B-32:laion2b_s34b_b79k b32 --to onnx --tower image --opset 17

MODEL is anything ``clipforge.load`` opens (a model directory, a checkpoint, ``hf-hub:org/repo``, ``NAME:TAG`` or a
name with ``--pretrained``); a model name alone exports randomly initialised weights, with a warning. OUT must not
exist (an empty folder is fine) unless ``--overwrite`` is given and OUT is an earlier export. The export is checked
against PyTorch with onnxruntime unless ``--no-check``; the figures go into OUT/export.json. Needs
``pip install 'clipforge[onnx]'``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from clipforge.cli.args import ACTIVATIONS, verb_parser, whole_number
from clipforge.export.onnx import MAX_OPSET, MIN_OPSET

TOWERS = {"image": ("image",), "text": ("text",), "both": ("image", "text")}


def register(sub: argparse._SubParsersAction) -> None:
    """Adds the ``export`` verb."""
    p = verb_parser(sub, "export", help="export a model for serving without PyTorch (ONNX), checked against PyTorch",
                    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="a saved model directory / checkpoint, hf-hub:ORG/REPO[@REV], NAME:TAG, or a model "
                                 "name with --pretrained (a name alone: random weights)")
    p.add_argument("out", help="the export directory to write")
    p.add_argument("--to", required=True, choices=("onnx",), help="export format")
    p.add_argument("--tower", choices=tuple(TOWERS), default="both",
                   help="which towers (default: both; CLIPPO has one, written as image.onnx)")
    p.add_argument("--opset", type=whole_number(MIN_OPSET, MAX_OPSET), default=18,
                   help=f"ONNX opset, {MIN_OPSET}..{MAX_OPSET} (default: 18)")
    p.add_argument("--precision", choices=("fp32", "fp16"), default="fp32",
                   help="fp32, or fp16 weights and activations with fp32 inputs and outputs (default: fp32)")
    p.add_argument("--quantize", choices=("int8",), default=None,
                   help="dynamic int8 quantisation of the fp32 graph's matrix-multiply weights")
    p.add_argument("--pretrained", default=None, metavar="TAG",
                   help="OpenCLIP's pretrained tag of MODEL, e.g. laion2b_s34b_b79k (from the Hugging Face Hub cache)")
    p.add_argument("--allow-pickle", action="store_true",
                   help="allow reading a pickled .bin/.pt checkpoint (torch.load with weights_only=True)")
    p.add_argument("--act", choices=ACTIVATIONS, default=None,
                   help="MLP activation of an OpenAI/open_clip checkpoint (their files do not record it)")
    p.add_argument("--no-check", action="store_true", help="skip the onnxruntime parity check")
    p.add_argument("--overwrite", action="store_true", help="replace OUT when it is an earlier export")
    p.set_defaults(func=run)


def load_model(spec: str, pretrained: str | None, allow_pickle: bool, act: str | None) -> tuple[Any, Any]:
    """Opens MODEL on the CPU as ``(model, text processor)``; a bare model name gives random weights (warned).

    Raises:
        FileNotFoundError: ``spec`` is neither an existing path nor a known name.
    """
    from clipforge.api import create_model, get_text_processor, load
    from clipforge.checkpoints.hub import close_matches, is_hub_name, known_model_names, split_tag

    extra = {"act": act} if act else {}
    name, tag = (spec, pretrained) if os.path.exists(spec) else split_tag(spec, pretrained)
    if os.path.exists(spec) or is_hub_name(name) or tag is not None:
        model, _, loaded = load(name, device="cpu", pretrained=tag, allow_pickle=allow_pickle, **extra)
        return model, loaded
    if spec not in known_model_names():
        raise FileNotFoundError(f"model not found: {spec!r} is neither a saved model path nor a model name"
                                f"{close_matches(spec, known_model_names())} (see `clipforge models`)")
    print(f"warning: {spec!r} is a model name without --pretrained; exporting randomly initialised weights",
          file=sys.stderr)
    model = create_model(spec, device="cpu")
    try:
        return model, get_text_processor(model)
    except FileNotFoundError:  # a SentencePiece model travels with released weights; a fresh model has none
        return model, None


def run(args: argparse.Namespace) -> int:
    """Exports ``args.model`` into ``args.out`` and prints each tower's parity."""
    from clipforge.export import export_onnx
    from clipforge.export.onnx import check_destination

    check_destination(Path(args.out), args.overwrite)
    model, processor = load_model(args.model, args.pretrained, args.allow_pickle, args.act)
    if processor is None and "text" in TOWERS[args.tower] and model.config.family != "clippo":
        raise ValueError(f"MODEL {args.model!r}: its tokenizer is a SentencePiece model, which travels with released "
                         "weights and which randomly initialised ones lack; export --tower image, or give a model "
                         "directory, hf-hub: name or --pretrained tag")
    out = export_onnx(model, args.out, towers=TOWERS[args.tower], opset=args.opset, precision=args.precision,
                      quantize=args.quantize, text_processor=processor, check=not args.no_check,
                      overwrite=args.overwrite)
    manifest = json.loads((out / "export.json").read_text(encoding="utf-8"))
    files = ", ".join(t["file"] for t in manifest["towers"].values())
    print(f"wrote {out} ({files}, export.json; {manifest['precision']}"
          f"{', ' + manifest['quantize'] if manifest['quantize'] else ''}, opset {manifest['opset']})")
    for tower, record in manifest["parity"].items():
        print(f"  {tower}: max |onnx - torch| {record['max_abs_diff']:.3g}, min cosine {record['cosine_min']:.6f}")
    return 0
