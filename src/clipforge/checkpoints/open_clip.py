"""open_clip checkpoints ↔ clipforge: ``open_clip_model.safetensors``, ``open_clip_pytorch_model.bin``, training files.

open_clip's ``CLIP`` keeps OpenAI's key layout (see ``openai.py``), so the tensors map by name. Training
checkpoints wrap the weights as ``{"state_dict": ...}`` with ``module.`` prefixes (DDP); both are removed.
OpenCLIP's SigLIP models (``CustomTextCLIP`` with a timm image tower) are read by ``open_clip_siglip.py``.

What the tensors do not say:

- **Activation.** open_clip files carry none. In order of preference it comes from the ``act`` argument
  (``--act``), from an ``open_clip_config.json`` beside the file (``model_cfg.quick_gelu``), or is guessed:
  a shape equal to a registered preset's takes that preset's activation (OpenAI shapes → ``quick_gelu``;
  note OpenCLIP's LAION-trained B/32 and B/16 share OpenAI's shapes but use ``gelu``), anything else gets
  open_clip's default ``gelu``. A guess is announced with a warning, since a wrong one silently ruins accuracy.
- **Heads.** ``open_clip_config.json`` gives them (``vision_cfg.head_width``, ``text_cfg.heads``); otherwise a
  matching preset's (ViT-H/14's image tower has 16 heads of 80), else width // 64 as in OpenAI's rule.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeGuard, cast

import torch

from clipforge.checkpoints.native import CheckpointError, read_safetensors
from clipforge.checkpoints.open_clip_siglip import is_open_clip_siglip, load_open_clip_siglip
from clipforge.checkpoints.openai import (
    config_from_openai_state_dict,
    from_openai_keys,
    read_pickled_state_dict,
    to_openai_keys,
)
from clipforge.config import read_config_text, replace, shorten, to_dict
from clipforge.models.config import CLIPConfig, ResNetConfig, SigLIPConfig

if TYPE_CHECKING:
    from clipforge.models.clip import CLIP
    from clipforge.models.clippo import CLIPPO

SAFETENSORS_NAME = "open_clip_model.safetensors"
PICKLE_NAME = "open_clip_pytorch_model.bin"
CONFIG_NAME = "open_clip_config.json"


def find_weights(path: str | Path) -> Path:
    """The weights file of an open_clip checkpoint: the file itself, or the one inside a directory."""
    path = Path(path)
    if path.is_dir():
        for name in (SAFETENSORS_NAME, PICKLE_NAME):
            if (path / name).is_file():
                return path / name
        raise FileNotFoundError(f"{path}: no {SAFETENSORS_NAME} or {PICKLE_NAME} in this directory")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    return path


def read_state_dict(path: str | Path, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """The OpenAI-layout tensors of an open_clip file, unwrapped from ``state_dict`` and ``module.`` prefixes.

    Args:
        path: A ``.safetensors`` file (always read) or a pickled ``.bin``/``.pt`` (only with ``allow_pickle``).
        allow_pickle: Allow ``torch.load(weights_only=True)`` on a pickled file.
    """
    path = find_weights(path)
    state = read_safetensors(path) if path.suffix == ".safetensors" else read_pickled_state_dict(path, allow_pickle)
    if state and all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def read_open_clip_json(path: str | Path) -> dict[str, Any] | None:
    """The whole ``open_clip_config.json`` beside (or inside) ``path`` (``model_cfg``, ``preprocess_cfg``), if any.

    A file that is a bare model config (no ``model_cfg`` key) is returned wrapped as ``{"model_cfg": ...}``.
    """
    path = Path(path)
    candidate = (path if path.is_dir() else path.parent) / CONFIG_NAME
    if not candidate.is_file():
        return None
    try:
        data = json.loads(read_config_text(candidate))
    except (ValueError, RecursionError) as e:  # ConfigError (too large, not UTF-8) is a ValueError
        raise CheckpointError(f"{candidate}: not valid JSON ({type(e).__name__}: {str(e)[:200]})") from None
    if isinstance(data, dict) and "model_cfg" not in data:
        data = {"model_cfg": data}
    if not isinstance(data, dict) or not isinstance(data["model_cfg"], dict):
        raise CheckpointError(f"{candidate}: expected an object with 'model_cfg'")
    return data


def read_open_clip_config(path: str | Path) -> dict[str, Any] | None:
    """``model_cfg`` of the ``open_clip_config.json`` beside (or inside) ``path``, if there is one."""
    data = read_open_clip_json(path)
    return data["model_cfg"] if data is not None else None


def matching_preset(config: CLIPConfig) -> CLIPConfig | None:
    """The first registered preset with this config's tensor shapes (activation and heads are not shapes)."""
    from clipforge.models.factory import build_config
    from clipforge.models.presets import list_presets

    def shape(c: CLIPConfig) -> dict[str, Any]:
        d = to_dict(replace(c, {"act": "gelu", "vision": {"heads": 1}, "text": {"heads": 1}}))
        for tower in (d["vision"], d["text"]):  # 4.3637 and 6144 / 1408 make the same MLP
            if "mlp_ratio" in tower:
                tower["mlp_ratio"] = int(tower["width"] * tower["mlp_ratio"])
        return d

    target = shape(config)
    for name in list_presets():
        preset = build_config(name)
        if isinstance(preset, CLIPConfig) and shape(preset) == target:
            return preset
    return None


