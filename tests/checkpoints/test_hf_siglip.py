"""Parity with Hugging Face transformers' ``SiglipModel``: its own random models, saved with ``save_pretrained``,
read by clipforge; clipforge SigLIP models exported to HF and loaded by ``SiglipModel.from_pretrained`` and
``AutoProcessor`` (offline). Tokenizer files are tiny SentencePiece models trained on the spot (``helpers.spm``).
"""

from __future__ import annotations

import json
import math
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("sentencepiece")

import clipforge  # noqa: E402
from clipforge.checkpoints import CheckpointError, convert, detect_format, load_any  # noqa: E402
from clipforge.checkpoints.hf_siglip import save_hf_siglip  # noqa: E402
from clipforge.config import to_dict  # noqa: E402
from clipforge.models.factory import build_config  # noqa: E402
from helpers.images import noise  # noqa: E402
from helpers.spm import train_spm  # noqa: E402

TOL = 1e-5
CAPTIONS = ["a photo of a dog", "two small red car on street", "фото собака", "", "a the photo of cat river sky"]
# Tiny towers: width 64, 32-px images in 8-px patches, 16 text positions; the vocabulary is the SentencePiece one's.
TINY = {"text": {"hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 2,
                 "max_position_embeddings": 16},
        "vision": {"hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 2,
                   "image_size": 32, "patch_size": 8}}
# So400m's MLP ratio (4304 / 1152), three heads, exact GELU in the image tower beside tanh-GELU text (as OpenCLIP's
# SigLIP 2 B/16 runs), a text tower narrower than the image one (projected to its width, as in giant-opt).
SO400M_LIKE = {"text": {"hidden_size": 48, "intermediate_size": 179, "num_hidden_layers": 3, "num_attention_heads": 3,
                        "max_position_embeddings": 16, "projection_size": 96},
               "vision": {"hidden_size": 96, "intermediate_size": 358, "num_hidden_layers": 2,
                          "num_attention_heads": 3, "image_size": 36, "patch_size": 8, "hidden_act": "gelu"}}


def spm_vocab(path: Path) -> int:
    import sentencepiece

    return int(sentencepiece.SentencePieceProcessor(model_file=str(path)).get_piece_size())


