"""The runtime in a process where torch cannot be imported: ``from clipforge.deploy import Embedder`` works, and its
embeddings and probabilities for CLIP, CLIPPO and SigLIP equal the PyTorch model's (computed here, with torch)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from clipforge.data.decode import DecodeLimits, read_image
from clipforge.eval.adapter import EvalModel
from clipforge.eval.zeroshot import build_classifier

# A meta-path finder that refuses torch (and torchvision), installed before anything else runs.
NO_TORCH = """
import sys
class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision"):
            raise ImportError(f"torch is blocked in this test ({name})")
        return None
sys.meta_path.insert(0, NoTorch())
"""

SCRIPT = NO_TORCH + """
import json
import numpy as np
try:
    import torch
    raise SystemExit("torch imported despite the block")
except ImportError:
    pass
import clipforge
assert clipforge.__version__
from clipforge.deploy import Embedder
jobs = json.loads(sys.argv[1])
out = {}
for name, job in jobs.items():
    embedder = Embedder(job["directory"], threads=1)
    np.save(job["images_out"], embedder.embed_images(job["images"]))
    np.save(job["texts_out"], embedder.embed_texts(job["texts"]))
    out[name] = embedder.classify(job["images"][0], job["labels"])
try:
    clipforge.create_model  # the public API needs torch: it is imported on first use, and fails here
    raise SystemExit("clipforge.create_model resolved without torch")
except ImportError:
    pass
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision"))
print(json.dumps({"classify": out, "torch_modules": loaded}))
"""

TEXTS = ["a photo of a cat", "Two DOGS!", "", "東京 写真"]
LABELS = ["cat", "dog", "car"]


def write_images(directory: Path) -> list[str]:
    rng = np.random.default_rng(1)
    from PIL import Image

    paths = []
    for i, (w, h, mode) in enumerate([(97, 61, "RGB"), (40, 90, "RGBA"), (33, 33, "L")]):
        pixels = rng.integers(0, 256, (h, w, 4), dtype=np.uint8)
        image = Image.fromarray(pixels, "RGBA")
        (image if mode == "RGBA" else image.convert(mode)).save(directory / f"{i}.png")
        paths.append(str(directory / f"{i}.png"))
    return paths


@pytest.mark.distributed  # spawns a process
def test_embedder_runs_and_matches_without_torch(clip_export, clippo_export, siglip_export, tmp_path):
    exports = {"clip": clip_export, "clippo": clippo_export, "siglip": siglip_export}
    paths = write_images(tmp_path)
    jobs = {name: {"directory": str(e.directory), "images": paths, "texts": TEXTS, "labels": LABELS,
                   "images_out": str(tmp_path / f"{name}_images.npy"), "texts_out": str(tmp_path / f"{name}_texts.npy")}
            for name, e in exports.items()}
    run = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(jobs)], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["torch_modules"] == []
    decoded = [read_image(p, DecodeLimits()) for p in paths]
    for name, e in exports.items():
        with torch.no_grad():
            images = e.model.encode_image(torch.stack([e.eval_tf(im) for im in decoded]), normalize=True).numpy()
            texts = e.model.encode_text(e.processor(TEXTS), normalize=True).numpy()
            eval_model = EvalModel(e.model, e.eval_tf, e.processor)
            weights = build_classifier(eval_model, LABELS, ["a photo of a {}."], use_cache=False)
            probs = eval_model.probabilities(eval_model.encode_images(e.eval_tf(decoded[0])[None]) @ weights)[0]
        assert np.abs(np.load(jobs[name]["images_out"]) - images).max() < 1e-4, name
        assert np.abs(np.load(jobs[name]["texts_out"]) - texts).max() < 1e-4, name
        got = dict(result["classify"][name])
        np.testing.assert_allclose([got[label] for label in LABELS], probs.numpy(), atol=1e-5, err_msg=name)


@pytest.mark.distributed
def test_the_block_blocks():
    """The prelude really makes torch unimportable (so the test above can fail)."""
    run = subprocess.run([sys.executable, "-c", NO_TORCH + "import clipforge\nclipforge.create_model\n"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode != 0 and "torch is blocked" in run.stderr


@pytest.mark.distributed
def test_import_clipforge_imports_no_torch():
    """The public package resolves its names lazily: importing it, or the runtime, loads no torch; the names
    still resolve (with torch) and ``__all__`` is unchanged."""
    code = ("import sys, clipforge, clipforge.deploy, clipforge.text.bpe, clipforge.text.render, "
            "clipforge.text.sentencepiece\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "[]"


def test_the_public_api_is_unchanged():
    import clipforge
    from clipforge.models.clip import CLIP

    assert clipforge.__all__ == [
        "CLIP", "CLIPPO", "CLIPConfig", "CLIPOutput", "CLIPPOConfig", "ConfigError", "ModelConfig", "ResNetConfig",
        "TextConfig", "TextProcessor", "ViTConfig", "create_model", "create_model_and_transforms",
        "get_text_processor", "get_tokenizer", "list_models", "list_pretrained", "load"]
    assert all(getattr(clipforge, name) is not None for name in clipforge.__all__)
    assert clipforge.CLIP is CLIP and set(clipforge.__all__) <= set(dir(clipforge))
    from clipforge import ConfigError, create_model  # noqa: F401  (from-imports resolve through __getattr__)

    assert clipforge.transforms.EvalTransform  # a subpackage on first access, as the eager package gave it
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        clipforge.no_such_name  # noqa: B018


def test_the_runtime_imports_nothing_that_needs_torch():
    """An import scan of clipforge/deploy: numpy, PIL, onnxruntime and the torch-free parts of clipforge only (the
    subprocess test above shows the text package and config import without torch too)."""
    import ast

    import clipforge.deploy

    allowed = ("clipforge.deploy", "clipforge.text", "clipforge.config", "clipforge.geometry")
    for path in Path(clipforge.deploy.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                assert name.split(".")[0] not in ("torch", "torchvision"), f"{path.name} imports {name}"
                assert not name.startswith("clipforge") or name.startswith(allowed), f"{path.name} imports {name}"