def config_from_state_dict(state: dict[str, torch.Tensor], act: str | None = None,
                           open_clip_cfg: dict[str, Any] | None = None, source: str = "<state dict>") -> CLIPConfig:
    """Infers a clipforge config from open_clip tensors, using ``open_clip_cfg`` (``model_cfg``) when given.

    Args:
        state: OpenAI-layout tensors.
        act: The activation, when the caller knows it (wins over everything else).
        open_clip_cfg: ``model_cfg`` from ``open_clip_config.json``: activation and heads.
        source: Named in errors and warnings.
    """
    cfg = open_clip_cfg or {}
    vision_cfg, text_cfg = cfg.get("vision_cfg", {}), cfg.get("text_cfg", {})
    if not isinstance(vision_cfg, dict) or not isinstance(text_cfg, dict):
        raise CheckpointError(f"{source}: model_cfg.vision_cfg and model_cfg.text_cfg must be objects")
    width, head_width = vision_cfg.get("width"), vision_cfg.get("head_width", 64)
    resnet = "visual.proj" not in state
    vision_heads = None
    if _positive_int(width) and _positive_int(head_width):
        vision_heads = width * 32 // head_width if resnet else width // head_width
    text_heads = text_cfg.get("heads")
    if text_heads is not None and not _positive_int(text_heads):
        raise CheckpointError(f"{source}: model_cfg.text_cfg.heads: expected a positive integer, got "
                              f"{shorten(text_heads)}")
    config = config_from_openai_state_dict(state, act="gelu", source=source, vision_heads=vision_heads or None,
                                           text_heads=text_heads)
    preset = matching_preset(config)
    if preset is not None and not cfg:  # no config file: a known shape also tells the heads (ViT-H/14: 16 of 80)
        config = preset
    if act is None and cfg:  # OpenCLIP builds GELU unless its config says quick_gelu (laion's repos say nothing)
        act = "quick_gelu" if cfg.get("quick_gelu") else "gelu"
    if act is None:
        act = preset.act if preset is not None else "gelu"
        warnings.warn(f"{source}: the activation is not recorded in open_clip checkpoints; guessed {act!r} from the "
                      "model's shape. Pass act= (--act) or put an open_clip_config.json beside the file to be sure.",
                      stacklevel=2)
    return replace(config, {"act": act})


