"""ONNX export: every tiny preset's towers, run by onnxruntime here on fresh inputs, equal PyTorch.

The exporter checks itself (``export.json``'s parity); these tests do not trust that record. They load each graph
with their own onnxruntime session and compare it with the PyTorch model on inputs the exporter never saw: batches
of 1 and 3, real tokenizer output at two text lengths (a causal CLIP tower must give the same features for a
shorter padding), real NaFlex preprocessing of images of several aspect ratios, and CLIPPO's rendered text through
image.onnx. fp16 and int8 graphs are held to cosine bounds against the fp32 PyTorch features.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from clipforge.api import create_model, get_text_processor  # noqa: E402
from clipforge.config import to_dict  # noqa: E402
from clipforge.export import ExportError, export_onnx  # noqa: E402
from clipforge.models.config import model_config_from_dict  # noqa: E402

TOL = 1e-4
TEXTS = ["a photo of a dog", "two small red cars on a street", "a blue house with a garden and a tree"]
PRESETS = {  # case id -> (preset, overrides)
    "tiny-vit": ("tiny-vit", {}),
    "tiny-vit-mean": ("tiny-vit", {"vision": {"pool": "mean"}}),
    "tiny-vit-map": ("tiny-vit", {"vision": {"pool": "map"}}),
    "tiny-rn": ("tiny-rn", {}),
    "clippo-tiny": ("clippo-tiny", {}),
    "clippo-tiny-rn": ("clippo-tiny-rn", {}),
    "siglip-tiny": ("siglip-tiny", {}),
}
SCHEMA_KEYS = {"format", "version", "family", "model_config", "towers", "text_input", "opset", "precision",
               "quantize", "logit_scale", "logit_bias", "scoring", "preprocess", "text_processor", "parity"}


def session(path: Path) -> Any:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def run(sess: Any, **inputs: torch.Tensor) -> np.ndarray:
    return sess.run(["features"], {k: v.numpy() for k, v in inputs.items()})[0]


def cosine_min(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return float(((a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))).min())


def build(case: str) -> torch.nn.Module:
    torch.manual_seed(0)
    name, overrides = PRESETS[case]
    return create_model(name, **overrides).eval()


@pytest.fixture(scope="module", params=list(PRESETS))
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Any, Path]:
    model = build(request.param)
    return request.param, model, export_onnx(model, tmp_path_factory.mktemp("onnx") / request.param)


def test_image_tower_equals_pytorch(exported: tuple[str, Any, Path]) -> None:
    _, model, out = exported
    sess, size = session(out / "image.onnx"), model.config.vision.image_size
    generator = torch.Generator().manual_seed(123)
    for batch in (1, 3):
        pixels = torch.randn(batch, 3, size, size, generator=generator)
        with torch.no_grad():
            expected = model.encode_image(pixels).numpy()
        got = run(sess, pixels=pixels)
        assert got.shape == expected.shape
        assert np.abs(got - expected).max() < TOL


def test_text_tower_equals_pytorch(exported: tuple[str, Any, Path]) -> None:
    case, model, out = exported
    processor = get_text_processor(model)
    if model.config.family == "clippo":  # no text.onnx: rendered text is normalised and goes through image.onnx
        assert not (out / "text.onnx").exists()
        pixels = processor(TEXTS)
        mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (model.config.mean, model.config.std))
        with torch.no_grad():
            expected = model.encode_text(pixels).numpy()
        got = run(session(out / "image.onnx"), pixels=(pixels.float() / 255 - mean) / std)
        assert np.abs(got - expected).max() < TOL
        return
    sess, context = session(out / "text.onnx"), model.config.text.context_length
    lengths = (context, 12) if model.config.text.causal else (context,)
    for length in lengths:
        for batch in (1, 3):
            tokens = processor(TEXTS[:batch], context_length=length)
            with torch.no_grad():
                expected = model.encode_text(tokens).numpy()
            got = run(sess, tokens=tokens)
            assert np.abs(got - expected).max() < TOL, (case, length, batch)
    if model.config.text.causal:  # causal + end-of-text pooling: the padding after the text changes nothing
        full, short = (run(sess, tokens=processor(TEXTS, context_length=n)) for n in (context, 12))
        np.testing.assert_allclose(short, full, atol=TOL)
    else:  # SigLIP reads the last padded position: T is fixed at the context, and another T is refused
        assert sess.get_inputs()[0].shape == ["batch", context]
        with pytest.raises(Exception, match="(?i)dimension|shape"):
            run(sess, tokens=processor(TEXTS, context_length=12))


def test_export_json_schema(exported: tuple[str, Any, Path]) -> None:
    case, model, out = exported
    manifest = json.loads((out / "export.json").read_text())
    assert SCHEMA_KEYS <= set(manifest)
    assert (manifest["format"], manifest["version"], manifest["opset"]) == ("clipforge-onnx", 1, 18)
    assert (manifest["precision"], manifest["quantize"]) == ("fp32", None)
    config = model.config
    assert manifest["family"] == config.family
    assert model_config_from_dict(manifest["model_config"]) == config
    assert manifest["logit_scale"] == pytest.approx(float(model.scale().detach()))
    bias = model.logit_bias
    assert manifest["logit_bias"] == (None if bias is None else pytest.approx(float(bias.detach())))
    assert manifest["scoring"] == config.scoring
    size, dim = config.vision.image_size, config.embed_dim
    assert manifest["preprocess"] == {"image_size": size, "resize": config.image_resize, "interpolation": "bicubic",
                                      "mean": list(config.mean), "std": list(config.std)}
    image = manifest["towers"]["image"]
    assert image["file"] == "image.onnx"
    assert image["inputs"] == {"pixels": ["batch", 3, size, size]}
    assert image["outputs"] == {"features": ["batch", dim]}
    graph_input = session(out / "image.onnx").get_inputs()[0]
    assert (graph_input.name, graph_input.shape, graph_input.type) == ("pixels", ["batch", 3, size, size],
                                                                       "tensor(float)")
    processor = manifest["text_processor"]
    if config.family == "clippo":
        assert set(manifest["towers"]) == {"image"} and manifest["text_input"] == "pixels"
        assert processor["kind"] == "render" and processor["file"] is None
        from clipforge.text.render import RenderConfig, UnifontRenderer  # the settings rebuild the renderer

        rebuilt = UnifontRenderer(RenderConfig.from_dict(processor["settings"]))
        assert torch.equal(rebuilt(TEXTS), get_text_processor(model)(TEXTS))
        assert processor["pixel_normalization"] == {"divide_by": 255, "mean": list(config.mean),
                                                    "std": list(config.std)}
        assert sorted(p.name for p in out.iterdir()) == ["export.json", "image.onnx"]
    else:
        text = manifest["towers"]["text"]
        sequence = "sequence" if config.text.causal else config.text.context_length
        assert text == {"file": "text.onnx", "inputs": {"tokens": ["batch", sequence]},
                        "outputs": {"features": ["batch", dim]}, "dtypes": {"tokens": "int64", "features": "float32"}}
        assert manifest["text_input"] == "tokens"
        assert processor["kind"] == "bpe" and processor["file"] == "bpe_vocab.txt.gz"
        assert processor["context_length"] == config.text.context_length
        assert processor["special_ids"] == {"sot": 49406, "eot": 49407, "pad": 0}
        from clipforge.text.bpe import BPETokenizer  # the copied vocabulary gives the model's ids

        copied = BPETokenizer(out / processor["file"], **processor["settings"])
        assert torch.equal(copied(TEXTS), get_text_processor(model)(TEXTS))
    for tower, record in manifest["parity"].items():
        assert record["max_abs_diff"] < TOL and record["cosine_min"] > 0.99999, (case, tower)
    assert set(manifest["parity"]) == {"image", "text"}


def test_export_leaves_the_model_as_it_was(tmp_path: Path) -> None:
    """The wrappers' eval mode, restored by the exporter onto every submodule, must not leak into the model: a
    BatchNorm left training would change the next forward (this once made the ResNet's parity 1.3 off)."""
    torch.manual_seed(0)
    model = create_model("tiny-rn").train()
    model.text.eval()  # a mixed state (a locked tower) comes back as it was
    modes = {name: m.training for name, m in model.named_modules()}
    stats = model.visual.bn1.running_mean.clone()
    export_onnx(model, tmp_path / "out", towers=("image",))
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert torch.equal(model.visual.bn1.running_mean, stats)


@pytest.mark.parametrize("case", ["tiny-vit", "tiny-rn"])
def test_fp16_and_int8_stay_close_to_fp32(case: str, tmp_path: Path) -> None:
    model = build(case)
    processor = get_text_processor(model)
    pixels = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(7))
    tokens = processor(TEXTS)
    with torch.no_grad():
        reference = {"image": model.encode_image(pixels).numpy(), "text": model.encode_text(tokens).numpy()}
    bounds = {"fp16": 0.9999, "int8": 0.99}  # measured: fp16 ≥ 0.99999, int8 ≥ 0.997 (docs/deployment.md)
    for variant, options in (("fp16", {"precision": "fp16"}), ("int8", {"quantize": "int8"})):
        out = export_onnx(model, tmp_path / variant, **options)
        manifest = json.loads((out / "export.json").read_text())
        for tower, inputs in (("image", {"pixels": pixels}), ("text", {"tokens": tokens})):
            got = run(session(out / f"{tower}.onnx"), **inputs)
            assert got.dtype == np.float32
            assert cosine_min(got, reference[tower]) > bounds[variant], (variant, tower)
            record = manifest["parity"][tower]
            assert record["cosine_min"] > bounds[variant] and record["fp32_graph"]["max_abs_diff"] < TOL
        graph = onnx.load(str(out / "text.onnx"))
        kinds = {node.op_type for node in graph.graph.node}
        dtypes = {init.data_type for init in graph.graph.initializer}
        if variant == "int8":
            assert manifest["quantize"] == "int8" and "MatMulInteger" in kinds
            assert onnx.TensorProto.INT8 in dtypes
        else:
            assert manifest["precision"] == "fp16" and onnx.TensorProto.FLOAT16 in dtypes
            assert graph.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.INT64


