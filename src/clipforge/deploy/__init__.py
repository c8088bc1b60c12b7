"""Embedding without torch: an exported model run with onnxruntime, numpy and PIL.

Install the runtime's one extra dependency with ``pip install 'clipforge[onnx]'`` (onnxruntime; a missing one is an
``ImportError`` that says so), export a model, then embed and classify::

    clipforge export runs/x/final exported/ --to onnx

    from clipforge.deploy import Embedder
    embedder = Embedder("exported/")
    embedder.embed_images(["cat.jpg"])           # (1, D) float32, L2-normalised
    embedder.embed_texts(["a cat", "a dog"])     # (2, D)
    embedder.classify("cat.jpg", ["cat", "dog"])  # [("cat", 0.97), ("dog", 0.03)]

Nothing here imports torch: images are preprocessed in PIL and numpy exactly as clipforge's eval transform does
(``clipforge.deploy.preprocess``), text goes through clipforge's own tokenizers and renderer (their ``numpy``
method), and the directory's ``export.json`` says how to score (``clipforge.deploy.manifest``).
"""

from __future__ import annotations

from clipforge.deploy.embedder import Embedder, l2_normalize
from clipforge.deploy.manifest import ExportInfo, read_export
from clipforge.deploy.preprocess import ImagePreprocessor, to_rgb

__all__ = ["Embedder", "ExportInfo", "ImagePreprocessor", "l2_normalize", "read_export", "to_rgb"]
