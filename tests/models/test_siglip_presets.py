"""SigLIP / SigLIP 2 presets: exact parameter counts against transformers' and OpenCLIP's own builds (meta device),
and the family's architecture (bidirectional text, last-token pooling, unclamped scale, learned bias)."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

import clipforge
from clipforge.models.config import SigLIPConfig

SIGLIP = [name for name in clipforge.list_models() if name.lower().startswith("siglip") and "tiny" not in name]

# OpenCLIP's own model config for each released shape (open_clip/model_configs/*.json, timm image towers).
OPEN_CLIP_NAMES = {
    "SigLIP-B/16": "ViT-B-16-SigLIP", "SigLIP-B/16-256": "ViT-B-16-SigLIP-256",
    "SigLIP-B/16-384": "ViT-B-16-SigLIP-384", "SigLIP-B/16-512": "ViT-B-16-SigLIP-512",
    "SigLIP-L/16-256": "ViT-L-16-SigLIP-256", "SigLIP-L/16-384": "ViT-L-16-SigLIP-384",
    "SigLIP-So400m/14": "ViT-SO400M-14-SigLIP", "SigLIP-So400m/14-384": "ViT-SO400M-14-SigLIP-384",
    "SigLIP2-B/16": "ViT-B-16-SigLIP2", "SigLIP2-B/16-256": "ViT-B-16-SigLIP2-256",
    "SigLIP2-B/16-384": "ViT-B-16-SigLIP2-384", "SigLIP2-B/16-512": "ViT-B-16-SigLIP2-512",
    "SigLIP2-L/16-256": "ViT-L-16-SigLIP2-256", "SigLIP2-L/16-384": "ViT-L-16-SigLIP2-384",
    "SigLIP2-L/16-512": "ViT-L-16-SigLIP2-512", "SigLIP2-So400m/14": "ViT-SO400M-14-SigLIP2",
    # OpenCLIP names it by the pixels its 27 × 27 patches cover (378); the released HF config says 384.
    "SigLIP2-So400m/14-384": "ViT-SO400M-14-SigLIP2-378",
    "SigLIP2-So400m/16-256": "ViT-SO400M-16-SigLIP2-256", "SigLIP2-So400m/16-384": "ViT-SO400M-16-SigLIP2-384",
    "SigLIP2-So400m/16-512": "ViT-SO400M-16-SigLIP2-512", "SigLIP2-g/16-256": "ViT-gopt-16-SigLIP2-256",
    "SigLIP2-g/16-384": "ViT-gopt-16-SigLIP2-384",
    # OpenCLIP has no NaFlex config; a NaFlex tower has the parameters of the 16 × 16-grid fixed-resolution one.
    "SigLIP2-B/16-naflex": "ViT-B-16-SigLIP2-256", "SigLIP2-So400m/16-naflex": "ViT-SO400M-16-SigLIP2-256",
}


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def hf_config(config: SigLIPConfig) -> Any:
    """The ``transformers.SiglipConfig`` of the same shape (as the released config.json files spell it)."""
    transformers = pytest.importorskip("transformers")
    t, v = config.text, config.vision
    return transformers.SiglipConfig(
        text_config={"vocab_size": t.vocab_size, "hidden_size": t.width, "num_hidden_layers": t.layers,
                     "num_attention_heads": t.heads, "intermediate_size": int(t.width * t.mlp_ratio),
                     "max_position_embeddings": t.context_length, "projection_size": config.embed_dim},
        vision_config={"hidden_size": v.width, "num_hidden_layers": v.layers, "num_attention_heads": v.heads,
                       "intermediate_size": int(v.width * v.mlp_ratio), "image_size": v.image_size,
                       "patch_size": v.patch_size})


@pytest.mark.parametrize("name", SIGLIP)
def test_parameter_count_equals_transformers_siglip(name: str) -> None:
    transformers = pytest.importorskip("transformers")
    with torch.device("meta"):
        model = clipforge.create_model(name)
        reference = transformers.SiglipModel(hf_config(model.config))
    assert count(model) == count(reference)


@pytest.mark.parametrize("name", SIGLIP)
def test_parameter_count_equals_open_clip_from_its_own_config(name: str) -> None:
    """OpenCLIP's configs and timm's towers are an independent record of the released shapes."""
    open_clip = pytest.importorskip("open_clip")
    with torch.device("meta"):
        model = clipforge.create_model(name)
        reference = open_clip.create_model(OPEN_CLIP_NAMES[name], pretrained=None, device="meta")
    assert count(model) == count(reference)


def test_every_siglip_preset_has_an_open_clip_counterpart() -> None:
    assert sorted(SIGLIP) == sorted(OPEN_CLIP_NAMES)


def test_siglip_text_tower_is_bidirectional_and_pooled_at_the_last_position() -> None:
    torch.manual_seed(0)
    model = clipforge.create_model("siglip-tiny").eval()
    tokens = torch.randint(1, 1000, (2, 32))
    base = model.encode_text(tokens)
    changed = tokens.clone()
    changed[:, -1] = 7  # the pooled position itself
    assert not torch.allclose(model.encode_text(changed), base)
    later = tokens.clone()
    later[:, 5] = 9  # a token before the last position: a causal model would also see it, so change an early one
    first = tokens.clone()
    first[:, 0] = 11
    # Bidirectional: the output at the last position depends on every token; with a causal mask it still would, so
    # the check that tells the two apart is the hidden state at position 0 seeing position 31.
    x = model.text.token_embed(tokens) + model.text.pos_embed
    y = model.text.token_embed(changed) + model.text.pos_embed
    assert not torch.allclose(model.text.transformer(x)[:, 0], model.text.transformer(y)[:, 0])
    assert not torch.allclose(model.encode_text(first), base)


def test_siglip_scale_is_not_clamped_and_the_bias_is_learned() -> None:
    model = clipforge.create_model("siglip-tiny")
    assert model.logit_bias is not None and model.logit_bias.item() == pytest.approx(-10.0)
    assert model.scale().item() == pytest.approx(10.0)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(500.0))
    assert model.scale().item() == pytest.approx(500.0, rel=1e-5)  # CLIP would clamp at 100
    out = model(torch.randn(2, 3, 64, 64), torch.randint(0, 1000, (2, 32)))
    assert out.logit_bias is model.logit_bias
    assert set(model.towers()) == {"image", "text"}
    assert model.config.scoring == "sigmoid"


def test_the_image_tower_has_no_projection_and_embed_dim_must_be_its_width() -> None:
    model = clipforge.create_model("siglip-tiny")
    assert model.visual.proj is None
    with pytest.raises(clipforge.ConfigError, match="embed_dim=64 must equal vision.width=128"):
        clipforge.create_model("siglip-tiny", embed_dim=64)


def test_so400m_at_384_px_sees_27_by_27_patches_as_released() -> None:
    with torch.device("meta"):
        model = clipforge.create_model("SigLIP-So400m/14-384")
    assert model.visual.pos_embed.shape == (729, 1152)
