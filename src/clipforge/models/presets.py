"""Named model presets: plain data, registered by name.

The OpenAI shapes follow the released checkpoints (``clip/model.py::build_model``); the OpenCLIP shapes
follow ``open_clip/model_configs/*.json``. Tiny presets train in seconds on a laptop CPU.
A new architecture is a new preset, not a new flag.
"""

from __future__ import annotations

from typing import Any

from clipforge.config import ConfigError

_PRESETS: dict[str, dict[str, Any]] = {}


def register_preset(name: str, config: dict[str, Any]) -> None:
    """Registers a model config (as a plain mapping) under ``name``; validated when first built."""
    if name in _PRESETS:
        raise ValueError(f"preset {name!r} is already registered")
    _PRESETS[name] = config


def list_presets() -> list[str]:
    """Names of every registered preset, sorted."""
    return sorted(_PRESETS)


def preset_hint(name: str) -> str:
    """``"; did you mean …?"`` naming the presets closest to ``name`` (or listing them all), for error messages."""
    import difflib

    close = difflib.get_close_matches(name, list(_PRESETS), n=3, cutoff=0.5)
    return f"; did you mean {', '.join(close)}?" if close else f"; known presets: {', '.join(list_presets())}"


def preset_config(name: str) -> dict[str, Any]:
    """A deep copy of preset ``name``'s config mapping.

    Raises:
        ConfigError: the name is not registered (the message lists close matches).
    """
    import copy

    if name not in _PRESETS:
        raise ConfigError(f"unknown model {name!r}{preset_hint(name)}")
    return copy.deepcopy(_PRESETS[name])


