"""The ONNX backend: ``OnnxEvalModel`` equals the PyTorch ``EvalModel`` (CLIP, SigLIP, CLIPPO), ``clipforge embed
--backend onnx`` writes the torch backend's rows, the backend is part of a collection's identity, the export is made
once and reused, search and serve answer as with PyTorch, and a missing onnxruntime is a clear error."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")
pytest.importorskip("pyarrow")

import clipforge.cli.main as cli_main
import clipforge.export
from clipforge.eval.adapter import EvalModel
from clipforge.search.collection import Collection, part_name
from clipforge.search.embed import EmbedSettings, differences, embed
from clipforge.search.onnx_backend import OnnxEvalModel, onnx_eval_model
from clipforge.search.searcher import Searcher
from conftest import photo

pytestmark = pytest.mark.usefixtures("one_thread")
FP32 = 1e-5
FP16 = 2e-3  # float16 storage of unit-norm rows
TEXTS = ["a photo of a dog", "Two small red cars on a street.", "x", "a blue house with a garden and a tree"]
# What the small_collection fixture was embedded with (tests/search/conftest.py), so its rows are comparable.
SMALL = {"batch_size": 4, "workers": 0, "part_size": 5, "texts": True, "progress": False}


@pytest.fixture
def exports(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Every export_onnx call's output folder, in order (the real export still runs)."""
    calls: list[Path] = []
    real = clipforge.export.export_onnx

    def counted(model: Any, out_dir: Any, *args: Any, **kwargs: Any) -> Path:
        calls.append(Path(out_dir))
        return real(model, out_dir, *args, **kwargs)

    monkeypatch.setattr(clipforge.export, "export_onnx", counted)
    return calls


def torch_model(preset: str) -> EvalModel:
    from clipforge.api import create_model_and_transforms, get_text_processor

    torch.manual_seed(0)
    model, _, transform = create_model_and_transforms(preset)
    return EvalModel(model, transform, get_text_processor(model), "cpu")


def images_of(model: EvalModel, n: int = 5) -> torch.Tensor:
    return torch.stack([model.transform(photo(i, (96 + 16 * i, 80))) for i in range(n)])  # (n, 3, S, S)


@pytest.mark.parametrize("preset", ["tiny-vit", "siglip-tiny", "clippo-tiny"])
def test_onnx_eval_model_equals_the_torch_one(preset: str, tmp_path: Path) -> None:
    model = torch_model(preset)
    onnx = onnx_eval_model(model, tmp_path / "onnx")
    assert isinstance(onnx, EvalModel) and onnx.backend == "onnx"
    images = images_of(model)
    for normalize in (True, False):
        got, want = onnx.encode_images(images, normalize), model.encode_images(images, normalize)
        assert got.dtype == torch.float32 and got.device.type == "cpu" and got.shape == want.shape
        assert (got - want).abs().max().item() < FP32
        got, want = onnx.encode_texts(TEXTS, normalize, batch_size=3), model.encode_texts(TEXTS, normalize)
        assert got.shape == want.shape and (got - want).abs().max().item() < FP32
    assert onnx.fingerprint() == model.fingerprint()
    assert (onnx.scoring, onnx.logit_scale(), onnx.logit_bias()) == (model.scoring, model.logit_scale(),
                                                                      model.logit_bias())
    similarities = onnx.encode_images(images) @ onnx.encode_texts(TEXTS).T
    assert torch.allclose(onnx.probabilities(similarities), model.probabilities(similarities))
    if preset == "clippo-tiny":  # one tower: texts went through the image graph
        assert onnx.text_session is onnx.image_session and not (tmp_path / "onnx" / "text.onnx").exists()
    with pytest.raises(ValueError, match="no texts"):
        onnx.encode_texts([])


def test_the_export_is_reused_and_redone_for_other_weights_or_quantisation(tmp_path: Path, exports: list[Path]
                                                                          ) -> None:
    model = torch_model("tiny-vit")
    cache = tmp_path / "cache"
    onnx_eval_model(model, cache)
    stamp = (cache / "export.json").stat().st_mtime_ns
    again = onnx_eval_model(model, cache)
    assert len(exports) == 1 and (cache / "export.json").stat().st_mtime_ns == stamp  # reused
    assert json.loads((cache / "source.json").read_text())["fingerprint"] == model.fingerprint()
    images = images_of(model, 3)
    assert (again.encode_images(images) - model.encode_images(images)).abs().max().item() < FP32

    with torch.no_grad():
        next(model.model.parameters()).add_(0.5)  # other weights, another fingerprint
    changed = EvalModel(model.model, model.transform, model.processor, "cpu")
    assert changed.fingerprint() != model.fingerprint()
    fresh = onnx_eval_model(changed, cache)
    assert len(exports) == 2 and (fresh.encode_images(images) - changed.encode_images(images)).abs().max() < FP32

    int8 = onnx_eval_model(changed, cache, quantize="int8")
    assert len(exports) == 3 and int8.quantize == "int8"
    assert json.loads((cache / "export.json").read_text())["quantize"] == "int8"
    cosine = torch.nn.functional.cosine_similarity(int8.encode_images(images), changed.encode_images(images))
    assert cosine.min().item() > 0.99
    with pytest.raises(ValueError, match="quantize"):
        onnx_eval_model(changed, cache, quantize="int4")


