"""big_vision SigLIP checkpoints (a ``two_towers`` model's ``.npz``) ↔ clipforge SigLIP.

The layout, as ``big_vision/models/proj/image_text/two_towers.py`` names it with ``image_model="vit"`` and
``text_model="proj.image_text.text_transformer"`` (under ``params/`` in a training checkpoint):

- ``img/``: the ViT of ``big_vision/models/vit.py`` with ``pool_type="map"``: ``embedding`` (HWIO), ``pos_embedding``
  (1, patches, width), ``Transformer/encoderblock_N/{LayerNorm_0, MultiHeadDotProductAttention_0, LayerNorm_1,
  MlpBlock_0}``, ``Transformer/encoder_norm``, ``MAPHead_0/{probe, MultiHeadDotProductAttention_0, LayerNorm_0,
  MlpBlock_0}`` (read by ``big_vision.py``). The released models have no ``img/head`` (``out_dim=(None, D)``): the
  MAP head's output is the embedding. A file with an ``img/head`` gets it as the image projection.
- ``txt/``: ``Embed_0/embedding`` (vocabulary, width), ``pos_embedding`` (1, context, width), ``Encoder_0/
  encoderblock_N`` (the ViT's blocks), ``Encoder_0/encoder_norm`` and ``head`` (width → D, with bias). The text is
  bidirectional and pooled at the last position (``pool_type="last"``: big_vision pads with end-of-text tokens).
- ``t``: the log temperature, ``b``: the logit bias, each of shape (1,).

Fixed by big_vision rather than stored: tanh-GELU (flax's ``nn.gelu``) and LayerNorm eps 1e-6 in both towers; a
model exported here must have them. The heads come from the attention kernels' shapes. Not in the arrays and so
chosen here: the image size where the patch does not divide it (So400m/14 at 384 px has the 27 × 27 patches of
378 px) is the size of a registered SigLIP preset with these shapes; the tokenizer follows the vocabulary size
(``tokenizer_for_vocab``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from clipforge.checkpoints.big_vision import (
    BigVisionFormatError,
    _ratio,
    _tensor,
    check_exportable_vit,
    encoder_from_arrays,
    encoder_shape,
    encoder_to_arrays,
    numpy_getter,
    vit_fields_from_arrays,
    vit_state_from_arrays,
    vit_to_arrays,
)
from clipforge.config import ConfigError
from clipforge.models.config import SigLIPConfig, TextConfig, ViTConfig

GEMMA_VOCAB = 256_000  # SigLIP 2's Gemma tokenizer
OPENAI_BPE_VOCAB = 49_408  # clipforge's siglip-tiny trains with OpenAI's BPE


def tokenizer_for_vocab(vocab_size: int) -> dict[str, Any]:
    """The text processor a SigLIP model with this vocabulary was released with.

    256,000 is Gemma's SentencePiece (SigLIP 2, ``style: gemma``); 49,408 is OpenAI's BPE (how clipforge trains a
    SigLIP from scratch); anything else, SigLIP's own SentencePiece (32,000 English, 250,000 multilingual).
    """
    if vocab_size == OPENAI_BPE_VOCAB:
        return {"kind": "bpe"}
    return {"kind": "sentencepiece", "style": "gemma" if vocab_size == GEMMA_VOCAB else "siglip"}


def released_image_size(patch: int, width: int, layers: int, grid: int) -> int:
    """The image size of a registered SigLIP preset with this ViT's shapes, else ``grid * patch``."""
    from clipforge.models.factory import build_config
    from clipforge.models.presets import list_presets

    for name in list_presets():
        preset = build_config(name)
        if isinstance(preset, SigLIPConfig):
            v = preset.vision
            if (v.patch_size, v.width, v.layers, v.grid_size) == (patch, width, layers, grid):
                return v.image_size
    return grid * patch


def siglip_config_from_arrays(arrays: dict[str, np.ndarray], p: str, path: str | Path) -> SigLIPConfig:
    """Infers the SigLIP config from the shapes of a two-towers checkpoint whose image tower is under ``p``."""
    root = p.removesuffix("img/")
    txt = root + "txt/"

    def get(key: str, ndim: int) -> np.ndarray:
        if key not in arrays:
            raise BigVisionFormatError(f"{path}: missing {key!r}")
        if arrays[key].ndim != ndim or 0 in arrays[key].shape:
            raise BigVisionFormatError(f"{path}: {key} has shape {arrays[key].shape}, expected {ndim} non-empty axes")
        return arrays[key]

    fields, image_out = vit_fields_from_arrays(arrays, p, path, head_required=False)
    grid = fields["image_size"] // fields["patch_size"]
    fields["image_size"] = released_image_size(fields["patch_size"], fields["width"], fields["layers"], grid)
    vocab, width = get(txt + "Embed_0/embedding", 2).shape
    context = get(txt + "pos_embedding", 3).shape[1]
    layers, heads, mlp = encoder_shape(arrays, txt + "Encoder_0/", path)
    if txt + "MAPHead_0/probe" in arrays:
        raise BigVisionFormatError(f"{path}: a text tower pooled by a MAP head ({txt}MAPHead_0) is not supported; "
                                   "clipforge's SigLIP text tower is pooled at the last position")
    text_out = get(txt + "head/kernel", 2).shape[1] if txt + "head/kernel" in arrays else None
    embed_dim = image_out or fields["width"]
    if (text_out or width) != embed_dim:
        raise BigVisionFormatError(f"{path}: the text tower gives {text_out or width} features "
                                   f"({txt}head/kernel), the image tower {embed_dim}")
    bias = arrays.get(root + "b")
    if bias is not None and bias.size != 1:
        raise BigVisionFormatError(f"{path}: {root}b has shape {bias.shape}, expected one value")
    try:
        text = TextConfig(vocab_size=vocab, context_length=context, width=width, layers=layers, heads=heads,
                          mlp_ratio=_ratio(mlp, width), causal=False, pool="last", proj_bias=text_out is not None)
        return SigLIPConfig(embed_dim=embed_dim, vision=ViTConfig(**fields), text=text,
                            tokenizer=tokenizer_for_vocab(vocab),
                            init_logit_bias=float(bias.reshape(-1)[0]) if bias is not None else None)
    except ConfigError as e:  # shapes that no model has, e.g. a width the head count does not divide
        raise BigVisionFormatError(f"{path}: the tensor shapes describe no valid SigLIP model ({e})") from None


