"""Hugging Face ``transformers.Siglip2Model`` directories (SigLIP 2 NaFlex, ``model_type`` ``siglip2``) ↔ clipforge.

``Siglip2Model`` is ``SiglipModel`` (``hf_siglip.py``, whose key mapping and config reading this reuses) with a
NaFlex image tower:

- the patch embedding is an ``nn.Linear`` over flattened patches (row, column, channel), where clipforge keeps the
  patch convolution's weight (width, 3, p, p): the same numbers reordered (``clipforge.models.naflex``);
- the positions are ``num_patches`` (a square grid: 256 = 16 × 16 as released) in place of ``image_size``; clipforge
  records the grid as ``vision.image_size = grid × patch_size``;
- the patch budget ``max_num_patches`` and the normalisation live in ``preprocessor_config.json``
  (``Siglip2ImageProcessor``; without one, its defaults: 256 patches, mean and std 0.5).

The text tower is SigLIP's. The tokenizer is Gemma's; transformers 5 serves ``siglip2`` directories with
``Siglip2Tokenizer`` (Gemma's, lower-cased), which is clipforge's ``style: gemma`` with its default ``lower``.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch

from clipforge.checkpoints.hf import hf_model_type, read_hf_weights
from clipforge.checkpoints.hf_siglip import (
    HF_TEXT,
    HF_VISION,
    _json_object,
    _square,
    _style,
    _tower,
    _write_json,
    config_from_hf_siglip,
    from_hf_siglip_state_dict,
    hf_siglip_config,
    to_hf_siglip_state_dict,
    tokenizer_settings,
    write_hf_directory,
)
from clipforge.checkpoints.native import CheckpointError
from clipforge.config import ConfigError, shorten
from clipforge.config import replace as replace_config
from clipforge.models.config import SigLIPConfig
from clipforge.models.naflex import conv_weight_as_linear, linear_weight_as_conv
from clipforge.models.size import check_model_size

if TYPE_CHECKING:
    from clipforge.models.clip import CLIP
    from clipforge.models.clippo import CLIPPO

# transformers' Siglip2VisionConfig defaults: SiglipVisionConfig's, with a 16 × 16 position grid for image_size.
HF2_VISION: dict[str, Any] = {**{k: v for k, v in HF_VISION.items() if k != "image_size"}, "num_patches": 256}
PATCH_KEY = "vision_model.embeddings.patch_embedding.weight"
PROCESSOR_DEFAULTS: dict[str, Any] = {"max_num_patches": 256, "image_mean": [0.5, 0.5, 0.5],
                                      "image_std": [0.5, 0.5, 0.5]}


def is_hf_siglip2_dir(path: str | Path) -> bool:
    """Whether ``path`` is a directory with an HF ``config.json`` of model type ``siglip2``."""
    return hf_model_type(path) == "siglip2"


def _grid(num_patches: Any, source: str) -> int:
    """The side of the square position grid of ``num_patches`` positions."""
    if not isinstance(num_patches, int) or isinstance(num_patches, bool) or not 0 < num_patches <= 2**24 or \
            math.isqrt(num_patches) ** 2 != num_patches:
        raise CheckpointError(f"{source}: vision_config.num_patches={shorten(num_patches)}: expected a square number "
                              "of positions (256 = 16 × 16 as released)")
    return math.isqrt(num_patches)


def _processor_fields(processor: dict[str, Any] | None, patch_size: Any, source: str) -> dict[str, Any]:
    """``max_num_patches``, mean and std from ``preprocessor_config.json`` (defaults where it has none)."""
    processor = processor or {}
    fields = {k: processor.get(k, default) for k, default in PROCESSOR_DEFAULTS.items()}
    if "patch_size" in processor and processor["patch_size"] != patch_size:
        raise CheckpointError(f"{source}: patch_size={shorten(processor['patch_size'])} differs from the model's "
                              f"vision_config.patch_size={shorten(patch_size)}")
    for key in ("image_mean", "image_std"):
        value = fields[key]
        if isinstance(value, int | float) and not isinstance(value, bool):
            fields[key] = [value] * 3  # HF allows one number for all channels
    return fields


def config_from_hf_siglip2(hf: dict[str, Any], source: str = "config.json", tokenizer: dict[str, Any] | None = None,
                           processor: dict[str, Any] | None = None) -> SigLIPConfig:
    """A clipforge NaFlex SigLIP config from an HF ``Siglip2Config`` mapping and its image processor's settings.

    Args:
        hf: The parsed ``config.json``.
        source: Names the file in errors.
        tokenizer: The config's ``tokenizer`` settings (default: Gemma's SentencePiece tokenizer, lower-cased).
        processor: The parsed ``preprocessor_config.json`` (``Siglip2ImageProcessor``), if any.

    Raises:
        CheckpointError: A field clipforge cannot hold, naming the file and the field.
        ConfigError: A field of the wrong type or out of range.
    """
    vision = _tower(hf, "vision_config", HF2_VISION, source)
    patch = _square(vision["patch_size"], source, "patch_size")
    grid = _grid(vision["num_patches"], source)
    if not isinstance(patch, int) or isinstance(patch, bool) or not 0 < patch <= 2**16:
        raise CheckpointError(f"{source}: vision_config.patch_size={shorten(patch)}: expected a positive integer")
    fields = _processor_fields(processor, patch, source.replace("config.json", "preprocessor_config.json"))
    siglip = {**hf, "text_config": _tower(hf, "text_config", HF_TEXT, source),
              "vision_config": {**vision, "image_size": grid * patch}}
    config = config_from_hf_siglip(siglip, source, tokenizer or {"kind": "sentencepiece", "style": "gemma"})
    overrides = {"vision.naflex": True, "vision.max_num_patches": fields["max_num_patches"],
                 "mean": fields["image_mean"], "std": fields["image_std"]}
    try:  # checked field by field by the config machinery
        return replace_config(config, overrides, "config")
    except ConfigError as e:
        raise ConfigError(f"{source.replace('config.json', 'preprocessor_config.json')}: {e}") from None


def hf_siglip2_config(config: SigLIPConfig, style: str = "gemma") -> dict[str, Any]:
    """The ``config.json`` that makes ``transformers.Siglip2Model`` build this NaFlex model.

    Raises:
        CheckpointError: The model is not a NaFlex SigLIP, or not one ``Siglip2Model`` can hold (what
            ``hf_siglip.hf_siglip_config`` refuses: a pooling other than MAP, a class token, ...).
    """
    if not isinstance(config, SigLIPConfig) or not config.vision.naflex:
        raise CheckpointError("HF's Siglip2Model holds SigLIP models with a NaFlex image tower (vision.naflex=True)")
    hf = hf_siglip_config(replace(config, vision=replace(config.vision, naflex=False)), style)
    vision = {k: v for k, v in hf["vision_config"].items() if k != "image_size"}
    text = hf["text_config"]
    return {**hf, "architectures": ["Siglip2Model"], "model_type": "siglip2",
            "text_config": {**text, "model_type": "siglip2_text_model"},
            "vision_config": {**vision, "model_type": "siglip2_vision_model",
                              "num_patches": config.vision.grid_size ** 2}}


def image_processor_config(config: SigLIPConfig) -> dict[str, Any]:
    """``preprocessor_config.json`` for ``Siglip2ImageProcessor``: clipforge's NaFlex eval transform of this model."""
    v = config.vision
    return {"image_processor_type": "Siglip2ImageProcessor", "processor_class": "Siglip2Processor",
            "do_resize": True, "resample": 2, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
            "image_mean": list(config.mean), "image_std": list(config.std), "patch_size": v.patch_size,
            "max_num_patches": v.max_num_patches}


