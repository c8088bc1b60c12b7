"""Hugging Face ``transformers.CLIPModel`` directories ↔ clipforge CLIP (ViT towers only: HF has no ResNet CLIP).

HF splits the fused q/k/v projection into ``q_proj``/``k_proj``/``v_proj``, stores the output projections as
bias-free ``nn.Linear`` layers (the transpose of our ``x @ proj`` matrices) and the positions as embeddings.

Text pooling. clipforge's default (``TextConfig.eot_token_id is None``) is OpenAI's rule: features at the
highest token id, the end-of-text token (49407 in OpenAI's vocabulary). ``CLIPTextModel`` pools at the first
occurrence of ``eos_token_id`` (or, for the legacy value 2, at the argmax). Exporting with ``eos_token_id`` =
vocab_size - 1 (49407) pools at the same position whenever the sequence holds an end-of-text token, which every
tokenizer output does: argmax returns the first occurrence of the highest id. ``pad_token_id`` plays no part
in the pooling (1, as in HF's released configs); ``bos_token_id`` is vocab_size - 2 (49406).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch

from clipforge.checkpoints.native import CheckpointError, read_safetensors
from clipforge.checkpoints.openai import _ratio, read_pickled_state_dict
from clipforge.config import ConfigError, from_dict, read_config_text, shorten
from clipforge.models.config import Activation, CLIPConfig, ModelConfig, ViTConfig
from clipforge.models.size import check_model_size

if TYPE_CHECKING:
    from clipforge.models.clip import CLIP
    from clipforge.models.clippo import CLIPPO

ACTS_FROM_HF: dict[str, Activation] = {"quick_gelu": "quick_gelu", "gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh",
                                       "gelu_new": "gelu_tanh"}
ACTS_TO_HF = {"quick_gelu": "quick_gelu", "gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh"}
LEGACY_EOS = 2  # HF's pre-2023 configs: CLIPTextModel pools at the argmax, like OpenAI


HF_MODEL_TYPES = ("clip", "siglip", "siglip2")  # hf.py, hf_siglip.py, hf_siglip2.py


def hf_model_type(path: str | Path) -> str | None:
    """The ``model_type`` of the HF ``config.json`` in directory ``path`` (a non-string value as its ``repr``), or
    ``None`` when there is no readable JSON object with one (not an HF model directory)."""
    config = Path(path) / "config.json"
    if not config.is_file():
        return None
    try:
        data = json.loads(read_config_text(config))
    except (ValueError, RecursionError, OSError):  # ConfigError (too large, not UTF-8) is a ValueError
        return None
    if not isinstance(data, dict) or "model_type" not in data or "clipforge_format" in data:
        return None
    model_type = data["model_type"]
    return model_type if isinstance(model_type, str) else shorten(model_type)


def is_hf_dir(path: str | Path) -> bool:
    """Whether ``path`` is an HF model directory of a type clipforge reads (``HF_MODEL_TYPES``)."""
    return hf_model_type(path) in HF_MODEL_TYPES


def config_from_hf(hf: dict[str, Any], source: str = "config.json") -> CLIPConfig:
    """A clipforge config from an HF ``CLIPConfig`` mapping (``config.json``)."""
    try:
        t, v = hf["text_config"], hf["vision_config"]
        if not isinstance(t, dict) or not isinstance(v, dict):
            raise CheckpointError(f"{source}: text_config and vision_config must be objects")
        acts = {t.get("hidden_act", "quick_gelu"), v.get("hidden_act", "quick_gelu")}
        if len(acts) > 1 or not acts <= set(ACTS_FROM_HF):
            raise CheckpointError(f"{source}: hidden_act {shorten(sorted(map(str, acts)))} is not supported; "
                                  f"clipforge needs one of {sorted(ACTS_FROM_HF)} for both towers")
        eps = {t.get("layer_norm_eps", 1e-5), v.get("layer_norm_eps", 1e-5)}
        if len(eps) > 1:
            raise CheckpointError(f"{source}: the towers' layer_norm_eps differ ({shorten(sorted(map(str, eps)))})")
        vocab, eos = t.get("vocab_size", 49408), t.get("eos_token_id", LEGACY_EOS)
        eot = None if eos == LEGACY_EOS or (isinstance(vocab, int) and eos == vocab - 1) else eos
        data = {  # checked field by field by the config machinery, like any other outside config
            "embed_dim": hf.get("projection_dim", 512), "act": ACTS_FROM_HF[acts.pop()], "norm_eps": eps.pop(),
            "text": {"vocab_size": vocab, "context_length": t.get("max_position_embeddings", 77),
                     "width": t["hidden_size"], "layers": t["num_hidden_layers"], "heads": t["num_attention_heads"],
                     "mlp_ratio": _hf_ratio(t, source, "text_config"), "eot_token_id": eot},
            "vision": {"kind": "vit", "image_size": v["image_size"], "patch_size": v["patch_size"],
                       "width": v["hidden_size"], "layers": v["num_hidden_layers"],
                       "heads": v["num_attention_heads"], "mlp_ratio": _hf_ratio(v, source, "vision_config")},
        }
    except KeyError as e:
        raise CheckpointError(f"{source}: missing HF config field {shorten(e.args[0])}") from None
    except TypeError as e:  # an unhashable activation or epsilon
        raise CheckpointError(f"{source}: hidden_act and layer_norm_eps must be a string and a number ({e})"
                              ) from None
    try:
        return from_dict(CLIPConfig, data, "config")
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None


def _hf_ratio(tower: dict[str, Any], source: str, where: str) -> float:
    """``intermediate_size / hidden_size`` as clipforge's ``mlp_ratio``, both checked to be positive integers."""
    sizes = (tower["intermediate_size"], tower["hidden_size"])
    if not all(isinstance(n, int) and not isinstance(n, bool) and 0 < n <= 2**31 for n in sizes):
        raise CheckpointError(f"{source}: {where}.intermediate_size and hidden_size must be positive integers, got "
                              f"{shorten(sizes)}")
    return _ratio(*sizes)


