"""OpenCLIP's SigLIP checkpoints (``hf-hub:timm/ViT-*-SigLIP*``: ``open_clip_model.safetensors`` beside
``open_clip_config.json``) → clipforge SigLIP.

OpenCLIP builds these as ``CustomTextCLIP``: a timm ``VisionTransformer`` under ``visual.trunk.`` (``patch_embed.
proj``, ``pos_embed`` (1, N, C), ``blocks.N.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}``, ``norm``,
``attn_pool.{latent, q, kv, proj, norm, mlp.fc1, mlp.fc2}``; with ``timm_proj: linear`` a ``visual.head.proj``) and
open_clip's ``TextTransformer`` under ``text.`` (OpenAI's block names; ``text_projection`` a Linear with bias when
``proj_bias``, absent when ``proj_type: none``), plus ``logit_scale`` and ``logit_bias``.

Where each fact comes from:

- **Shapes** (widths, depths, patch, grid, MLP widths, vocabulary, context): the tensors.
- **Image tower heads and activation**: the timm model ``vision_cfg.timm_model_name`` names, built on the meta
  device when timm is installed (its registered ``model_args``: ``vit_giantopt_*`` sets ``act_layer='gelu_tanh'``,
  every other SigLIP def keeps timm's exact ``nn.GELU``); without timm, the size in the released names
  (``vit_{base,large,so400m,giantopt}_patch*_siglip_*``); else a registered preset of the same shapes.
- **Text tower**: ``text_cfg``: ``heads``, ``no_causal_mask``, ``pool_type``, ``proj_type``, ``norm_kwargs.eps`` and
  the activation (``act_kwargs: {approximate: tanh}`` is tanh-GELU, as in OpenCLIP's SigLIP 2 configs; otherwise
  ``quick_gelu`` or exact GELU: OpenCLIP's SigLIP v1 runs exact GELU in both towers, unlike HF's tanh).
- **Image size**: ``vision_cfg.image_size`` (SO400M/14 at 384 px holds the 27 × 27 patches of 378 px); else
  timm's default size; else a preset's.
- **Preprocessing**: ``preprocess_cfg`` (mean, std, ``resize_mode``); SigLIP's defaults otherwise.
- **Tokenizer**: the vocabulary size (``big_vision_siglip.tokenizer_for_vocab``); a ``spiece.model`` or
  ``tokenizer.model`` beside the weights is named in ``tokenizer.file`` when it is not the style's default name.

A bare weights file without ``open_clip_config.json`` is read as a SigLIP model: bidirectional text pooled at the
last position, heads from a preset of the same shapes (else width // 64), and (announced with a warning) OpenCLIP's
activations: exact GELU, tanh-GELU for a 256k-vocabulary (SigLIP 2) text tower and for a g-opt image tower.
``act=`` sets one activation for both towers and wins over everything else.
"""

from __future__ import annotations

import math
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from clipforge.checkpoints.big_vision_siglip import GEMMA_VOCAB, tokenizer_for_vocab
from clipforge.checkpoints.native import CheckpointError
from clipforge.checkpoints.openai import _block_pairs, _ratio, _rename
from clipforge.config import ConfigError, shorten
from clipforge.models.config import Activation, SigLIPConfig, TextConfig, ViTConfig

TRUNK = "visual.trunk."
ACTIVATIONS = ("quick_gelu", "gelu", "gelu_tanh")
# Heads of the image towers of timm's SigLIP defs, by the size in their names (vision_transformer.py); the g-opt
# one is the only one with tanh-GELU.
TIMM_SIGLIP_SIZES = {"base": (12, "gelu"), "large": (16, "gelu"), "so400m": (16, "gelu"),
                     "giantopt": (16, "gelu_tanh")}
# Text config fields of open_clip's TextTransformer that clipforge's text tower does not implement.
UNSUPPORTED_TEXT = ("embed_cls", "use_pad_mask", "ls_init_value", "qk_norm", "scaled_cosine_attn", "scale_heads",
                    "scale_attn_inner", "scale_attn", "scale_fc", "final_ln_after_pool", "hf_model_name")


def is_open_clip_siglip(state: dict[str, torch.Tensor]) -> bool:
    """Whether open_clip tensors have a timm image tower (OpenCLIP's SigLIP layout, a ``CustomTextCLIP``)."""
    return any(k.startswith(TRUNK) for k in state)


