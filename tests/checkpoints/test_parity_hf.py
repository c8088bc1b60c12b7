"""Parity with Hugging Face transformers: its own random ``CLIPModel``s, saved with ``save_pretrained``, loaded
by clipforge; clipforge models exported to HF and loaded by ``CLIPModel.from_pretrained`` (offline).

Token ids come from HF's own ``CLIPTokenizer`` (its files written from clipforge's vocabulary, since nothing
is downloaded), so end-of-text positions and padding (with the end-of-text token) are HF's.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

import clipforge  # noqa: E402
from clipforge.checkpoints import CheckpointError, convert, detect_format, load_any  # noqa: E402
from clipforge.checkpoints.hf import save_hf  # noqa: E402
from clipforge.models.factory import build_config  # noqa: E402
from clipforge.text.bpe import get_default_tokenizer  # noqa: E402

TOL = 1e-5
CAPTIONS = ["a photo of a cat", "a diagram", "two dogs playing in the snow near a red house", ""]
TINY = {"projection_dim": 64,
        "vision": {"image_size": 32, "patch_size": 8, "hidden_size": 128, "intermediate_size": 512,
                   "num_hidden_layers": 2, "num_attention_heads": 2},
        "text": {"vocab_size": 49408, "max_position_embeddings": 24, "hidden_size": 64, "intermediate_size": 256,
                 "num_hidden_layers": 2, "num_attention_heads": 2}}
# openai/clip-vit-base-patch32's shapes.
FULL = {"projection_dim": 512,
        "vision": {"image_size": 224, "patch_size": 32, "hidden_size": 768, "intermediate_size": 3072,
                   "num_hidden_layers": 12, "num_attention_heads": 12},
        "text": {"vocab_size": 49408, "max_position_embeddings": 77, "hidden_size": 512, "intermediate_size": 2048,
                 "num_hidden_layers": 12, "num_attention_heads": 8}}


@pytest.fixture(scope="module")
def hf_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> object:
    directory = tmp_path_factory.mktemp("tokenizer")
    get_default_tokenizer().save_hf(directory)
    return transformers.CLIPTokenizer.from_pretrained(str(directory))


def reference_model(shape: dict, act: str = "quick_gelu", seed: int = 0) -> object:
    """A transformers ``CLIPModel`` with every tensor randomised (no LayerNorm left at 1/0)."""
    torch.manual_seed(seed)
    config = transformers.CLIPConfig(
        text_config={**shape["text"], "hidden_act": act, "eos_token_id": 49407, "bos_token_id": 49406},
        vision_config={**shape["vision"], "hidden_act": act}, projection_dim=shape["projection_dim"])
    model = transformers.CLIPModel(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name != "logit_scale":
                p.add_(0.02 * torch.randn_like(p))
    return model.eval()


def assert_parity(reference: object, model: torch.nn.Module, tokenizer: object, image_size: int) -> None:
    """Projected embeddings, normalised embeddings and logits agree within ``TOL``."""
    batch = tokenizer(CAPTIONS, padding="max_length", max_length=model.config.text.context_length,
                      return_tensors="pt")
    tokens = batch["input_ids"]
    images = torch.randn(len(CAPTIONS), 3, image_size, image_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = reference(input_ids=tokens, pixel_values=images, attention_mask=batch["attention_mask"])
        out = model(images, tokens)
        ref_img = _features(reference.get_image_features(pixel_values=images))
        ref_txt = _features(reference.get_text_features(input_ids=tokens))
        assert (model.encode_image(images) - ref_img).abs().max() <= TOL
        assert (model.encode_text(tokens) - ref_txt).abs().max() <= TOL
        assert (out.image_features - ref.image_embeds).abs().max() <= TOL
        assert (out.text_features - ref.text_embeds).abs().max() <= TOL
        logits = out.logit_scale * out.image_features @ out.text_features.T
        assert (logits - ref.logits_per_image).abs().max() <= TOL


def _features(output: object) -> torch.Tensor:
    """``get_*_features`` returns a tensor in transformers 4 and an output with ``pooler_output`` in 5."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert sa[key].dtype == sb[key].dtype and torch.equal(sa[key], sb[key]), key


