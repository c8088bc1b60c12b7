"""The ONNX backend of embedding, search and serving: an ``EvalModel`` whose towers run in onnxruntime.

``onnx_eval_model(eval_model, cache_dir)`` exports the PyTorch model's towers with :func:`clipforge.export.export_onnx`
into ``cache_dir`` (its parity check against PyTorch included: an fp32 graph further than
``clipforge.export.onnx.FP32_TOLERANCE`` from PyTorch is an error), or reuses the export already there when it was
made from the same weights (fingerprint), opset and quantisation (``source.json`` beside ``export.json`` records
the fingerprint). The result, :class:`OnnxEvalModel`, is an ``EvalModel`` like any other: the same transform and
text processor, the same fingerprint, logit scale, bias and scoring (the PyTorch model's, kept for these), while
``encode_images`` and ``encode_texts`` run onnxruntime's CPU sessions. At fp32 its embeddings are the PyTorch
model's to about 1e-6; on a CPU a ViT's forward is much faster (``benchmarks/results/*-cpu-onnx-vit-b32.json``).

CLIPPO has one tower: its texts are rendered by its processor (uint8 pixels), normalised as ``CLIPPO.encode_text``
does, and run through the image graph. A SigLIP 2 NaFlex image tower takes the NaFlex batch's three tensors.

onnxruntime is optional: ``pip install 'clipforge[onnx]'``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from clipforge.eval.adapter import EvalModel

INSTALL_HINT = "pip install 'clipforge[onnx]'"
BACKENDS = ("torch", "onnx")
QUANTIZATIONS = (None, "int8")
OPSET = 18
SOURCE = "source.json"  # beside export.json: which weights, opset and quantisation the export was made from


def onnxruntime_module() -> Any:
    """``onnxruntime``, or an ImportError naming the extra."""
    try:
        import onnxruntime
    except ImportError:
        raise ImportError(f"the onnx backend runs the model with onnxruntime, which is not installed: "
                          f"{INSTALL_HINT}") from None
    return onnxruntime


def variant(quantize: str | None) -> str:
    """The name of an export's precision: ``fp32`` or the quantisation (``int8``)."""
    return quantize or "fp32"