def siglip_state_from_arrays(arrays: dict[str, np.ndarray], p: str, config: SigLIPConfig) -> dict[str, torch.Tensor]:
    """Maps a two-towers checkpoint's arrays to clipforge's SigLIP state dict (shapes follow ``config``)."""
    root, tc = p.removesuffix("img/"), config.text
    txt = root + "txt/"
    sd = vit_state_from_arrays(arrays, p, config.vision)
    pos = arrays[txt + "pos_embedding"]
    if txt + "Encoder_0/pos_embedding" in arrays:  # older checkpoints added a second one (text_transformer.load)
        pos = pos + arrays[txt + "Encoder_0/pos_embedding"]
    sd["text.token_embed.weight"] = _tensor(arrays[txt + "Embed_0/embedding"])
    sd["text.pos_embed"] = _tensor(pos.reshape(tc.context_length, tc.width))
    sd |= encoder_from_arrays(arrays, txt + "Encoder_0/", "text.transformer.", tc.layers)
    sd["text.ln_final.weight"] = _tensor(arrays[txt + "Encoder_0/encoder_norm/scale"])
    sd["text.ln_final.bias"] = _tensor(arrays[txt + "Encoder_0/encoder_norm/bias"])
    if tc.proj_bias:
        sd["text.proj"] = _tensor(arrays[txt + "head/kernel"])
        sd["text.proj_bias"] = _tensor(arrays[txt + "head/bias"])
    else:  # no text head: the pooled features are the embedding
        sd["text.proj"] = torch.eye(tc.width)
    sd["logit_scale"] = _tensor(arrays[root + "t"].reshape(()))
    if config.init_logit_bias is not None:
        sd["logit_bias"] = _tensor(arrays[root + "b"].reshape(()))
    return sd


def check_exportable(config: SigLIPConfig) -> ViTConfig:
    """The image tower of a SigLIP model big_vision's two-towers layout can hold, or a ``ValueError`` saying why not."""
    vision = check_exportable_vit(config.vision, "SigLIP")
    acts = {"image": vision.act or config.act, "text": config.text.act or config.act}
    wrong = {tower: act for tower, act in acts.items() if act != "gelu_tanh"}
    if wrong or config.norm_eps != 1e-6:
        raise ValueError("big_vision's towers use tanh-GELU and LayerNorm eps 1e-6; this model has "
                         f"{', '.join(f'{t} act={a!r}' for t, a in acts.items())}, norm_eps={config.norm_eps} "
                         "(an OpenCLIP SigLIP, with exact GELU, cannot be written as big_vision without changing "
                         "its outputs)")
    if config.text.causal or config.text.pool != "last":
        raise ValueError("big_vision's SigLIP text tower is bidirectional and pooled at the last position; this "
                         f"model has text.causal={config.text.causal}, text.pool={config.text.pool!r}")
    return vision


def siglip_to_big_vision_arrays(state_dict: dict[str, torch.Tensor], config: SigLIPConfig,
                                prefix: str = "params/") -> dict[str, np.ndarray]:
    """The inverse of ``siglip_state_from_arrays``: clipforge SigLIP weights → a two-towers parameter tree.

    The text head is always written (with zero bias when the model has none), as are ``t`` and ``b`` with
    big_vision's shape (1,).
    """
    vision, tc = check_exportable(config), config.text
    n = numpy_getter(state_dict)
    txt = prefix + "txt/"
    out = vit_to_arrays(n, vision, prefix + "img/")
    out[txt + "Embed_0/embedding"] = n("text.token_embed.weight")
    out[txt + "pos_embedding"] = n("text.pos_embed")[None]
    out |= encoder_to_arrays(n, "text.transformer.", txt + "Encoder_0/", tc.layers, tc.width, tc.heads)
    out[txt + "Encoder_0/encoder_norm/scale"] = n("text.ln_final.weight")
    out[txt + "Encoder_0/encoder_norm/bias"] = n("text.ln_final.bias")
    out[txt + "head/kernel"] = n("text.proj")
    out[txt + "head/bias"] = n("text.proj_bias") if tc.proj_bias else np.zeros(config.embed_dim, np.float32)
    out[prefix + "t"] = n("logit_scale").reshape(1)
    if "logit_bias" in state_dict:
        out[prefix + "b"] = n("logit_bias").reshape(1)
    return out