def embedded(out: Path) -> tuple[np.ndarray, np.ndarray]:
    """All image and text rows of a finished collection, as stored."""
    c = Collection.open(out)
    return (np.concatenate(list(c.part_arrays("image"))), np.concatenate(list(c.part_arrays("text"))))


def test_embed_with_onnx_writes_the_torch_rows_and_reuses_its_export_on_resume(
        tmp_path: Path, tiny_model_dir: Path, caption_folder: Path, small_collection: Path,
        exports: list[Path]) -> None:
    out = tmp_path / "onnx.emb"
    settings = EmbedSettings(**SMALL, backend="onnx")
    embed(str(tiny_model_dir), str(caption_folder), out, settings)
    manifest = json.loads((out / "embed.json").read_text())
    assert (manifest["backend"], manifest["quantize"], manifest["precision"]) == ("onnx", None, "fp32")
    assert json.loads((small_collection / "embed.json").read_text())["backend"] == "torch"
    assert exports == [out / "onnx" / "fp32"] and (out / "onnx" / "fp32" / "image.onnx").is_file()
    for got, want in zip(embedded(out), embedded(small_collection), strict=True):
        assert got.dtype == want.dtype == np.float16 and got.shape == want.shape
        diff = np.abs(got.astype(np.float32) - want.astype(np.float32))
        assert diff.max() <= FP16 and (diff == 0).mean() > 0.98  # fp16 rounding of values equal to ~1e-7
    rows = embedded(out)

    # A killed run (a part without its marker) resumed: the export is reused, the rows come out the same.
    stamp = (out / "onnx" / "fp32" / "export.json").stat().st_mtime_ns
    (out / part_name("marker", 1)).unlink()
    (out / part_name("image", 1)).unlink()
    embed(str(tiny_model_dir), str(caption_folder), out, settings)
    assert len(exports) == 1 and (out / "onnx" / "fp32" / "export.json").stat().st_mtime_ns == stamp
    for got, want in zip(embedded(out), rows, strict=True):
        np.testing.assert_array_equal(got, want)

    # Another backend or quantisation on the same DIR is another command.
    with pytest.raises(ValueError, match=r"backend: 'onnx' there, 'torch' now"):
        embed(str(tiny_model_dir), str(caption_folder), out, EmbedSettings(**SMALL))
    with pytest.raises(ValueError, match=r"quantize: None there, 'int8' now"):
        embed(str(tiny_model_dir), str(caption_folder), out, EmbedSettings(**SMALL, backend="onnx", quantize="int8"))
    embed(str(tiny_model_dir), str(caption_folder), out, EmbedSettings(**SMALL, overwrite=True))
    assert not (out / "onnx").exists() and json.loads((out / "embed.json").read_text())["backend"] == "torch"


def test_a_manifest_from_before_backends_is_a_torch_one() -> None:
    old = {"model": {"fingerprint": "f"}, "precision": "fp32", "dtype": "float16"}
    assert differences(old, {**old, "backend": "torch", "quantize": None}) == []
    assert differences(old, {**old, "backend": "onnx", "quantize": None}) == ["backend: 'torch' there, 'onnx' now"]


def embed_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    if "clipforge.cli.embed" not in cli_main.VERB_MODULES:
        cli_main.VERB_MODULES.append("clipforge.cli.embed")
    code = cli_main.main(["embed", *argv])
    return code, capsys.readouterr().err


def test_onnx_settings_errors_are_clear(tmp_path: Path, tiny_model_dir: Path, photo_folder: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--model", str(tiny_model_dir), "--data", str(photo_folder), "--output", str(tmp_path / "o"),
            "--workers", "0", "--no-progress"]
    code, err = embed_cli([*base, "--backend", "onnx", "--precision", "bf16"], capsys)
    assert code == 2 and "clipforge embed: error: precision 'bf16' is PyTorch autocast" in err
    code, err = embed_cli([*base, "--quantize", "int8"], capsys)
    assert code == 2 and "needs backend='onnx'" in err
    code, err = embed_cli([*base, "--backend", "onnx", "--device", "cuda"], capsys)
    assert code == 2 and "the onnx backend runs on the CPU" in err
    assert not (tmp_path / "o").exists()