def test_naflex_tower_equals_pytorch(tmp_path: Path) -> None:
    """SigLIP 2 NaFlex: patches, mask and spatial shapes from the real transform, images of several aspect ratios."""
    from PIL import Image

    from clipforge.transforms import model_transforms

    torch.manual_seed(0)
    model = create_model("SigLIP2-B/16-naflex", embed_dim=64, vision={"width": 64, "layers": 2, "heads": 2,
                                                                      "max_num_patches": 64},
                         text={"width": 64, "layers": 1, "heads": 2, "vocab_size": 1000}).eval()
    out = export_onnx(model, tmp_path / "naflex", towers=("image",))
    manifest = json.loads((out / "export.json").read_text())
    assert manifest["towers"]["image"]["inputs"] == {"patches": ["batch", 64, 768], "mask": ["batch", 64],
                                                     "spatial_shapes": ["batch", 2]}
    assert manifest["preprocess"]["resize"] == "naflex" and manifest["preprocess"]["max_num_patches"] == 64
    assert "text" not in manifest["towers"] and manifest["text_processor"] is None
    transform = model_transforms(model.config)[1]
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in
              ((90, 160), (200, 50), (64, 64))]
    sess = session(out / "image.onnx")
    for batch in (1, 3):
        items = torch.stack([transform(im) for im in images[:batch]])
        with torch.no_grad():
            expected = model.encode_image(items).numpy()
        got = run(sess, patches=items.patches, mask=items.mask, spatial_shapes=items.spatial_shapes.long())
        assert np.abs(got - expected).max() < TOL