def reference_model(shape: dict[str, dict[str, Any]], vocab_size: int, seed: int = 0) -> Any:
    """A transformers ``SiglipModel`` with every tensor randomised (no LayerNorm left at 1/0)."""
    torch.manual_seed(seed)
    text = {**shape["text"], "vocab_size": vocab_size, "pad_token_id": 1, "eos_token_id": 1, "bos_token_id": None}
    config = transformers.SiglipConfig(text_config=text,
                                       vision_config=shape["vision"])
    model = transformers.SiglipModel(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
        model.logit_scale.fill_(math.log(12.5))
        model.logit_bias.fill_(-6.25)
    return model.eval()


def saved(reference: Any, directory: Path, style: str | None = "siglip") -> Path:
    """``reference`` saved by transformers, with a SentencePiece model of ``style`` beside it."""
    reference.save_pretrained(directory)
    if style is not None:
        train_spm(directory, style=style)
    return directory


@pytest.fixture(scope="module")
def siglip_spm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_spm(tmp_path_factory.mktemp("spm"), style="siglip")


def features(output: Any) -> torch.Tensor:
    """``get_*_features``: a tensor in transformers 4, an output with ``pooler_output`` in 5."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def assert_parity(reference: Any, model: torch.nn.Module, tokens: torch.Tensor, image_size: int) -> None:
    """Image and text features and the logits (scale · cos + bias) agree within ``TOL``."""
    images = torch.randn(len(tokens), 3, image_size, image_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = reference(input_ids=tokens, pixel_values=images)
        assert (model.encode_image(images) - features(reference.get_image_features(pixel_values=images))
                ).abs().max() <= TOL
        assert (model.encode_text(tokens) - features(reference.get_text_features(input_ids=tokens))
                ).abs().max() <= TOL
        out = model(images, tokens)
        logits = out.logit_scale * out.image_features @ out.text_features.T + out.logit_bias
        assert (logits - ref.logits_per_image).abs().max() <= TOL
        assert ref.logits_per_image.std() > 0.01  # the logits are not all the bias


def random_tokens(vocab_size: int, n: int = 4, length: int = 16) -> torch.Tensor:
    return torch.randint(0, vocab_size, (n, length), generator=torch.Generator().manual_seed(2))


def assert_same_config(a: Any, b: Any) -> None:
    """Equal configs, each ``mlp_ratio`` compared by the hidden width it gives (what HF's config records)."""
    def hidden(config: Any) -> dict[str, Any]:
        data = to_dict(config)
        for tower in ("vision", "text"):
            data[tower]["mlp_ratio"] = int(data[tower]["width"] * data[tower]["mlp_ratio"])
        return data

    assert hidden(a) == hidden(b)


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert sa[key].dtype == sb[key].dtype and torch.equal(sa[key], sb[key]), key


@pytest.mark.parametrize("shape", [TINY, SO400M_LIKE], ids=["tiny", "so400m_like"])
def test_hf_siglip_directory_loads_with_parity(shape: dict, tmp_path: Path, siglip_spm: Path) -> None:
    vocab = spm_vocab(siglip_spm)
    reference = reference_model(shape, vocab)
    directory = saved(reference, tmp_path / "hf")
    assert detect_format(directory) == "hf"
    model, _, tokenizer = clipforge.load(directory)
    config = model.config
    assert config.family == "siglip" and config.tokenizer == {"kind": "sentencepiece", "style": "siglip"}
    assert config.text.vocab_size == vocab and config.text.context_length == 16
    assert int(config.vision.width * config.vision.mlp_ratio) == shape["vision"]["intermediate_size"]
    assert int(config.text.width * config.text.mlp_ratio) == shape["text"]["intermediate_size"]
    assert config.act == "gelu_tanh" and config.vision.act == ("gelu" if shape is SO400M_LIKE else None)
    assert config.embed_dim == shape["vision"]["hidden_size"]
    assert_parity(reference, model, tokenizer(CAPTIONS), shape["vision"]["image_size"])
    assert_parity(reference, model, random_tokens(vocab), shape["vision"]["image_size"])


def test_export_loads_in_transformers_with_its_processor(tmp_path: Path) -> None:
    """HF → clipforge → HF: SiglipModel and AutoProcessor load the export offline and agree with clipforge."""
    source = tmp_path / "src"
    train_spm(source, style="siglip")
    reference = reference_model(TINY, spm_vocab(source / "spiece.model"), seed=3)
    saved(reference, source, style=None)
    convert(source, tmp_path / "native", to="clipforge")
    convert(tmp_path / "native", tmp_path / "hf", to="hf")
    model, transform, tokenizer = clipforge.load(tmp_path / "native")
    exported = transformers.SiglipModel.from_pretrained(str(tmp_path / "hf")).eval()
    assert_parity(exported, model, tokenizer(CAPTIONS), 32)
    processor = transformers.AutoProcessor.from_pretrained(str(tmp_path / "hf"))
    assert type(processor).__name__ == "SiglipProcessor"
    assert type(processor.tokenizer).__name__ == "SiglipTokenizer"
    batch = processor(text=CAPTIONS, padding="max_length", max_length=16, truncation=True, return_tensors="pt")
    assert torch.equal(batch["input_ids"], tokenizer(CAPTIONS))
    images = [noise(50, 40, seed=i) for i in range(2)]
    pixels = processor(images=images, return_tensors="pt")["pixel_values"]
    ours = torch.stack([transform(image) for image in images])
    assert pixels.shape == ours.shape == (2, 3, 32, 32)
    # torchvision's bicubic resize vs PIL's: at most one 8-bit level apart (2/255 in [-1, 1]), rarely that.
    assert (pixels - ours).abs().max() <= 2 / 255 + 1e-6 and (pixels - ours).abs().mean() < 1e-3
    again = load_any(tmp_path / "hf")
    assert again.config == model.config
    assert_same_weights(model, again)


def test_siglip2_fixed_resolution_directory_reads_gemma_tokenizer(tmp_path: Path) -> None:
    """google/siglip2-base-patch16-224's layout: model_type siglip, Gemma's tokenizer.model and GemmaTokenizer."""
    source = tmp_path / "src"
    path = train_spm(source, style="gemma")
    reference = reference_model(TINY, spm_vocab(path), seed=4)
    saved(reference, source, style=None)
    (source / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "GemmaTokenizer"}))
    model, _, tokenizer = clipforge.load(source)
    assert model.config.tokenizer == {"kind": "sentencepiece", "style": "gemma"}
    captions = [c.lower() for c in CAPTIONS]  # clipforge lower-cases SigLIP 2 text (the training condition)
    assert_parity(reference, model, tokenizer(captions), 32)
    convert(source, tmp_path / "hf", to="hf")
    assert (tmp_path / "hf" / "tokenizer.model").read_bytes() == path.read_bytes()
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    assert type(hf_tokenizer).__name__ == "GemmaTokenizer"
    ids = hf_tokenizer(captions, padding="max_length", max_length=16, truncation=True, return_tensors="pt")
    assert torch.equal(ids["input_ids"], tokenizer(captions))
    exported = transformers.SiglipModel.from_pretrained(str(tmp_path / "hf")).eval()
    assert exported.config.text_config.pad_token_id == 0 and exported.config.text_config.eos_token_id == 1
    assert_parity(exported, model, tokenizer(captions), 32)


