"""``export.json``: what a runtime needs beside the graphs to serve an exported model without clipforge's models.

The layout (``format: "clipforge-onnx"``, ``version: 1``) is the contract with the torch-free runtime; see
``docs/deployment.md``. This module writes its model-dependent parts: the preprocessing, the text processor (and its
vocabulary file, copied into the export so the directory is self-contained), the scoring.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from clipforge.config import to_dict
from clipforge.models.clip import ContrastiveModel

FORMAT = "clipforge-onnx"
VERSION = 1


def preprocess_record(config: Any) -> dict[str, Any]:
    """How images become the image tower's input (``clipforge.transforms.model_transforms``' eval transform)."""
    vision = config.vision
    record: dict[str, Any] = {"image_size": vision.image_size, "resize": config.image_resize,
                              "interpolation": "bicubic", "mean": list(config.mean), "std": list(config.std)}
    if getattr(vision, "naflex", False):  # clipforge.transforms.NaFlexTransform: aspect kept, under a patch budget
        record.update(resize="naflex", interpolation="bilinear_antialias", patch_size=vision.patch_size,
                      max_num_patches=vision.max_num_patches)
    return record


def text_processor_record(config: Any, processor: Any, directory: Path) -> dict[str, Any]:
    """Describes the text processor and writes its files into ``directory``.

    ``settings`` are exactly the processor's own settings, so a runtime rebuilds it from them and ``file``:
    ``BPETokenizer(vocab_path=file, **settings)``, ``SentencePieceTokenizer(file, SentencePieceConfig.from_dict(
    settings))``, ``UnifontRenderer(RenderConfig.from_dict(settings))``. BPE writes the merges in use as
    ``bpe_vocab.txt.gz`` (OpenAI's too); SentencePiece its model file; the renderer nothing (the font ships with
    clipforge), and its uint8 pixels are normalised as ``pixel_normalization`` says before image.onnx.

    Raises:
        ValueError: the processor is none of the three.
    """
    from clipforge.text.bpe import BPETokenizer
    from clipforge.text.render import UnifontRenderer
    from clipforge.text.sentencepiece import SentencePieceTokenizer

    if isinstance(processor, UnifontRenderer):  # CLIPPO.encode_text: (pixels / 255 - mean) / std
        return {"kind": "render", "file": None, "context_length": None, "settings": processor.config.to_dict(),
                "pixel_normalization": {"divide_by": 255, "mean": list(config.mean), "std": list(config.std)}}
    if isinstance(processor, SentencePieceTokenizer):
        path = processor.save_pretrained(directory)
        return {"kind": "sentencepiece", "file": path.name, "context_length": processor.context_length,
                "settings": processor.config.to_dict(), "vocab_size": processor.vocab_size,
                "special_ids": {"eos": processor.eos_token_id, "pad": processor.pad_token_id}}
    if isinstance(processor, BPETokenizer):
        path = processor.save_pretrained(directory)
        return {"kind": "bpe", "file": path.name, "context_length": processor.context_length,
                "settings": {"context_length": processor.context_length, "truncate": processor.truncate,
                             "max_chars": processor.max_chars},
                "vocab_size": processor.vocab_size,
                "special_ids": {"sot": processor.sot_token_id, "eot": processor.eot_token_id, "pad": 0}}
    raise ValueError(f"cannot export the text processor {type(processor).__name__}: expected clipforge's BPE "
                     "tokenizer, SentencePiece tokenizer or Unifont renderer")


def build_manifest(model: ContrastiveModel, towers: dict[str, Any], text_processor: dict[str, Any] | None, opset: int,
                   precision: str, quantize: str | None, parity: dict[str, Any], exporter: dict[str, str]
                   ) -> dict[str, Any]:
    """The whole export.json (see the module docstring)."""
    config = model.config
    bias = model.logit_bias
    return {
        "format": FORMAT, "version": VERSION, "family": config.family,
        "model_config": to_dict(config),
        "towers": towers,
        "text_input": "pixels" if config.family == "clippo" else "tokens",
        "opset": opset, "precision": precision, "quantize": quantize,
        "logit_scale": float(model.scale().detach().float()),
        "logit_bias": float(bias.detach().float()) if bias is not None else None,
        "scoring": config.scoring,
        "preprocess": preprocess_record(config),
        "text_processor": text_processor,
        "parity": parity,
        "exporter": exporter,
    }