def test_sentencepiece_model_file_travels(tmp_path: Path) -> None:
    """A SigLIP with a SentencePiece tokenizer: the model file is copied and its settings recorded."""
    from clipforge.text import build_text_processor
    from clipforge.text.sentencepiece import SentencePieceConfig, SentencePieceTokenizer
    from helpers.spm import train_spm

    spm_dir = tmp_path / "spm"
    train_spm(spm_dir, "siglip")
    torch.manual_seed(0)
    model = create_model("siglip-tiny", tokenizer={"kind": "sentencepiece", "style": "siglip"},
                         text={"vocab_size": 600, "layers": 1})
    processor = build_text_processor(model.config, spm_dir)
    out = export_onnx(model, tmp_path / "out", text_processor=processor)
    record = json.loads((out / "export.json").read_text())["text_processor"]
    assert (record["kind"], record["file"], record["context_length"]) == ("sentencepiece", "spiece.model", 32)
    assert record["special_ids"] == {"eos": processor.eos_token_id, "pad": processor.pad_token_id}
    rebuilt = SentencePieceTokenizer(out / record["file"], SentencePieceConfig.from_dict(record["settings"]))
    assert torch.equal(rebuilt(TEXTS), processor(TEXTS))
    assert (out / "spiece.model").read_bytes() == (spm_dir / "spiece.model").read_bytes()
    tokens = processor(TEXTS)
    with torch.no_grad():
        expected = model.encode_text(tokens).numpy()
    assert np.abs(run(session(out / "text.onnx"), tokens=tokens) - expected).max() < TOL


