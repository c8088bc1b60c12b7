"""Bad exported directories and a missing onnxruntime give clear errors naming the file, the field and the fix."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from clipforge.deploy import Embedder, read_export


def broken(source: Path, tmp_path: Path, change) -> Path:
    """A copy of an exported directory with ``change(manifest)`` applied to its export.json."""
    target = tmp_path / "exported"
    shutil.copytree(source, target)
    manifest = json.loads((target / "export.json").read_text())
    change(manifest)
    (target / "export.json").write_text(json.dumps(manifest))
    return target


def setting(path: str, value):
    def change(manifest):
        *parents, last = path.split(".")
        node = manifest
        for key in parents:
            node = node[key]
        if value is KeyError:
            del node[last]
        else:
            node[last] = value
    return change


@pytest.mark.parametrize(("path", "value", "message"), [
    ("format", "onnx", "field 'format' must be 'clipforge-onnx'"),
    ("version", 2, "version 2 is not supported"),
    ("family", "coca", "field 'family' must be one of"),
    ("scoring", "max", "field 'scoring' must be one of"),
    ("logit_scale", "100", "field 'logit_scale' must be int or float"),
    ("logit_scale", KeyError, "missing field 'logit_scale'"),
    ("text_input", "pixels", "a clip model's text goes in as tokens"),
    ("preprocess.resize", "crop", "preprocess: field 'resize' must be one of"),
    ("preprocess.interpolation", "bilinear", "field 'interpolation' must be 'bicubic'"),
    ("preprocess.mean", [0.5, 0.5], "field 'mean' must be three numbers"),
    ("preprocess.image_size", True, "field 'image_size' must be int"),
    ("text_processor.kind", "wordpiece", "text_processor: field 'kind' must be one of"),
    ("text_processor.file", "../bpe_vocab.txt.gz", "expected a file name inside the exported directory"),
    ("text_processor.settings", {"lowercase": True}, "unknown BPE setting"),
    ("text_processor.settings.vocab_size", 49000, "settings.vocab_size is 49000, but .*bpe_vocab.txt.gz gives 49408"),
    ("text_processor.settings.eot_token_id", 3, "settings.eot_token_id is 3"),
    ("text_processor.settings.truncate", "yes", "settings.truncate must be true/false, got 'yes'"),
    ("text_processor.settings.max_chars", 0, "settings.max_chars must be an integer ≥ 1"),
    ("text_processor.context_length", 0, "field 'context_length' must be a positive integer"),
    ("text_processor", KeyError, "missing field 'text_processor'"),
    ("towers.video", {"file": "image.onnx", "inputs": {}}, "unknown tower"),
    ("towers.image.file", "missing.onnx", "missing.onnx not found"),
    ("towers.text.inputs", {"input_ids": ["batch", 32]}, "towers.text.inputs must have 'tokens'"),
    ("towers.image.inputs", {"patches": ["batch", 256, 768], "mask": ["batch", 256]}, "NaFlex"),
])
def test_bad_manifest(clip_export, tmp_path, path, value, message):
    directory = broken(clip_export.directory, tmp_path, setting(path, value))
    with pytest.raises((ValueError, FileNotFoundError), match=message) as error:
        Embedder(directory)
    assert "export.json" in str(error.value) or "not found" in str(error.value)


def test_not_an_exported_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="clipforge export MODEL OUT --to onnx"):
        read_export(tmp_path)
    (tmp_path / "export.json").write_text("{not json")
    with pytest.raises(ValueError, match="export.json: not valid JSON"):
        read_export(tmp_path)


def test_a_vocabulary_larger_than_the_text_tower(clip_export, tmp_path):
    """OpenAI's merges file copied whole (262k merges) gives ids the model has no embedding for: refused."""
    from clipforge.text.bpe import default_vocab_path

    directory = broken(clip_export.directory, tmp_path, setting("text_processor.file", "all_merges.txt.gz"))
    shutil.copy(default_vocab_path(), directory / "all_merges.txt.gz")
    with pytest.raises(ValueError, match="settings.vocab_size is 49408, but .*all_merges.txt.gz gives 262658"):
        Embedder(directory)
    manifest = json.loads((directory / "export.json").read_text())
    manifest["text_processor"]["settings"] = {}  # without the recorded facts, the tower's size decides
    (directory / "export.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="262658 tokens, more than the text tower's 49408"):
        Embedder(directory)


def test_image_shape_must_match_preprocess(clip_export, tmp_path):
    directory = broken(clip_export.directory, tmp_path, setting("preprocess.image_size", 32))
    with pytest.raises(ValueError, match="input 'pixels' has shape"):
        Embedder(directory)


def test_text_shape_must_match_the_context(siglip_export, tmp_path):
    def shorter(manifest):
        manifest["text_processor"]["context_length"] = manifest["text_processor"]["settings"]["context_length"] = 16

    directory = broken(siglip_export.directory, tmp_path, shorter)
    with pytest.raises(ValueError, match="input 'tokens' has shape .*32.*makes \\(batch, 16\\)"):
        Embedder(directory)


def test_a_corrupt_onnx_file(clip_export, tmp_path):
    directory = broken(clip_export.directory, tmp_path, lambda m: None)
    (directory / "text.onnx").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="cannot open .*text.onnx with onnxruntime"):
        Embedder(directory)