def from_hf_siglip2_state_dict(state: dict[str, torch.Tensor], config: SigLIPConfig,
                               source: str = "<HF state dict>") -> dict[str, torch.Tensor]:
    """HF ``Siglip2Model`` tensors → clipforge's state dict for ``config`` (every tensor's name and shape checked)."""
    p, width = config.vision.patch_size, config.vision.width
    weight = state.get(PATCH_KEY)
    if weight is not None:
        if tuple(weight.shape) != (width, 3 * p * p):
            raise CheckpointError(f"{source}: {PATCH_KEY!r} has shape {tuple(weight.shape)}, config.json implies "
                                  f"{(width, 3 * p * p)}")
        state = {**state, PATCH_KEY: linear_weight_as_conv(weight, p)}
    return from_hf_siglip_state_dict(state, config, source)


def to_hf_siglip2_state_dict(state: dict[str, torch.Tensor], config: SigLIPConfig) -> dict[str, torch.Tensor]:
    """clipforge's state dict → HF ``Siglip2Model`` tensors (the inverse of ``from_hf_siglip2_state_dict``)."""
    out = to_hf_siglip_state_dict(state, config)
    out[PATCH_KEY] = conv_weight_as_linear(out[PATCH_KEY])
    return out


def load_hf_siglip2(directory: str | Path, allow_pickle: bool = False) -> tuple[SigLIPConfig, dict[str, torch.Tensor]]:
    """Reads an HF ``Siglip2Model`` directory (and its ``preprocessor_config.json``) into (config, state dict)."""
    directory = Path(directory)
    if not is_hf_siglip2_dir(directory):
        raise CheckpointError(f"{directory}: not an HF SigLIP 2 NaFlex directory (needs config.json with model_type "
                              "'siglip2')")
    source = str(directory / "config.json")
    hf = cast(dict[str, Any], _json_object(directory / "config.json"))  # hf_model_type parsed it already
    vocab = _tower(hf, "text_config", HF_TEXT, source)["vocab_size"]
    tokenizer = _tokenizer_settings(directory, vocab if isinstance(vocab, int) else 0)
    config = config_from_hf_siglip2(hf, source, tokenizer, _json_object(directory / "preprocessor_config.json"))
    check_model_size(config, where=source)  # before reading weights or renaming keys
    state = read_hf_weights(directory, allow_pickle)
    return config, from_hf_siglip2_state_dict(state, config, str(directory))