def hf_config(config: ModelConfig) -> dict[str, Any]:
    """The ``config.json`` that makes ``transformers.CLIPModel`` build this model (see the module docstring)."""
    if not isinstance(config, CLIPConfig):
        raise CheckpointError(f"HF transformers' CLIPModel holds CLIP models only, not {config.family!r}")
    v, t = config.vision, config.text
    if not isinstance(v, ViTConfig):
        raise CheckpointError("HF transformers has no ResNet CLIP: a ResNet model cannot be exported to the HF "
                              "format (use --to open_clip or --to clipforge)")
    if v.pool != "cls" or not v.class_token or not v.ln_pre or v.patch_bias or v.proj_bias or v.stem != "patch":
        raise CheckpointError("HF's CLIPVisionModel is a patch-stem class-token ViT with ln_pre and no "
                              f"patch/projection bias; this one has pool={v.pool!r}, class_token={v.class_token}, "
                              f"ln_pre={v.ln_pre}, patch_bias={v.patch_bias}, proj_bias={v.proj_bias}, stem={v.stem!r}")
    if config.init_logit_bias is not None:
        raise CheckpointError("HF's CLIPModel has no logit bias (a SigLIP-style model); it cannot be exported to it")
    eos = t.eot_token_id if t.eot_token_id is not None else t.vocab_size - 1
    common = {"hidden_act": ACTS_TO_HF[config.act], "layer_norm_eps": config.norm_eps,
              "projection_dim": config.embed_dim, "attention_dropout": 0.0, "initializer_factor": 1.0,
              "initializer_range": 0.02}
    text = {**common, "model_type": "clip_text_model", "vocab_size": t.vocab_size,
            "max_position_embeddings": t.context_length, "hidden_size": t.width,
            "intermediate_size": int(t.width * t.mlp_ratio), "num_hidden_layers": t.layers,
            "num_attention_heads": t.heads, "eos_token_id": eos, "bos_token_id": max(0, t.vocab_size - 2),
            "pad_token_id": 1}
    vision = {**common, "model_type": "clip_vision_model", "image_size": v.image_size, "patch_size": v.patch_size,
              "num_channels": 3, "hidden_size": v.width, "intermediate_size": int(v.width * v.mlp_ratio),
              "num_hidden_layers": v.layers, "num_attention_heads": v.heads}
    return {"architectures": ["CLIPModel"], "model_type": "clip", "projection_dim": config.embed_dim,
            "logit_scale_init_value": config.init_logit_scale, "initializer_factor": 1.0, "dtype": "float32",
            "text_config": text, "vision_config": vision}