def _get(state: dict[str, torch.Tensor], key: str, ndim: int, source: str) -> torch.Tensor:
    if key not in state:
        raise CheckpointError(f"{source}: missing key {key!r}; not an OpenCLIP SigLIP (timm image tower) checkpoint")
    if state[key].ndim != ndim or 0 in state[key].shape:
        raise CheckpointError(f"{source}: {key} has shape {tuple(state[key].shape)}, expected {ndim} non-empty axes")
    return state[key]


def _count(state: dict[str, torch.Tensor], prefix: str) -> int:
    regex = re.compile(re.escape(prefix) + r"(\d+)\.")
    return len({m.group(1) for k in state if (m := regex.match(k))})


def _act_name(module: torch.nn.Module, where: str) -> Activation:
    """The clipforge name of a timm/torch activation module."""
    kind = type(module).__name__
    if kind == "GELU":
        return "gelu_tanh" if getattr(module, "approximate", "none") == "tanh" else "gelu"
    if kind in ("GELUTanh", "QuickGELU"):
        return "gelu_tanh" if kind == "GELUTanh" else "quick_gelu"
    raise CheckpointError(f"{where}: activation {kind} has no clipforge equivalent (gelu, gelu_tanh, quick_gelu)")


def timm_vision_facts(name: str, source: str) -> dict[str, Any] | None:
    """Heads, activation and image size of timm model ``name`` (its registered def, built on the meta device), or
    ``None`` when timm is not installed or does not know the name; its features clipforge lacks are errors."""
    try:
        import timm
    except ImportError:
        return None
    if not timm.is_model(name):
        return None
    where = f"{source}: timm model {name!r}"
    with torch.device("meta"):
        trunk: Any = timm.create_model(name, pretrained=False, num_classes=0, global_pool="map")
    if type(trunk).__name__ != "VisionTransformer" or trunk.attn_pool is None:
        raise CheckpointError(f"{where} is a {type(trunk).__name__}; clipforge reads timm VisionTransformers pooled by "
                              "a MAP head")
    block = trunk.blocks[0]
    lacking = {"class token": trunk.cls_token is not None, "register tokens": getattr(trunk, "reg_token", None)
               is not None, "pre-norm": type(trunk.norm_pre).__name__ != "Identity",
               "layer scale": type(getattr(block, "ls1", torch.nn.Identity())).__name__ != "Identity",
               "q/k norm": type(getattr(block.attn, "q_norm", torch.nn.Identity())).__name__ != "Identity"}
    if any(lacking.values()):
        raise CheckpointError(f"{where} has {', '.join(k for k, v in lacking.items() if v)}, which clipforge's "
                              "SigLIP image tower does not implement")
    return {"heads": block.attn.num_heads, "act": _act_name(block.mlp.act, where),
            "image_size": trunk.patch_embed.img_size[0]}


# timm's SigLIP defs that set act_layer='gelu_tanh' beside the giant-opt ones (timm 1.0 vision_transformer.py).
TIMM_TANH = ("vit_so400m_patch16_siglip_", "vit_large_patch16_siglip_512", "vit_large_patch16_siglip_gap_512",
             "vit_base_patch32_siglip_256", "vit_base_patch32_siglip_gap_256")


def _named_vision_facts(name: str) -> dict[str, Any] | None:
    match = re.match(r"vit_([a-z0-9]+)_patch\d+_siglip_", name or "")
    if match is None or match.group(1) not in TIMM_SIGLIP_SIZES:
        return None
    heads, act = TIMM_SIGLIP_SIZES[match.group(1)]
    if name.startswith(TIMM_TANH):
        act = "gelu_tanh"
    return {"heads": heads, "act": act}


def _preset_heads(vision: tuple[int, int], text: tuple[int, int]) -> tuple[int | None, int | None]:
    """Heads of the image and text towers of a registered SigLIP preset with these (width, layers)."""
    from clipforge.models.factory import build_config
    from clipforge.models.presets import list_presets

    image_heads = text_heads = None
    for name in list_presets():
        c = build_config(name)
        if isinstance(c, SigLIPConfig):
            image_heads = image_heads or (c.vision.heads if (c.vision.width, c.vision.layers) == vision else None)
            text_heads = text_heads or (c.text.heads if (c.text.width, c.text.layers) == text else None)
    return image_heads, text_heads


def _text_act(text_cfg: dict[str, Any], quick_gelu: bool, source: str) -> Activation:
    act_kwargs = text_cfg.get("act_kwargs") or {}
    if not isinstance(act_kwargs, dict) or set(act_kwargs) - {"approximate"}:
        raise CheckpointError(f"{source}: model_cfg.text_cfg.act_kwargs: expected {{'approximate': 'tanh'|'none'}}, "
                              f"got {shorten(act_kwargs)}")
    if act_kwargs.get("approximate", "none") == "tanh":
        if quick_gelu:
            raise CheckpointError(f"{source}: quick_gelu with act_kwargs.approximate='tanh' has no clipforge match")
        return "gelu_tanh"
    return "quick_gelu" if quick_gelu else "gelu"