def _tokenizer_settings(directory: Path, vocab_size: int) -> dict[str, Any]:
    """Gemma's tokenizer, lower-cased (transformers 5's ``Siglip2Tokenizer``), unless ``tokenizer_config.json``
    names another class or only SigLIP's ``spiece.model`` is there (then ``hf_siglip.tokenizer_settings`` reads it)."""
    name = (_json_object(directory / "tokenizer_config.json") or {}).get("tokenizer_class")
    if name == "Siglip2Tokenizer" or (name is None and not (directory / "spiece.model").is_file()):
        return {"kind": "sentencepiece", "style": "gemma"}
    return tokenizer_settings(directory, vocab_size)


def save_hf_siglip2(model: CLIP | CLIPPO, directory: str | Path, text_processor: Any = None) -> Path:
    """Writes a directory that ``transformers.Siglip2Model.from_pretrained`` and ``Siglip2ImageProcessor`` load.

    ``config.json``, ``model.safetensors``, ``preprocessor_config.json`` (the patch size, ``max_num_patches``,
    mean and std) and, with a SentencePiece ``text_processor`` of the model's vocabulary size, its tokenizer files
    (as ``hf_siglip.save_hf_siglip`` writes them). HF does not clamp the logit scale: a model whose
    ``max_logit_scale`` is set is written with the scale it uses (clamped).

    Args:
        model: A clipforge SigLIP model with a NaFlex image tower.
        directory: Created if needed.
        text_processor: The model's tokenizer; another kind than SentencePiece is not written.
    """
    config = cast(SigLIPConfig, model.config)
    style = _style(text_processor, config)
    hf = hf_siglip2_config(config, style or "gemma")
    directory = write_hf_directory(directory, model, config, to_hf_siglip2_state_dict, hf,
                                   image_processor_config(config), text_processor, style)
    if style is not None:
        settings = json.loads((directory / "tokenizer_config.json").read_text(encoding="utf-8"))
        _write_json(directory / "tokenizer_config.json", {**settings, "processor_class": "Siglip2Processor"})
    return directory


__all__ = ["config_from_hf_siglip2", "from_hf_siglip2_state_dict", "hf_siglip2_config", "image_processor_config",
           "is_hf_siglip2_dir", "load_hf_siglip2", "save_hf_siglip2", "to_hf_siglip2_state_dict"]