def test_overwrite_replaces_an_earlier_export_only(tmp_path: Path) -> None:
    model = build("tiny-vit")
    out = export_onnx(model, tmp_path / "out", towers=("image", "text"))
    with pytest.raises(FileExistsError, match="exists.*overwrite"):
        export_onnx(model, out, towers=("image",))
    export_onnx(model, out, towers=("image",), overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "image.onnx"]  # no stale text.onnx
    other = tmp_path / "photos"
    other.mkdir()
    (other / "cat.jpg").write_bytes(b"x")
    with pytest.raises(ValueError, match="not an ONNX export"):
        export_onnx(model, other, towers=("image",), overwrite=True)
    assert (other / "cat.jpg").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no work folders left behind


@pytest.mark.parametrize(("options", "message"), [
    ({"opset": 13}, r"opset 13 is outside .*14\.\.20"),
    ({"opset": 21}, r"opset 21 is outside .*14\.\.20"),
    ({"precision": "bf16"}, "precision must be one of"),
    ({"quantize": "int4"}, "quantize must be"),
    ({"precision": "fp16", "quantize": "int8"}, "cannot be combined"),
    ({"towers": ("vision",)}, "towers must name"),
])
def test_bad_options_are_refused_before_any_work(options: dict[str, Any], message: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=message):
        export_onnx(build("tiny-vit"), tmp_path / "out", **options)
    assert not (tmp_path / "out").exists()


def test_a_layer_without_onnx_form_is_named(tmp_path: Path) -> None:
    class Bessel(torch.nn.Module):  # aten::i0 has no ONNX form
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.special.i0(x)

    model = build("tiny-vit")
    model.visual.transformer.blocks[2].mlp.act = Bessel()
    with pytest.raises(ExportError, match=r"image tower: the module visual\.transformer\.blocks\.2\.mlp\.act "
                                          r"\(Bessel\) has no ONNX form at opset 18.*aten::i0"):
        export_onnx(model, tmp_path / "out", towers=("image",))
    assert list(tmp_path.iterdir()) == []


def test_parity_failure_raises_and_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import clipforge.export.onnx as exporter

    monkeypatch.setattr(exporter, "FP32_TOLERANCE", 0.0)  # no graph is bit-exact: the check must fire
    with pytest.raises(ExportError, match="image tower: the fp32 ONNX graph differs from PyTorch by up to"):
        export_onnx(build("tiny-vit"), tmp_path / "out", towers=("image",))
    assert list(tmp_path.iterdir()) == []