def test_search_and_serve_with_onnx_answer_as_torch(tmp_path: Path, small_collection: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from fastapi.testclient import TestClient

    from clipforge.search.server import create_app

    directory = tmp_path / "c"
    shutil.copytree(small_collection, directory)  # the fixture is shared: the export goes into a copy
    by_torch = Searcher(Collection.open(directory))
    by_onnx = Searcher(Collection.open(directory), backend="onnx")
    assert isinstance(by_onnx.model, OnnxEvalModel) and not isinstance(by_torch.model, OnnxEvalModel)
    assert (directory / "onnx" / "fp32" / "export.json").is_file()
    queries = ["a photo number 3", "another line", "a red bicycle"]
    np.testing.assert_allclose(by_onnx.encode_texts(queries), by_torch.encode_texts(queries), atol=FP32)
    pictures = [photo(i) for i in range(3)]
    for got, want in [(by_onnx.search_text(queries, k=5), by_torch.search_text(queries, k=5)),
                      (by_onnx.search_image(pictures, k=5), by_torch.search_image(pictures, k=5))]:
        for a, b in zip(got, want, strict=True):
            assert [h["id"] for h in a] == [h["id"] for h in b]
            np.testing.assert_allclose([h["score"] for h in a], [h["score"] for h in b], atol=FP32)

    with TestClient(create_app(directory, backend="onnx")) as client:
        answer = client.post("/search", json={"text": queries[0], "k": 4}).json()["results"]
    assert [r["id"] for r in answer] == [h["id"] for h in by_torch.search_text(queries[0], k=4)[0]]

    if "clipforge.cli.search" not in cli_main.VERB_MODULES:
        cli_main.VERB_MODULES.append("clipforge.cli.search")
    assert cli_main.main(["search", str(directory), "--text", queries[1], "--k", "3", "--json",
                          "--backend", "onnx"]) == 0
    printed = json.loads(capsys.readouterr().out)["results"]
    assert [r["id"] for r in printed] == [h["id"] for h in by_torch.search_text(queries[1], k=3)[0]]


def test_a_collection_embedded_with_onnx_is_searched_with_onnx(tmp_path: Path, tiny_model_dir: Path,
                                                               caption_folder: Path, small_collection: Path) -> None:
    out = tmp_path / "int8.emb"
    embed(str(tiny_model_dir), str(caption_folder), out, EmbedSettings(**SMALL, backend="onnx", quantize="int8"))
    collection = Collection.open(out)
    assert collection.backend == "onnx" and (out / "onnx" / "int8" / "image.onnx").is_file()
    model = Searcher(collection).model
    assert isinstance(model, OnnxEvalModel) and model.quantize == "int8"  # the embedding's own backend
    assert not isinstance(Searcher(collection, backend="torch").model, OnnxEvalModel)
    images, texts = embedded(out)
    want_images, want_texts = embedded(small_collection)
    for got, want in ((images, want_images), (texts, want_texts)):  # int8: close to, not equal to, fp32
        cosine = (got.astype(np.float32) * want.astype(np.float32)).sum(1)
        assert cosine.min() > 0.99 and np.abs(got.astype(np.float32) - want.astype(np.float32)).max() > FP16


def test_the_serve_verb_passes_the_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    import clipforge.search.server as server
    from clipforge.cli import serve as verb

    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(server, "serve", lambda directory, **kw: calls.append(kw))
    parser = argparse.ArgumentParser()
    verb.register(parser.add_subparsers())
    for argv, backend in ((["serve", "c"], None), (["serve", "c", "--backend", "onnx"], "onnx")):
        args = parser.parse_args(argv)
        assert args.func(args) == 0 and calls[-1]["backend"] == backend


def test_without_onnxruntime_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                       tiny_model_dir: Path, photo_folder: Path,
                                                       small_collection: Path) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now raises ImportError
    hint = r"pip install 'clipforge\[onnx\]'"
    with pytest.raises(ImportError, match=hint):
        onnx_eval_model(torch_model("tiny-vit"), tmp_path / "cache")
    with pytest.raises(ImportError, match=hint):
        embed(str(tiny_model_dir), str(photo_folder), tmp_path / "o", EmbedSettings(**SMALL, backend="onnx"))
    with pytest.raises(ImportError, match=hint):
        Collection.open(small_collection).eval_model(backend="onnx")
    assert not (tmp_path / "cache").exists() and not (tmp_path / "o").exists()