def test_without_onnxruntime_the_error_names_the_extra(clip_export, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'clipforge\[onnx\]'"):
        Embedder(clip_export.directory)


def test_bad_arguments(clip_export):
    with pytest.raises(ValueError, match="batch_size"):
        Embedder(clip_export.directory, batch_size=0)
    embedder = Embedder(clip_export.directory)
    with pytest.raises(ValueError, match="no images"):
        embedder.embed_images([])
    with pytest.raises(ValueError, match="no texts"):
        embedder.embed_texts([])
    with pytest.raises(TypeError, match="text 1: expected a string"):
        embedder.embed_texts(["ok", 5])
    with pytest.raises(FileNotFoundError, match="image not found"):
        embedder.embed_images(["/no/such/image.jpg"])
    with pytest.raises(ValueError, match="at least one label"):
        embedder.classify("/no/such/image.jpg", [])


@pytest.mark.parametrize(("path", "value", "message"), [
    ("text_processor.settings.vocab_size", 10, "settings.vocab_size is 10, but .*spiece.model gives"),
    ("text_processor.settings.style", "t5", "sentencepiece.style"),
    ("text_processor.kind", "bpe", "unknown BPE setting"),  # SentencePiece settings are not BPE arguments
])
def test_bad_sentencepiece_manifest(siglip_export, tmp_path, path, value, message):
    directory = broken(siglip_export.directory, tmp_path, setting(path, value))
    with pytest.raises(ValueError, match=message):
        Embedder(directory)


@pytest.mark.parametrize(("path", "value", "message"), [
    ("text_processor.settings.mode", "fancy", "render.mode"),
    ("text_processor.kind", "bpe", "does not serve a clippo model"),
    ("text_input", "tokens", "a clippo model's text goes in as pixels"),
    ("towers.text", {"file": "image.onnx", "inputs": {"tokens": ["batch", 8]}}, "CLIPPO export has no text tower"),
])
def test_bad_clippo_manifest(clippo_export, tmp_path, path, value, message):
    directory = broken(clippo_export.directory, tmp_path, setting(path, value))
    with pytest.raises(ValueError, match=message):
        Embedder(directory)


def test_one_tower_exports(clip_export, tmp_path):
    """An image-only export (no text processor recorded) embeds images; texts are refused, and the other way."""
    def image_only(manifest):
        del manifest["towers"]["text"]
        manifest["text_processor"] = None

    embedder = Embedder(broken(clip_export.directory, tmp_path / "a", image_only))
    assert embedder.embed_images([_image()]).shape == (1, 128)
    with pytest.raises(ValueError, match="has no text tower"):
        embedder.embed_texts(["a cat"])
    embedder = Embedder(broken(clip_export.directory, tmp_path / "b", lambda m: m["towers"].pop("image")))
    assert embedder.embed_texts(["a cat"]).shape == (1, 128)
    with pytest.raises(ValueError, match="has no image tower"):
        embedder.embed_images([_image()])


def _image():
    from PIL import Image

    return Image.new("RGB", (70, 50), (200, 30, 90))