def test_missing_onnxruntime_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    with pytest.raises(ImportError, match=r"check=True.*onnxruntime.*pip install 'clipforge\[onnx\]'"):
        export_onnx(build("tiny-vit"), tmp_path / "out")
    out = export_onnx(build("tiny-vit"), tmp_path / "out", towers=("image",), check=False)  # no parity: no ORT
    assert json.loads((out / "export.json").read_text())["parity"] == {}


def test_cli_exports_a_saved_model_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from clipforge.checkpoints.native import save_pretrained
    from clipforge.cli.main import main

    model = build("tiny-vit")
    saved = save_pretrained(model, tmp_path / "model", get_text_processor(model))
    assert main(["export", str(saved), str(tmp_path / "out"), "--to", "onnx", "--quantize", "int8"]) == 0
    printed = capsys.readouterr().out
    assert "image.onnx, text.onnx, export.json; fp32, int8, opset 18" in printed
    assert "text: max |onnx - torch|" in printed
    manifest = json.loads((tmp_path / "out" / "export.json").read_text())
    assert manifest["quantize"] == "int8" and manifest["model_config"] == to_dict(model.config)
    tokens = get_text_processor(model)(TEXTS)
    with torch.no_grad():
        expected = model.encode_text(tokens).numpy()
    assert cosine_min(run(session(tmp_path / "out" / "text.onnx"), tokens=tokens), expected) > 0.99

    for argv, message in (
        ([str(saved), str(tmp_path / "out"), "--to", "onnx"], "exists"),
        ([str(saved), str(tmp_path / "o2"), "--to", "onnx", "--opset", "9"], r"--opset: .*in 14\.\.20, got 9"),
        (["no-such-model", str(tmp_path / "o3"), "--to", "onnx"], "model not found"),
    ):
        capsys.readouterr()
        try:
            status = main(["export", *argv])
        except SystemExit as e:  # argparse refuses a flag's value while parsing
            status = e.code
        assert status == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("clipforge export: error: "), err
        assert not (tmp_path / "o2").exists()
        assert re.search(message, err), err


@pytest.mark.slow
def test_vit_b32_random_weights_export(tmp_path: Path) -> None:
    """A real-size model: ViT-B/32's towers (random weights) equal PyTorch within the fp32 tolerance."""
    torch.manual_seed(0)
    model = create_model("ViT-B/32").eval()
    out = export_onnx(model, tmp_path / "b32")
    processor = get_text_processor(model)
    pixels = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        image, text = model.encode_image(pixels).numpy(), model.encode_text(processor(TEXTS)).numpy()
    assert np.abs(run(session(out / "image.onnx"), pixels=pixels) - image).max() < TOL
    assert np.abs(run(session(out / "text.onnx"), tokens=processor(TEXTS, context_length=20)) - text).max() < TOL


def test_weights_over_the_proto_limit_go_to_one_data_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Protobuf stops at 2 GiB: a larger graph keeps its weights in ``<file>.data`` (here with the limit at 0)."""
    import clipforge.export.onnx as exporter

    monkeypatch.setattr(exporter, "PROTO_LIMIT", 0)
    model = build("tiny-vit")
    out = export_onnx(model, tmp_path / "out", towers=("image",), precision="fp16")
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "image.onnx", "image.onnx.data"]
    assert json.loads((out / "export.json").read_text())["towers"]["image"]["data_file"] == "image.onnx.data"
    assert (out / "image.onnx").stat().st_size < 100_000  # the graph alone
    pixels = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model.encode_image(pixels).numpy()
    assert cosine_min(run(session(out / "image.onnx"), pixels=pixels), expected) > 0.9999


@pytest.mark.slow
def test_a_tower_over_2gib_exports_whole(tmp_path: Path) -> None:
    """Over 2 GiB the exporter writes each weight as its own file; the export holds the graph and one data file."""
    model = create_model("tiny-vit", embed_dim=64, vision={"width": 4096, "layers": 3, "heads": 32})  # 2.4 GB
    out = export_onnx(model, tmp_path / "big", towers=("image",))
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "image.onnx", "image.onnx.data"]
    assert json.loads((out / "export.json").read_text())["parity"]["image"]["max_abs_diff"] < TOL
