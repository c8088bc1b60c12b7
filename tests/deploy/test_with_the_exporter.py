"""The contract end to end: directories written by clipforge's own exporter (``clipforge.export.onnx.export_onnx``)
run in the runtime with the PyTorch model's numbers (skipped where the exporter is not installed)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from clipforge.deploy import Embedder

export_onnx = pytest.importorskip("clipforge.export.onnx").export_onnx

TEXTS = ["a photo of a cat", "Two DOGS!", "", "東京 写真 " * 30]


@pytest.mark.parametrize("name", ["clip", "clippo", "siglip"])
def test_exported_by_clipforge(name, request, tmp_path):
    source = request.getfixturevalue(f"{name}_export")  # its model and processor; exported again here
    out = export_onnx(source.model, tmp_path / "exported", text_processor=source.processor)
    embedder = Embedder(out)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in [(61, 97), (80, 33)]]
    with torch.no_grad():
        ref_images = source.model.encode_image(torch.stack([source.eval_tf(im) for im in images]), normalize=True)
        ref_texts = source.model.encode_text(source.processor(TEXTS), normalize=True)
    assert np.abs(embedder.embed_images(images) - ref_images.numpy()).max() < 1e-4
    assert np.abs(embedder.embed_texts(TEXTS) - ref_texts.numpy()).max() < 1e-4
    assert embedder.logit_scale == pytest.approx(float(source.model.scale().detach()))
    assert embedder.scoring == source.model.config.scoring