@pytest.mark.parametrize("act", ["quick_gelu", "gelu"])
def test_hf_directory_loads_with_parity(act: str, tmp_path: Path, hf_tokenizer: object) -> None:
    reference = reference_model(TINY, act)
    reference.save_pretrained(tmp_path / "hf")
    assert detect_format(tmp_path / "hf") == "hf"
    model = load_any(tmp_path / "hf")
    assert model.config.act == act and model.config.text.eot_token_id is None
    assert_parity(reference, model, hf_tokenizer, TINY["vision"]["image_size"])


def test_export_loads_in_transformers_and_round_trips_exactly(tmp_path: Path, hf_tokenizer: object) -> None:
    model = load_any(_saved(reference_model(TINY, seed=5), tmp_path / "src"))
    convert(tmp_path / "src", tmp_path / "native", to="clipforge")
    convert(tmp_path / "native", tmp_path / "hf", to="hf")
    exported = transformers.CLIPModel.from_pretrained(str(tmp_path / "hf")).eval()
    assert exported.config.text_config.eos_token_id == 49407
    assert_parity(exported, model, hf_tokenizer, TINY["vision"]["image_size"])
    again = load_any(tmp_path / "hf")
    assert again.config == model.config
    assert_same_weights(model, again)
    # The tokenizer travels with the export (OpenAI's vocabulary, since the model's vocabulary size matches).
    assert transformers.CLIPTokenizer.from_pretrained(str(tmp_path / "hf"))("a cat")["input_ids"] == \
        hf_tokenizer("a cat")["input_ids"]


def test_custom_end_of_text_id_pools_where_hf_pools(tmp_path: Path) -> None:
    """A vocabulary whose end-of-text is not its highest id: HF pools at the first eos_token_id, as we do."""
    torch.manual_seed(0)
    model = clipforge.create_model("tiny-vit", act="quick_gelu", text={"vocab_size": 300, "eot_token_id": 7,
                                                                        "context_length": 16})
    save_hf(model, tmp_path / "hf")
    exported = transformers.CLIPModel.from_pretrained(str(tmp_path / "hf")).eval()
    tokens = torch.randint(8, 300, (3, 16), generator=torch.Generator().manual_seed(0))
    tokens[0, 5], tokens[1, 15], tokens[2, 1], tokens[2, 9] = 7, 7, 7, 7
    with torch.no_grad():
        ref = _features(exported.get_text_features(input_ids=tokens))
        assert (model.eval().encode_text(tokens) - ref).abs().max() <= TOL
    again = load_any(tmp_path / "hf")
    assert again.config.text.eot_token_id == 7
    assert_same_weights(model, again)


def test_what_hf_cannot_hold_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no ResNet CLIP"):
        save_hf(clipforge.create_model("tiny-rn"), tmp_path / "rn")
    with pytest.raises(CheckpointError, match="no logit bias"):
        save_hf(clipforge.create_model("tiny-vit", init_logit_bias=-10.0), tmp_path / "siglip")
    with pytest.raises(CheckpointError, match="CLIP models only"):
        save_hf(clipforge.create_model("clippo-tiny"), tmp_path / "clippo")


def test_hf_shape_mismatch_names_the_key(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    _saved(reference_model(TINY), tmp_path / "hf")
    state = load_file(tmp_path / "hf" / "model.safetensors")
    state["text_model.final_layer_norm.weight"] = torch.ones(65)
    save_file(state, tmp_path / "hf" / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"'text.ln_final.weight' has shape \(65,\), the model expects \(64,\)"):
        load_any(tmp_path / "hf")


def _saved(reference: object, directory: Path) -> Path:
    reference.save_pretrained(directory)
    return directory


@pytest.mark.slow
def test_full_size_vit_b32_parity(tmp_path: Path, hf_tokenizer: object) -> None:
    reference = reference_model(FULL)
    reference.save_pretrained(tmp_path / "hf")
    model = load_any(tmp_path / "hf")
    assert model.config == build_config("ViT-B/32")
    assert_parity(reference, model, hf_tokenizer, 224)
    save_hf(model, tmp_path / "export")
    assert_same_weights(model, load_any(tmp_path / "export"))