def _block_pairs(src: str, dst: str) -> list[tuple[str, str]]:
    """HF ``CLIPEncoderLayer`` ↔ clipforge ``Block`` names that map one to one (attention q/k/v aside)."""
    names = [("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"), ("self_attn.out_proj", "attn.out_proj"),
             ("mlp.fc1", "mlp.fc"), ("mlp.fc2", "mlp.proj")]
    return [(f"{src}{a}.{p}", f"{dst}{b}.{p}") for a, b in names for p in ("weight", "bias")]


def _tower_pairs(config: CLIPConfig) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(one-to-one name pairs, fused-attention pairs ``(hf prefix, clipforge prefix)``) for ``config``."""
    v, t = cast(ViTConfig, config.vision), config.text  # HF holds ViTs only: hf_config refuses a ResNet
    pairs = [("vision_model.embeddings.patch_embedding.weight", "visual.patch_embed.weight"),
             ("vision_model.embeddings.class_embedding", "visual.class_token"),
             ("vision_model.embeddings.position_embedding.weight", "visual.pos_embed"),
             ("vision_model.pre_layrnorm.weight", "visual.ln_pre.weight"),
             ("vision_model.pre_layrnorm.bias", "visual.ln_pre.bias"),
             ("vision_model.post_layernorm.weight", "visual.ln_post.weight"),
             ("vision_model.post_layernorm.bias", "visual.ln_post.bias"),
             ("text_model.embeddings.token_embedding.weight", "text.token_embed.weight"),
             ("text_model.embeddings.position_embedding.weight", "text.pos_embed"),
             ("text_model.final_layer_norm.weight", "text.ln_final.weight"),
             ("text_model.final_layer_norm.bias", "text.ln_final.bias"),
             ("logit_scale", "logit_scale")]
    attention = []
    for tower, ours, layers in (("vision_model", "visual", v.layers), ("text_model", "text", t.layers)):
        for i in range(layers):
            src, dst = f"{tower}.encoder.layers.{i}.", f"{ours}.transformer.blocks.{i}."
            pairs += _block_pairs(src, dst)
            attention.append((src + "self_attn.", dst + "attn.qkv."))
    return pairs, attention


def from_hf_state_dict(state: dict[str, torch.Tensor], config: CLIPConfig,
                       source: str = "<HF state dict>") -> dict[str, torch.Tensor]:
    """HF ``CLIPModel`` tensors → clipforge's state dict for ``config``."""
    pairs, attention = _tower_pairs(config)
    used: set[str] = set()

    def get(key: str) -> torch.Tensor:
        if key not in state:
            raise CheckpointError(f"{source}: missing key {key!r}")
        used.add(key)
        return state[key]

    out = {dst: get(src) for src, dst in pairs}
    for src, dst in attention:
        for p in ("weight", "bias"):
            out[dst + p] = torch.cat([get(f"{src}{n}_proj.{p}") for n in "qkv"])
    out["visual.proj"] = get("visual_projection.weight").T
    out["text.proj"] = get("text_projection.weight").T
    ignored = ("text_model.embeddings.position_ids", "vision_model.embeddings.position_ids")
    extra = sorted(k for k in state if k not in used and k not in ignored)
    if extra:
        raise CheckpointError(f"{source}: unexpected key {extra[0]!r}" + (f" (and {len(extra) - 1} more)"
                                                                            if len(extra) > 1 else ""))
    return out


