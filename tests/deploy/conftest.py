"""Exported directories of the tiny models, written by hand with ``torch.onnx.export`` in the exporter's layout
(``clipforge export MODEL OUT --to onnx``: image.onnx, text.onnx, the tokenizer's file, export.json), once per
session, with the PyTorch model and text processor they came from for the parity tests."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

import clipforge
from clipforge.config import to_dict
from clipforge.transforms import model_transforms

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")


@dataclass
class Exported:
    """An exported directory and what it was exported from."""

    directory: Path
    model: torch.nn.Module
    processor: Any  # the torch-side text processor
    eval_tf: Any


class _TextTower(torch.nn.Module):
    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(tokens)


def _export(module: torch.nn.Module, example: torch.Tensor, path: Path, name: str, axes: dict[int, str]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer warnings
        torch.onnx.export(module, (example,), str(path), input_names=[name], output_names=["features"],
                          dynamic_axes={name: axes, "features": {0: "batch"}}, opset_version=18, dynamo=False)


def export_model(model: torch.nn.Module, out: Path, processor: Any, kind: str, file: str | None,
                 settings: dict[str, Any]) -> Path:
    """Writes ``out`` as the exporter does (the schema in docs: export.json's fields, tower inputs and outputs)."""
    config = model.config
    size, dim = config.vision.image_size, config.embed_dim
    model = model.eval()
    _export(model.visual, torch.randn(2, 3, size, size), out / "image.onnx", "pixels", {0: "batch"})
    towers: dict[str, Any] = {"image": {"file": "image.onnx", "inputs": {"pixels": ["batch", 3, size, size]},
                                        "outputs": {"features": ["batch", dim]}}}
    context = None
    if config.family != "clippo":
        context = config.text.context_length
        causal = config.text.causal and config.text.pool == "eot"  # dynamic T only where padding is never read
        axes = {0: "batch", 1: "sequence"} if causal else {0: "batch"}
        _export(_TextTower(model), processor(["a photo", "two dogs"]), out / "text.onnx", "tokens", axes)
        towers["text"] = {"file": "text.onnx", "inputs": {"tokens": ["batch", "sequence" if causal else context]},
                          "outputs": {"features": ["batch", dim]}}
    bias = model.logit_bias
    manifest = {
        "format": "clipforge-onnx", "version": 1, "family": config.family, "model_config": to_dict(config),
        "towers": towers, "text_input": "pixels" if config.family == "clippo" else "tokens",
        "opset": 18, "precision": "fp32", "quantize": None,
        "logit_scale": float(model.scale().detach()), "logit_bias": None if bias is None else float(bias.detach()),
        "scoring": config.scoring,
        "preprocess": {"image_size": size, "resize": config.image_resize, "interpolation": "bicubic",
                       "mean": list(config.mean), "std": list(config.std)},
        "text_processor": {"kind": kind, "file": file, "context_length": context, "settings": settings},
        "parity": {},
    }
    (out / "export.json").write_text(json.dumps(manifest, indent=2))
    return out


@pytest.fixture(scope="session")
def clip_export(tmp_path_factory) -> Exported:
    """tiny-vit (CLIP: causal text tower, dynamic sequence axis, OpenAI's BPE saved with save_pretrained)."""
    torch.manual_seed(0)
    model, _, eval_tf = clipforge.create_model_and_transforms("tiny-vit")
    out = tmp_path_factory.mktemp("clip_export")
    processor = clipforge.get_text_processor(model)
    file = processor.save_pretrained(out).name
    settings = {"vocab_size": processor.vocab_size, "sot_token_id": processor.sot_token_id,  # the exporter's facts
                "eot_token_id": processor.eot_token_id, "pad_token_id": 0, "truncate": True, "max_chars": 8192,
                "pool": "eot", "pool_token_id": None}
    return Exported(export_model(model, out, processor, "bpe", file, settings), model.eval(), processor, eval_tf)


@pytest.fixture(scope="session")
def clippo_export(tmp_path_factory) -> Exported:
    """clippo-tiny (text rendered with Unifont, through the image tower)."""
    torch.manual_seed(0)
    model, _, eval_tf = clipforge.create_model_and_transforms("clippo-tiny")
    with torch.no_grad():
        model.logit_scale.fill_(2.0)  # probabilities far from uniform, so the softmax is tested
    out = tmp_path_factory.mktemp("clippo_export")
    processor = clipforge.get_text_processor(model)
    settings = {**processor.config.to_dict(), "normalize": "pixels / 255, then (x - mean) / std"}
    return Exported(export_model(model, out, processor, "render", None, settings), model.eval(), processor, eval_tf)


@pytest.fixture(scope="session")
def siglip_export(tmp_path_factory) -> Exported:
    """siglip-tiny with a SentencePiece tokenizer (SigLIP's layout, trained on the spot), bidirectional text tower
    pooled at the last padded position (fixed sequence length), sigmoid scoring."""
    spm = pytest.importorskip("sentencepiece")
    from helpers.spm import train_spm

    out = tmp_path_factory.mktemp("siglip_export")
    path = train_spm(out, style="siglip")
    vocab = spm.SentencePieceProcessor(model_file=str(path)).get_piece_size()
    torch.manual_seed(0)
    tokenizer = {"kind": "sentencepiece", "style": "siglip"}
    model = clipforge.create_model("siglip-tiny", tokenizer=tokenizer, text={"vocab_size": vocab})
    with torch.no_grad():
        model.logit_bias.fill_(-1.0)  # σ(10·cos − 1): probabilities spread around 0.3, not all ≈ 0
    processor = clipforge.get_text_processor(model, out)
    _, eval_tf = model_transforms(model.config)
    settings = {**processor.config.to_dict(), "vocab_size": vocab, "eos_token_id": processor.eos_token_id,
                "pad_token_id": processor.pad_token_id}
    return Exported(export_model(model, out, processor, "sentencepiece", path.name, settings), model.eval(),
                    processor, eval_tf)