def _session(path: Path, threads: int) -> Any:
    """A CPU session on ``path``: ``threads`` intra-op threads, sequential execution, every graph optimisation."""
    ort = onnxruntime_module()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxEvalModel(EvalModel):
    """An ``EvalModel`` whose towers run in onnxruntime sessions on the CPU (see the module docstring).

    Args:
        torch_model: The PyTorch ``EvalModel`` the export was made from (its transform, processor, fingerprint,
            logit scale, bias and scoring are this model's).
        export_dir: An ``export_onnx`` directory of that model (fp32 or int8).
        threads: Intra-op threads of each session (default: ``torch.get_num_threads()``).

    Raises:
        ImportError: onnxruntime is missing (naming ``pip install 'clipforge[onnx]'``).
        ValueError: ``export_dir`` lacks a graph the model needs.
    """

    def __init__(self, torch_model: EvalModel, export_dir: str | Path, threads: int | None = None):
        super().__init__(torch_model.model, torch_model.transform, torch_model.processor, "cpu")
        self._fingerprint = torch_model.fingerprint()
        self.export_dir = Path(export_dir)
        self.export = json.loads((self.export_dir / "export.json").read_text())
        self.quantize: str | None = self.export.get("quantize")
        self.threads = threads or torch.get_num_threads()
        self.family = str(self.export.get("family", "clip"))
        files = {"image": self.export_dir / "image.onnx", "text": self.export_dir / "text.onnx"}
        needed = ("image",) if self.family == "clippo" else ("image", "text")
        missing = [str(files[t]) for t in needed if not files[t].is_file()]
        if missing:
            raise ValueError(f"{self.export_dir}: not a whole export of a {self.family} model (missing "
                             f"{', '.join(missing)}); delete the folder to export again")
        self.image_session = _session(files["image"], self.threads)
        self.image_inputs = [i.name for i in self.image_session.get_inputs()]
        self.text_session = self.image_session if self.family == "clippo" else _session(files["text"], self.threads)
        config: Any = getattr(self.model, "config", None)
        self._mean = torch.tensor(list(getattr(config, "mean", (0.0, 0.0, 0.0)))).view(1, 3, 1, 1)
        self._std = torch.tensor(list(getattr(config, "std", (1.0, 1.0, 1.0)))).view(1, 3, 1, 1)

    @property
    def backend(self) -> str:
        """``onnx``."""
        return "onnx"

    def _image_features(self, images: Any) -> np.ndarray:
        if self.image_inputs == ["pixels"]:
            feed = {"pixels": np.ascontiguousarray(images.detach().cpu().float().numpy())}
        else:  # a NaFlex batch: patches (B, N, 3·p·p), mask (B, N), spatial_shapes (B, 2)
            feed = {"patches": images.patches.detach().cpu().float().numpy(),
                    "mask": images.mask.detach().cpu().bool().numpy(),
                    "spatial_shapes": images.spatial_shapes.detach().cpu().long().numpy()}
        return np.asarray(self.image_session.run(["features"], feed)[0], dtype=np.float32)

    def encode_images(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Embeds a batch of transformed images (N, 3, H, W) → float32 (N, D) on the CPU, with onnxruntime."""
        x = torch.from_numpy(self._image_features(images))
        return F.normalize(x, dim=-1) if normalize else x

    def _text_features(self, text_input: torch.Tensor) -> np.ndarray:
        if self.family == "clippo":  # rendered uint8 pixels, normalised as CLIPPO.encode_text does
            pixels = (text_input.float().div(255) - self._mean) / self._std
            return self._image_features(pixels)
        tokens = np.ascontiguousarray(text_input.detach().cpu().long().numpy())
        return np.asarray(self.text_session.run(["features"], {"tokens": tokens})[0], dtype=np.float32)

    def encode_texts(self, texts: Sequence[str], normalize: bool = True, batch_size: int = 256) -> torch.Tensor:
        """Embeds strings → float32 (N, D) on the CPU, ``batch_size`` at a time, with onnxruntime."""
        out = []
        for i in range(0, len(texts), batch_size):
            x = torch.from_numpy(self._text_features(self.processor(list(texts[i:i + batch_size]))))
            out.append(F.normalize(x, dim=-1) if normalize else x)
        if not out:
            raise ValueError("no texts to encode")
        return torch.cat(out)


def _reusable(cache_dir: Path, fingerprint: str, opset: int, quantize: str | None) -> bool:
    """Whether ``cache_dir`` holds a finished export of these weights at this opset and quantisation."""
    try:
        export = json.loads((cache_dir / "export.json").read_text())
        source = json.loads((cache_dir / SOURCE).read_text())
    except (OSError, ValueError):
        return False
    return (source.get("fingerprint") == fingerprint and export.get("opset") == opset
            and export.get("precision") == "fp32" and export.get("quantize") == quantize)


def onnx_eval_model(eval_model: EvalModel, cache_dir: str | Path, quantize: str | None = None,
                    opset: int = OPSET, threads: int | None = None) -> OnnxEvalModel:
    """``eval_model`` with its towers in onnxruntime, exported into ``cache_dir`` (or the export there reused).

    Args:
        eval_model: A PyTorch ``EvalModel`` (CLIP, SigLIP or CLIPPO; any device: exported from the CPU).
        cache_dir: The export's folder; an export of the same weights (fingerprint), opset and ``quantize`` found
            there is reused, anything else there written by an earlier export is replaced.
        quantize: ``None`` (fp32, checked against PyTorch within ``FP32_TOLERANCE``) or ``int8`` (dynamic
            quantisation of the MatMul/Gemm weights; its closeness to PyTorch is recorded in export.json).
        opset: ONNX opset of a new export.
        threads: Intra-op threads of each session (default: ``torch.get_num_threads()``).

    Returns:
        The :class:`OnnxEvalModel`.

    Raises:
        ImportError: onnx or onnxruntime is missing, naming ``pip install 'clipforge[onnx]'``.
        ValueError: a bad ``quantize``; ``cache_dir`` holds something that is not an export.
        clipforge.export.ExportError: a layer has no ONNX form, or the fp32 graph differs from PyTorch.
    """
    if quantize not in QUANTIZATIONS:
        raise ValueError(f"quantize must be one of {list(QUANTIZATIONS)}, got {quantize!r}")
    if isinstance(eval_model, OnnxEvalModel):
        raise ValueError("onnx_eval_model takes the PyTorch EvalModel, not an OnnxEvalModel")
    onnxruntime_module()
    cache_dir = Path(cache_dir)
    fingerprint = eval_model.fingerprint()
    if not _reusable(cache_dir, fingerprint, opset, quantize):
        from clipforge.export import export_onnx

        model: Any = eval_model.model
        export_onnx(model, cache_dir, towers=("image", "text"), opset=opset, quantize=quantize,
                    text_processor=eval_model.processor, check=True, overwrite=True)
        tmp = cache_dir / f"{SOURCE}.tmp{os.getpid()}"
        tmp.write_text(json.dumps({"fingerprint": fingerprint, "opset": opset, "quantize": quantize}, indent=2)
                       + "\n")
        os.replace(tmp, cache_dir / SOURCE)
    return OnnxEvalModel(eval_model, cache_dir, threads)