def _positive_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def load_open_clip(path: str | Path, allow_pickle: bool = False,
                   act: str | None = None) -> tuple[CLIPConfig | SigLIPConfig, dict[str, torch.Tensor]]:
    """Reads an open_clip checkpoint (file or hub-style directory) into (config, clipforge state dict).

    A CLIP (OpenAI layout) gives a ``CLIPConfig``; OpenCLIP's SigLIP (a timm image tower under ``visual.trunk.``
    and a ``text.`` tower) a ``SigLIPConfig`` (``open_clip_siglip.py``).

    Args:
        path: ``open_clip_model.safetensors``, ``open_clip_pytorch_model.bin``, a training ``.pt``, or a
            directory holding one of the first two (and perhaps ``open_clip_config.json``).
        allow_pickle: Allow reading pickled files (``torch.load(weights_only=True)``).
        act: The MLP activation (both towers of a SigLIP model); see the module docstrings for what happens
            without it.
    """
    weights = find_weights(path)
    state = read_state_dict(weights, allow_pickle)
    if is_open_clip_siglip(state):  # a CustomTextCLIP with a timm image tower: OpenCLIP's SigLIP
        return load_open_clip_siglip(state, read_open_clip_json(path), act, str(weights), weights.parent)
    cfg = read_open_clip_config(path)
    config = config_from_state_dict(state, act, cfg, str(weights))
    return config, from_openai_keys(state, config, str(weights))


def open_clip_model_cfg(config: CLIPConfig) -> dict[str, Any]:
    """The ``model_cfg`` open_clip would need to build this model (``open_clip.model.CLIP(**model_cfg)``)."""
    v, t = config.vision, config.text
    if isinstance(v, ResNetConfig):
        vision = {"image_size": v.image_size, "layers": list(v.layers), "width": v.width,
                  "head_width": v.width * 32 // v.heads}
    else:
        vision = {"image_size": v.image_size, "patch_size": v.patch_size, "width": v.width, "layers": v.layers,
                  "head_width": v.width // v.heads, "mlp_ratio": v.mlp_ratio}
    text = {"context_length": t.context_length, "vocab_size": t.vocab_size, "width": t.width, "heads": t.heads,
            "layers": t.layers, "mlp_ratio": t.mlp_ratio}
    cfg: dict[str, Any] = {"embed_dim": config.embed_dim, "quick_gelu": config.act == "quick_gelu",
                           "vision_cfg": vision, "text_cfg": text}
    if config.init_logit_bias is not None:
        cfg["init_logit_bias"] = config.init_logit_bias
    return cfg


def to_open_clip_state_dict(model: CLIP | CLIPPO) -> dict[str, torch.Tensor]:
    """The model's weights under open_clip's (OpenAI's) names."""
    config = model.config
    if not isinstance(config, CLIPConfig):
        raise CheckpointError(f"only CLIP models have an open_clip layout; this is a {config.family!r} model")
    if config.act == "gelu_tanh" or config.norm_eps != 1e-5:
        raise CheckpointError(f"open_clip's CLIP uses LayerNorm eps 1e-5 and GELU or QuickGELU; this model has "
                              f"act={config.act!r}, norm_eps={config.norm_eps}")
    return to_openai_keys(model.state_dict(), config)


def save_open_clip(model: CLIP | CLIPPO, path: str | Path) -> Path:
    """Writes the model as open_clip would load it.

    ``path`` ending in ``.safetensors`` or ``.bin``/``.pt``/``.pth`` is written as that one file (safetensors or
    ``torch.save``); any other path becomes a hub-style directory with ``open_clip_model.safetensors`` and
    ``open_clip_config.json`` (architecture, activation, preprocessing).

    Returns:
        The weights file written.
    """
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in to_open_clip_state_dict(model).items()}
    path = Path(path)
    if path.suffix in (".bin", ".pt", ".pth"):
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(state, path)
        return path
    if path.suffix != ".safetensors":
        path.mkdir(parents=True, exist_ok=True)
        config = cast(CLIPConfig, model.config)  # to_open_clip_state_dict has refused every other family
        meta = {"model_cfg": open_clip_model_cfg(config),
                "preprocess_cfg": {"mean": list(config.mean), "std": list(config.std),
                                   "resize_mode": "shortest" if config.image_resize == "shorter_crop" else "squash"}}
        (path / CONFIG_NAME).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        path = path / SAFETENSORS_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata={"format": "pt"})
    return path