def _openai_resnet(layers: tuple[int, ...], width: int, image: int, embed: int, text_width: int) -> dict[str, Any]:
    return {
        "embed_dim": embed,
        "vision": {"kind": "resnet", "image_size": image, "layers": list(layers), "width": width,
                   "heads": width * 32 // 64},
        "text": {"width": text_width, "heads": text_width // 64, "layers": 12},
        "act": "quick_gelu",
    }


def _vit(image: int, patch: int, width: int, layers: int, heads: int, embed: int, text_width: int,
         text_heads: int, text_layers: int, act: str, mlp_ratio: float = 4.0) -> dict[str, Any]:
    return {
        "embed_dim": embed,
        "vision": {"kind": "vit", "image_size": image, "patch_size": patch, "width": width, "layers": layers,
                   "heads": heads, "mlp_ratio": mlp_ratio},
        "text": {"width": text_width, "heads": text_heads, "layers": text_layers},
        "act": act,
    }


# OpenAI's nine released shapes (all QuickGELU).
register_preset("RN50", _openai_resnet((3, 4, 6, 3), 64, 224, 1024, 512))
register_preset("RN101", _openai_resnet((3, 4, 23, 3), 64, 224, 512, 512))
register_preset("RN50x4", _openai_resnet((4, 6, 10, 6), 80, 288, 640, 640))
register_preset("RN50x16", _openai_resnet((6, 8, 18, 8), 96, 384, 768, 768))
register_preset("RN50x64", _openai_resnet((3, 15, 36, 10), 128, 448, 1024, 1024))
register_preset("ViT-B/32", _vit(224, 32, 768, 12, 12, 512, 512, 8, 12, "quick_gelu"))
register_preset("ViT-B/16", _vit(224, 16, 768, 12, 12, 512, 512, 8, 12, "quick_gelu"))
register_preset("ViT-L/14", _vit(224, 14, 1024, 24, 16, 768, 768, 12, 12, "quick_gelu"))
register_preset("ViT-L/14@336", _vit(336, 14, 1024, 24, 16, 768, 768, 12, 12, "quick_gelu"))

# OpenCLIP's large shapes, trained on LAION with plain GELU.
register_preset("ViT-H/14", _vit(224, 14, 1280, 32, 16, 1024, 1024, 16, 24, "gelu"))
register_preset("ViT-g/14", _vit(224, 14, 1408, 40, 16, 1024, 1024, 16, 24, "gelu", mlp_ratio=4.3637))
register_preset("ViT-bigG/14", _vit(224, 14, 1664, 48, 16, 1280, 1280, 20, 32, "gelu", mlp_ratio=4.9231))
# The same B shapes as trained by OpenCLIP with GELU (e.g. the LAION-2B ViT-B/32).
register_preset("ViT-B/32-gelu", _vit(224, 32, 768, 12, 12, 512, 512, 8, 12, "gelu"))
register_preset("ViT-B/16-gelu", _vit(224, 16, 768, 12, 12, 512, 512, 8, 12, "gelu"))

# Tiny presets for a first try on a CPU, for tests and for the quickstart.
register_preset("tiny-vit", {
    "embed_dim": 128,
    "vision": {"kind": "vit", "image_size": 64, "patch_size": 8, "width": 128, "layers": 4, "heads": 4},
    "text": {"width": 128, "heads": 4, "layers": 4, "context_length": 32},
    "act": "gelu",
})
register_preset("tiny-rn", {
    "embed_dim": 128,
    "vision": {"kind": "resnet", "image_size": 64, "layers": [1, 1, 1, 1], "width": 16, "heads": 8},
    "text": {"width": 128, "heads": 4, "layers": 4, "context_length": 32},
    "act": "gelu",
})


def _clippo_tiny(vision: dict[str, Any]) -> dict[str, Any]:
    return {"family": "clippo", "embed_dim": 128, "vision": vision,
            "render": {"image_size": 96, "mode": "improved", "monospace": True}, "init_logit_scale": 0.0}


# CLIPPO: the paper's B/16 at 224 px (CLIPPOConfig's defaults), and a tiny one for a 2-core CPU.
register_preset("clippo-B/16", {"family": "clippo"})
register_preset("clippo-tiny", _clippo_tiny({
    "kind": "vit", "image_size": 96, "patch_size": 16, "width": 192, "layers": 4, "heads": 3, "pool": "map",
    "class_token": False, "ln_pre": False, "patch_bias": True, "proj_bias": True, "init_gain": 4.0}))
# Beyond the paper: the shared tower as OpenAI's modified ResNet, with GroupNorm (docs/clippo.md).
register_preset("clippo-tiny-rn", _clippo_tiny({
    "kind": "resnet", "image_size": 96, "layers": [1, 1, 1, 1], "width": 16, "heads": 8, "norm": "group"}))


# SigLIP (Zhai et al. 2023) and SigLIP 2 (Tschannen et al. 2025) as released (google/siglip-*, google/siglip2-*): no
# class token, a MAP head without projection, a bidirectional text tower pooled at the last token. Shapes follow the
# released configs; tests/models/test_siglip_presets.py counts parameters against transformers' and OpenCLIP's builds.
def _siglip(image: int, patch: int, width: int, layers: int, heads: int, mlp_ratio: float = 4.0, *,
            version: int = 1, context: int = 64, text: tuple[int, int, int, float] | None = None) -> dict[str, Any]:
    text_width, text_layers, text_heads, text_ratio = text or (width, layers, heads, mlp_ratio)
    tokenizer = {"kind": "sentencepiece", "style": "siglip"} if version == 1 else {"kind": "sentencepiece",
                                                                                  "style": "gemma"}
    return {
        "family": "siglip",
        "embed_dim": width,
        "vision": {"kind": "vit", "image_size": image, "patch_size": patch, "width": width, "layers": layers,
                   "heads": heads, "mlp_ratio": mlp_ratio, "pool": "map", "class_token": False, "ln_pre": False,
                   "patch_bias": True, "proj": False},
        "text": {"vocab_size": 32000 if version == 1 else 256000, "context_length": context, "width": text_width,
                 "layers": text_layers, "heads": text_heads, "mlp_ratio": text_ratio, "causal": False,
                 "pool": "last", "proj_bias": True},
        "tokenizer": tokenizer,
    }


SO400M = (1152, 27, 16, 3.7362)  # width, layers, heads, MLP ratio (4304 = int(1152 × 3.7362)): shape-optimised
for size in (224, 256, 384, 512):
    register_preset("SigLIP-B/16" + ("" if size == 224 else f"-{size}"), _siglip(size, 16, 768, 12, 12))
    register_preset("SigLIP2-B/16" + ("" if size == 224 else f"-{size}"), _siglip(size, 16, 768, 12, 12, version=2))
for size in (256, 384):
    register_preset(f"SigLIP-L/16-{size}", _siglip(size, 16, 1024, 24, 16))
for size in (256, 384, 512):
    register_preset(f"SigLIP2-L/16-{size}", _siglip(size, 16, 1024, 24, 16, version=2))
    register_preset(f"SigLIP2-So400m/16-{size}", _siglip(size, 16, *SO400M, version=2))
register_preset("SigLIP-So400m/14", _siglip(224, 14, *SO400M, context=16))  # released with 16 text positions
register_preset("SigLIP-So400m/14-384", _siglip(384, 14, *SO400M))
register_preset("SigLIP2-So400m/14", _siglip(224, 14, *SO400M, version=2))
register_preset("SigLIP2-So400m/14-384", _siglip(384, 14, *SO400M, version=2))
for size in (256, 384):  # giant-opt: a 1536-wide image tower beside the So400m text tower, projected to 1536
    register_preset(f"SigLIP2-g/16-{size}", _siglip(size, 16, 1536, 40, 16, version=2, text=SO400M))
# A tiny SigLIP for a CPU (OpenAI's BPE: no SentencePiece vocabulary is needed to train it from scratch).
register_preset("siglip-tiny", {
    "family": "siglip", "embed_dim": 128,
    "vision": {"kind": "vit", "image_size": 64, "patch_size": 8, "width": 128, "layers": 4, "heads": 4, "pool": "map",
               "class_token": False, "ln_pre": False, "patch_bias": True, "proj": False},
    "text": {"width": 128, "heads": 4, "layers": 4, "context_length": 32, "causal": False, "pool": "last",
             "proj_bias": True},
    "tokenizer": {"kind": "bpe"},
})


# SigLIP 2 NaFlex (google/siglip2-base-patch16-naflex, google/siglip2-so400m-patch16-naflex: transformers'
# Siglip2Model): each image at its own aspect ratio in at most 256 patches of 16 px, the 16 × 16 learned positions
# (image_size 256) resized to its patch grid; otherwise SigLIP2-B/16-256 and SigLIP2-So400m/16-256.
def _siglip2_naflex(width: int, layers: int, heads: int, mlp_ratio: float = 4.0) -> dict[str, Any]:
    preset = _siglip(256, 16, width, layers, heads, mlp_ratio, version=2)
    preset["vision"].update(naflex=True, max_num_patches=256)
    return preset


register_preset("SigLIP2-B/16-naflex", _siglip2_naflex(768, 12, 12))
register_preset("SigLIP2-So400m/16-naflex", _siglip2_naflex(*SO400M))