def test_fresh_clipforge_siglip_round_trips_through_transformers(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = clipforge.create_model("SigLIP-B/16", embed_dim=96, vision={
        "image_size": 32, "patch_size": 8, "width": 96, "layers": 2, "heads": 3, "mlp_ratio": 3.7362, "act": "gelu"},
        text={"vocab_size": 500, "context_length": 12, "width": 64, "layers": 2, "heads": 2}).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
        model.logit_bias.fill_(-3.0)
    save_hf_siglip(model, tmp_path / "hf")
    exported = transformers.SiglipModel.from_pretrained(str(tmp_path / "hf")).eval()
    assert exported.config.vision_config.hidden_act == "gelu"
    assert exported.config.text_config.hidden_act == "gelu_pytorch_tanh"
    assert_parity(exported, model, random_tokens(500, length=12), 32)
    again = load_any(tmp_path / "hf")
    assert_same_config(again.config, model.config)
    assert_same_weights(model, again)
    assert not (tmp_path / "hf" / "spiece.model").exists()  # no SentencePiece file to write
    image_config = transformers.AutoImageProcessor.from_pretrained(str(tmp_path / "hf"))
    assert image_config.size == {"height": 32, "width": 32} and list(image_config.image_mean) == [0.5] * 3


def test_siglip_tiny_with_bpe_exports_without_tokenizer_files(tmp_path: Path) -> None:
    from clipforge.checkpoints.native import save_pretrained

    save_pretrained(clipforge.create_model("siglip-tiny"), tmp_path / "native")
    convert(tmp_path / "native", tmp_path / "hf", to="hf")
    assert sorted(p.name for p in (tmp_path / "hf").iterdir()) == ["config.json", "model.safetensors",
                                                                    "preprocessor_config.json"]
    exported = transformers.SiglipModel.from_pretrained(str(tmp_path / "hf")).eval()
    model = load_any(tmp_path / "native")
    assert_parity(exported, model, random_tokens(1000, length=32), 64)


# --- errors ---------------------------------------------------------------------------------------------------


def tiny_dir(tmp_path: Path, vocab: int = 300) -> Path:
    return saved(reference_model(TINY, vocab), tmp_path / "hf", style=None)


def edit_config(directory: Path, tower: str | None, **changes: Any) -> None:
    config = json.loads((directory / "config.json").read_text())
    (config[tower] if tower else config).update(changes)
    (directory / "config.json").write_text(json.dumps(config))


def test_unsupported_model_type_is_one_clear_error(tmp_path: Path) -> None:
    directory = tiny_dir(tmp_path)
    edit_config(directory, None, model_type="blip")
    message = r"config.json: HF model_type 'blip' is not one clipforge reads; it reads clip, siglip, siglip2"
    with pytest.raises(CheckpointError, match=message):
        detect_format(directory)
    with pytest.raises(CheckpointError, match=message):
        load_any(directory, fmt="hf")


def test_vision_use_head_false_is_refused(tmp_path: Path) -> None:
    directory = tiny_dir(tmp_path)
    edit_config(directory, "vision_config", vision_use_head=False)
    with pytest.raises(CheckpointError, match=r"config.json: vision_config.vision_use_head=False: .*must be true"):
        load_any(directory)


def test_missing_weights_are_named(tmp_path: Path) -> None:
    directory = tiny_dir(tmp_path)
    (directory / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        load_any(directory)


@pytest.mark.parametrize(("key", "shape", "message"), [
    ("vision_model.head.probe", (1, 1, 65), r"'vision_model.head.probe' has shape \(1, 1, 65\), config.json implies "
                                            r"\(1, 1, 64\)"),
    ("text_model.encoder.layers.1.self_attn.k_proj.weight", (64, 63), r"k_proj.weight' has shape \(64, 63\)"),
    ("logit_bias", (2,), r"'logit_bias' has shape \(2,\), config.json implies \(1,\)"),
])
def test_wrong_tensor_shape_names_the_hf_key(tmp_path: Path, key: str, shape: tuple, message: str) -> None:
    from safetensors.torch import load_file, save_file

    directory = tiny_dir(tmp_path)
    state = load_file(directory / "model.safetensors")
    state[key] = torch.zeros(shape)
    save_file(state, directory / "model.safetensors")
    with pytest.raises(CheckpointError, match=message):
        load_any(directory)


def test_missing_and_unexpected_tensors_are_named(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    directory = tiny_dir(tmp_path)
    state = load_file(directory / "model.safetensors")
    save_file({**state, "vision_model.extra": torch.zeros(1)}, directory / "model.safetensors")
    with pytest.raises(CheckpointError, match="unexpected key 'vision_model.extra'"):
        load_any(directory)
    del state["vision_model.head.attention.in_proj_bias"]
    save_file(state, directory / "model.safetensors")
    with pytest.raises(CheckpointError, match="missing key 'vision_model.head.attention.in_proj_bias'"):
        load_any(directory)


@pytest.mark.parametrize(("tower", "change", "error", "message"), [
    ("vision_config", {"hidden_act": "relu"}, CheckpointError, "vision_config.hidden_act='relu' is not supported"),
    ("vision_config", {"layer_norm_eps": 1e-5}, CheckpointError, "layer_norm_eps differ"),
    ("text_config", {"projection_size": 32}, CheckpointError, "projection_size=32 differs from vision_config"),
    ("vision_config", {"image_size": [32, 48]}, CheckpointError, r"image_size=\[32, 48\]: .*square"),
    ("vision_config", {"num_attention_heads": "two"}, clipforge.ConfigError, "vision.heads: expected an integer"),
    ("text_config", {"num_hidden_layers": 10**9}, clipforge.ConfigError, "parameters, over the limit"),
    ("vision_config", {"intermediate_size": 1.5}, CheckpointError, "must be positive integers"),
    (None, {"vision_config": [1]}, CheckpointError, "vision_config must be an object"),
])
def test_a_bad_hf_siglip_config_names_the_field(tmp_path: Path, tower: str | None, change: dict, error: type,
                                                message: str) -> None:
    directory = tiny_dir(tmp_path)
    edit_config(directory, tower, **change)
    with pytest.raises(error, match=message):
        load_any(directory)


@pytest.mark.parametrize(("content", "message"), [
    ({"tokenizer_class": "BertTokenizer"}, "tokenizer_class 'BertTokenizer' is not one clipforge has"),
    ({"tokenizer_class": ["SiglipTokenizer"]}, r"tokenizer_class \['SiglipTokenizer'\] is not one clipforge has"),
    ({"tokenizer_class": "SiglipTokenizer", "do_lower_case": "yes"}, "do_lower_case must be true or false"),
    ([1, 2], "tokenizer_config.json: expected a JSON object"),
])
def test_a_bad_tokenizer_config_is_refused(tmp_path: Path, content: Any, message: str) -> None:
    directory = tiny_dir(tmp_path)
    (directory / "tokenizer_config.json").write_text(json.dumps(content))
    with pytest.raises(CheckpointError, match=message):
        load_any(directory)


def test_what_siglipmodel_cannot_hold_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="SigLIP models only"):
        save_hf_siglip(clipforge.create_model("tiny-vit"), tmp_path / "clip")
    causal = clipforge.create_model("siglip-tiny", text={"causal": True})
    with pytest.raises(CheckpointError, match="bidirectional"):
        save_hf_siglip(causal, tmp_path / "causal")
    with pytest.raises(CheckpointError, match="no class token"):
        save_hf_siglip(clipforge.create_model("siglip-tiny", vision={"class_token": True}), tmp_path / "cls")


def test_siglip2_directories_go_to_hf_siglip2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """model_type siglip2 (NaFlex) is read by ``clipforge.checkpoints.hf_siglip2.load_hf_siglip2``."""
    directory = tiny_dir(tmp_path)
    edit_config(directory, None, model_type="siglip2")
    model = clipforge.create_model("siglip-tiny")
    calls: list[Path] = []

    def load_hf_siglip2(path: Path, allow_pickle: bool = False) -> tuple[Any, dict]:
        calls.append(Path(path))
        return model.config, model.state_dict()

    fake = types.ModuleType("clipforge.checkpoints.hf_siglip2")
    fake.load_hf_siglip2 = load_hf_siglip2  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "clipforge.checkpoints.hf_siglip2", fake)
    assert detect_format(directory) == "hf"
    assert_same_weights(load_any(directory), model)
    assert calls == [directory]


def test_a_naflex_model_is_exported_through_hf_siglip2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``convert(..., to="hf")`` of a NaFlex SigLIP goes to ``hf_siglip2.save_hf_siglip2`` (a Siglip2Model)."""
    import dataclasses

    from clipforge.checkpoints.native import save_pretrained
    from clipforge.models.config import ViTConfig

    if "naflex" not in {f.name for f in dataclasses.fields(ViTConfig)}:
        pytest.skip("ViTConfig has no NaFlex marker yet")
    save_pretrained(clipforge.create_model("siglip-tiny", vision={"naflex": True}), tmp_path / "native")
    calls: list[tuple[Any, Path]] = []

    def save_hf_siglip2(model: Any, dst: Path, text_processor: Any = None) -> Path:
        calls.append((model.config, Path(dst)))
        return Path(dst)

    fake = types.ModuleType("clipforge.checkpoints.hf_siglip2")
    fake.save_hf_siglip2 = save_hf_siglip2  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "clipforge.checkpoints.hf_siglip2", fake)
    assert convert(tmp_path / "native", tmp_path / "hf", to="hf") == tmp_path / "hf"
    assert len(calls) == 1 and calls[0][0].vision.naflex and calls[0][1] == tmp_path / "hf"
    with pytest.raises(CheckpointError, match="Siglip2Model"):
        save_hf_siglip(load_any(tmp_path / "native"), tmp_path / "siglip")


@pytest.mark.slow
def test_released_shape_siglip_b16_parity(tmp_path: Path) -> None:
    """transformers' default SiglipConfig is google/siglip-base-patch16-224: random weights, the preset's shape."""
    torch.manual_seed(0)
    reference = transformers.SiglipModel(transformers.SiglipConfig()).eval()
    reference.save_pretrained(tmp_path / "hf")
    model = load_any(tmp_path / "hf")
    assert model.config == build_config("SigLIP-B/16")
    assert_parity(reference, model, random_tokens(32000, n=2, length=64), 224)
    save_hf_siglip(model, tmp_path / "export")
    assert_same_weights(model, load_any(tmp_path / "export"))