def to_hf_state_dict(state: dict[str, torch.Tensor], config: CLIPConfig) -> dict[str, torch.Tensor]:
    """clipforge's state dict → HF ``CLIPModel`` tensors (the inverse of ``from_hf_state_dict``)."""
    hf_config(config)  # refuses what HF cannot hold
    pairs, attention = _tower_pairs(config)
    out = {src: state[dst] for src, dst in pairs}
    for src, dst in attention:
        for p in ("weight", "bias"):
            for n, chunk in zip("qkv", state[dst + p].chunk(3)):
                out[f"{src}{n}_proj.{p}"] = chunk
    out["visual_projection.weight"] = state["visual.proj"].T
    out["text_projection.weight"] = state["text.proj"].T
    return out


def read_hf_weights(directory: Path, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """The tensors of an HF model directory: ``model.safetensors`` (possibly sharded) or ``pytorch_model.bin``."""
    if (directory / "model.safetensors").is_file():
        return read_safetensors(directory / "model.safetensors")
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        return {k: v for shard in _shards(index) for k, v in read_safetensors(directory / shard).items()}
    if (directory / "pytorch_model.bin").is_file():
        return read_pickled_state_dict(directory / "pytorch_model.bin", allow_pickle)
    raise FileNotFoundError(f"{directory}: no model.safetensors, model.safetensors.index.json or pytorch_model.bin")


def _shards(index: Path) -> list[str]:
    """The shard files a ``model.safetensors.index.json`` names (plain names in the same directory)."""
    try:
        data = json.loads(read_config_text(index))
    except (ValueError, RecursionError) as e:
        raise CheckpointError(f"{index}: not a readable index ({type(e).__name__}: {str(e)[:200]})") from None
    names = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(names, dict) or not all(isinstance(n, str) for n in names.values()):
        raise CheckpointError(f"{index}: expected an object with a 'weight_map' of tensor names to shard files")
    shards = sorted(set(names.values()))
    bad = [n for n in shards if Path(n).name != n or n in ("", ".", "..")]
    if bad:
        raise CheckpointError(f"{index}: shard {bad[0][:200]!r} is not a file name in the model directory")
    return shards


def load_hf(directory: str | Path, allow_pickle: bool = False) -> tuple[CLIPConfig, dict[str, torch.Tensor]]:
    """Reads an HF ``CLIPModel`` directory into (config, clipforge state dict)."""
    directory = Path(directory)
    if hf_model_type(directory) != "clip":
        raise CheckpointError(f"{directory}: not an HF CLIP directory (needs config.json with model_type 'clip')")
    hf = json.loads(read_config_text(directory / "config.json"))  # hf_model_type parsed it already
    config = config_from_hf(hf, str(directory / "config.json"))
    check_model_size(config, where=str(directory / "config.json"))  # before reading weights or renaming keys
    state = read_hf_weights(directory, allow_pickle)
    return config, from_hf_state_dict(state, config, str(directory))


def save_hf(model: CLIP | CLIPPO, directory: str | Path, text_processor: Any = None) -> Path:
    """Writes ``config.json`` and ``model.safetensors`` that ``transformers.CLIPModel.from_pretrained`` loads.

    Args:
        model: A clipforge CLIP model with a ViT image tower.
        directory: Created if needed.
        text_processor: Written too (CLIPTokenizer files) when it has ``save_hf(directory)`` and its vocabulary
            size is the model's.
    """
    from safetensors.torch import save_file

    hf = hf_config(model.config)
    config = cast(CLIPConfig, model.config)  # hf_config has refused every other family
    state = {k: v.detach().cpu().contiguous() for k, v in to_hf_state_dict(model.state_dict(), config).items()}
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
    (directory / "config.json").write_text(json.dumps(hf, indent=2) + "\n", encoding="utf-8")
    vocab_size = getattr(text_processor, "vocab_size", None)
    if callable(getattr(text_processor, "save_hf", None)) and vocab_size == config.text.vocab_size:
        text_processor.save_hf(directory)
    return directory
