"""Exporting models for serving without PyTorch: ONNX graphs per tower with the files a runtime needs.

``export_onnx(model, out_dir)`` (``clipforge export MODEL OUT --to onnx``) writes ``image.onnx``, ``text.onnx``, the
text processor's vocabulary and ``export.json``, checked against PyTorch with onnxruntime. The ONNX packages load
only when an export runs: ``pip install 'clipforge[onnx]'``.
"""

from clipforge.export.onnx import ExportError, export_onnx

__all__ = ["ExportError", "export_onnx"]