def siglip_config(state: dict[str, torch.Tensor], meta: dict[str, Any] | None, act: str | None = None,
                  source: str = "<state dict>", directory: Path | None = None) -> SigLIPConfig:
    """Infers the clipforge SigLIP config of OpenCLIP SigLIP tensors (see the module docstring for each fact).

    Args:
        state: The open_clip tensors.
        meta: The whole ``open_clip_config.json`` (``model_cfg``, ``preprocess_cfg``), or ``None``.
        act: One activation for both towers, when the caller knows it.
        source: Named in errors and warnings.
        directory: Where to look for a SentencePiece model file.
    """
    if act is not None and act not in ACTIVATIONS:
        raise CheckpointError(f"{source}: act={shorten(act)}: expected one of {ACTIVATIONS}")
    meta = meta or {}
    model_cfg = meta.get("model_cfg", meta)
    vision_cfg, text_cfg = model_cfg.get("vision_cfg", {}), model_cfg.get("text_cfg", {})
    preprocess = meta.get("preprocess_cfg", {}) if "model_cfg" in meta else {}
    if not all(isinstance(d, dict) for d in (vision_cfg, text_cfg, preprocess)):
        raise CheckpointError(f"{source}: model_cfg.vision_cfg, model_cfg.text_cfg and preprocess_cfg must be objects")
    for name in UNSUPPORTED_TEXT:
        if text_cfg.get(name):
            raise CheckpointError(f"{source}: model_cfg.text_cfg.{name}={shorten(text_cfg[name])} is an open_clip "
                                  "text-tower feature clipforge does not implement")
    if TRUNK + "cls_token" in state or TRUNK + "reg_token" in state or TRUNK + "attn_pool.latent" not in state:
        raise CheckpointError(f"{source}: only timm ViTs without class or register tokens, pooled by a MAP head "
                              "(timm_pool 'map'), are read; this one differs")
    if vision_cfg.get("timm_proj", "none") not in ("none", "linear") or "visual.head.mlp.fc1.weight" in state:
        raise CheckpointError(f"{source}: model_cfg.vision_cfg.timm_proj={shorten(vision_cfg.get('timm_proj'))}: "
                              "only 'none' and 'linear' are supported")

    width, in_ch, patch, patch_w = _get(state, TRUNK + "patch_embed.proj.weight", 4, source).shape
    n_pos = _get(state, TRUNK + "pos_embed", 3, source).shape[1]
    grid = math.isqrt(n_pos)
    if in_ch != 3 or patch != patch_w or grid * grid != n_pos:
        raise CheckpointError(f"{source}: expected square patches of 3 channels and a square grid; got a patch "
                              f"embedding {(width, in_ch, patch, patch_w)} and {n_pos} positions")
    layers = _count(state, TRUNK + "blocks.")
    hidden = _get(state, TRUNK + "blocks.0.mlp.fc1.weight", 2, source).shape[0]
    vocab, text_width = _get(state, "text.token_embedding.weight", 2, source).shape
    context = _get(state, "text.positional_embedding", 2, source).shape[0]
    text_layers = _count(state, "text.transformer.resblocks.")
    text_hidden = _get(state, "text.transformer.resblocks.0.mlp.c_fc.weight", 2, source).shape[0]

    timm_name = vision_cfg.get("timm_model_name") or ""
    if not isinstance(timm_name, str):
        raise CheckpointError(f"{source}: model_cfg.vision_cfg.timm_model_name: expected a string, got "
                              f"{shorten(timm_name)}")
    for name in ("heads", "eos_id"):
        value = text_cfg.get(name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise CheckpointError(f"{source}: model_cfg.text_cfg.{name}: expected a non-negative integer, got "
                                  f"{shorten(value)}")
    facts = (timm_vision_facts(timm_name, source) if timm_name else None) or _named_vision_facts(timm_name) or {}
    preset_heads = _preset_heads((width, layers), (text_width, text_layers))
    guessed = []
    image_heads = facts.get("heads") or preset_heads[0]
    if image_heads is None:
        image_heads = max(1, width // 64)
        guessed.append(f"{image_heads} image heads")
    text_heads = text_cfg.get("heads") or preset_heads[1]
    if text_heads is None:
        text_heads = max(1, text_width // 64)
        guessed.append(f"{text_heads} text heads")

    image_size = next((s for s in (vision_cfg.get("image_size"), facts.get("image_size"))
                       if isinstance(s, int) and not isinstance(s, bool) and s // patch == grid), grid * patch)
    if act is not None:
        image_act = text_act = act
    else:
        image_act = facts.get("act") or ("gelu_tanh" if (width, layers) == (1536, 40) else "gelu")
        if text_cfg:
            text_act = _text_act(text_cfg, bool(model_cfg.get("quick_gelu")), source)
        else:
            text_act = "gelu_tanh" if vocab == GEMMA_VOCAB else "gelu"
        if "act" not in facts or not text_cfg:
            guessed.append(f"image act {image_act!r}, text act {text_act!r}")
    if guessed:
        warnings.warn(f"{source}: {'; '.join(guessed)} guessed (no open_clip_config.json, or a timm model clipforge "
                      "cannot look up). Pass act= or keep the open_clip_config.json beside the weights to be sure.",
                      stacklevel=3)

    eps = (text_cfg.get("norm_kwargs") or {}).get("eps", 1e-5 if text_cfg else 1e-6)
    if eps != 1e-6:  # timm's ViT uses 1e-6; clipforge has one eps for both towers
        raise CheckpointError(f"{source}: model_cfg.text_cfg.norm_kwargs.eps={shorten(eps)}; the timm image tower "
                              "uses 1e-6 and clipforge's SigLIP one LayerNorm eps for both towers")
    pool = text_cfg.get("pool_type", "argmax" if text_cfg else "last")
    if pool not in ("last", "argmax", "eos"):
        raise CheckpointError(f"{source}: model_cfg.text_cfg.pool_type={shorten(pool)}: clipforge pools text at the "
                              "last position ('last'), the highest id ('argmax') or the end-of-text id ('eos')")
    projected = "visual.head.proj.weight" in state
    embed_dim = state["visual.head.proj.weight"].shape[0] if projected else width
    try:
        vision = ViTConfig(image_size=image_size, patch_size=patch, width=width, layers=layers, heads=image_heads,
                           mlp_ratio=_ratio(hidden, width), pool="map", class_token=False, ln_pre=False,
                           patch_bias=TRUNK + "patch_embed.proj.bias" in state, proj=projected,
                           proj_bias="visual.head.proj.bias" in state,
                           act=image_act if image_act != text_act else None)  # type: ignore[arg-type]
        text = TextConfig(vocab_size=vocab, context_length=context, width=text_width, layers=text_layers,
                          heads=text_heads, mlp_ratio=_ratio(text_hidden, text_width),
                          eot_token_id=text_cfg.get("eos_id", 2) if pool == "eos" else None,
                          causal=bool(text_cfg) and not text_cfg.get("no_causal_mask", False),
                          pool="last" if pool == "last" else "eot", proj_bias="text.text_projection.bias" in state)
        bias = state.get("logit_bias")
        return SigLIPConfig(embed_dim=embed_dim, vision=vision, text=text, act=text_act,  # type: ignore[arg-type]
                            tokenizer=_tokenizer(vocab, directory), norm_eps=1e-6,
                            init_logit_bias=float(bias) if bias is not None else None,
                            **_preprocessing(preprocess, source))
    except (ConfigError, TypeError, ValueError) as e:
        raise CheckpointError(f"{source}: the tensors and open_clip_config.json describe no valid SigLIP model "
                              f"({e})") from None


def _preprocessing(preprocess: dict[str, Any], source: str) -> dict[str, Any]:
    """``SigLIPConfig`` fields from ``preprocess_cfg`` (mean, std, resize mode); SigLIP's defaults where absent."""
    out: dict[str, Any] = {}
    for name in ("mean", "std"):
        if name in preprocess:
            value = preprocess[name]
            if (not isinstance(value, list) or len(value) != 3
                    or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in value)):
                raise CheckpointError(f"{source}: preprocess_cfg.{name}: expected three numbers, got {shorten(value)}")
            out[name] = tuple(float(x) for x in value)
    modes = {"squash": "squash", "shortest": "shorter_crop"}
    if "resize_mode" in preprocess:
        if preprocess["resize_mode"] not in modes:
            raise CheckpointError(f"{source}: preprocess_cfg.resize_mode: expected one of {list(modes)}, got "
                                  f"{shorten(preprocess['resize_mode'])}")
        out["image_resize"] = modes[preprocess["resize_mode"]]
    return out


def _tokenizer(vocab: int, directory: Path | None) -> dict[str, Any]:
    tokenizer = tokenizer_for_vocab(vocab)
    if tokenizer["kind"] == "sentencepiece" and directory is not None:
        default = "tokenizer.model" if tokenizer["style"] == "gemma" else "spiece.model"
        if not (directory / default).is_file():
            found = next((n for n in ("spiece.model", "tokenizer.model") if (directory / n).is_file()), None)
            if found is not None:
                tokenizer["file"] = found
    return tokenizer


def key_pairs(config: SigLIPConfig) -> list[tuple[str, str]]:
    """Every (open_clip key, clipforge key) pair whose tensor keeps its shape; the rest is in ``siglip_state``."""
    v, t = config.vision, config.text
    pairs = [(TRUNK + "patch_embed.proj.weight", "visual.patch_embed.weight"),
             (TRUNK + "norm.weight", "visual.ln_post.weight"), (TRUNK + "norm.bias", "visual.ln_post.bias"),
             (TRUNK + "attn_pool.latent", "visual.attn_pool.probe")]
    if v.patch_bias:
        pairs.append((TRUNK + "patch_embed.proj.bias", "visual.patch_embed.bias"))
    if v.proj_bias:
        pairs.append(("visual.head.proj.bias", "visual.proj_bias"))
    timm_names = (("norm1", "ln_1"), ("attn.qkv", "attn.qkv"), ("attn.proj", "attn.out_proj"), ("norm2", "ln_2"),
                  ("mlp.fc1", "mlp.fc"), ("mlp.fc2", "mlp.proj"))
    for i in range(v.layers):
        for src, dst in timm_names:
            pairs += [(f"{TRUNK}blocks.{i}.{src}.{n}", f"visual.transformer.blocks.{i}.{dst}.{n}")
                      for n in ("weight", "bias")]
    for src, dst in (("q", "q"), ("kv", "kv"), ("proj", "out_proj"), ("norm", "norm"), ("mlp.fc1", "mlp.fc"),
                     ("mlp.fc2", "mlp.proj")):
        pairs += [(f"{TRUNK}attn_pool.{src}.{n}", f"visual.attn_pool.{dst}.{n}") for n in ("weight", "bias")]
    pairs += [("text.token_embedding.weight", "text.token_embed.weight"),
              ("text.positional_embedding", "text.pos_embed"),
              ("text.ln_final.weight", "text.ln_final.weight"), ("text.ln_final.bias", "text.ln_final.bias"),
              ("logit_scale", "logit_scale")]
    if t.proj_bias:
        pairs.append(("text.text_projection.bias", "text.proj_bias"))
    for i in range(t.layers):
        pairs += _block_pairs(f"text.transformer.resblocks.{i}.", f"text.transformer.blocks.{i}.")
    if config.init_logit_bias is not None:
        pairs.append(("logit_bias", "logit_bias"))
    return pairs


def siglip_state(state: dict[str, torch.Tensor], config: SigLIPConfig, source: str) -> dict[str, torch.Tensor]:
    """OpenCLIP SigLIP tensors → clipforge's SigLIP state dict; a missing or left-over key is an error naming it."""
    state = dict(state)
    for name in ("logit_scale", "logit_bias"):  # (1,) in a model built with nonscalar_logit_scale
        if name in state and state[name].numel() == 1:
            state[name] = state[name].reshape(())
    out: dict[str, torch.Tensor] = {"visual.pos_embed": state.pop(TRUNK + "pos_embed")[0]}  # (1, N, C) → (N, C)
    if config.vision.proj:
        out["visual.proj"] = state.pop("visual.head.proj.weight").T  # Linear (out, in) → (in, out)
    if "text.text_projection.weight" in state:  # a Linear (proj_bias)
        out["text.proj"] = state.pop("text.text_projection.weight").T
    elif "text.text_projection" in state:  # a Parameter (width, embed_dim)
        out["text.proj"] = state.pop("text.text_projection")
    else:  # proj_type 'none': the pooled features are the embedding
        out["text.proj"] = torch.eye(config.text.width)
    ignore = ("text.attn_mask",)  # a causal tower's buffer in older files
    return out | _rename(state, key_pairs(config), source, ignore=ignore)


def load_open_clip_siglip(state: dict[str, torch.Tensor], meta: dict[str, Any] | None, act: str | None,
                          source: str, directory: Path | None) -> tuple[SigLIPConfig, dict[str, torch.Tensor]]:
    """(config, clipforge state dict) of an OpenCLIP SigLIP checkpoint's tensors and ``open_clip_config.json``."""
    config = siglip_config(state, meta, act, source, directory)
    return config, siglip_state(state, config, source)
