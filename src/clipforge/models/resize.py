"""Changing what a trained model takes in: the image size (its position grid resized) and the text context (its
position embeddings stretched), with the model's config updated so that a saved model describes itself.

Both work in place on a loaded model and return it; every weight but the position embeddings is untouched, so at the
original size with the original positions the model computes exactly what it did.

- ``resize_image_size``: the learned position grid of a ViT (or of a ResNet's attention pool) is resized bicubically
  with antialiasing, prefix tokens (the class token's position; the ResNet pool's mean token) kept, as timm's
  ``resample_abs_pos_embed`` and OpenCLIP's ``resize_pos_embed`` do (FixRes, Touvron et al. 2019: fine-tune at the
  new size to recover what the change costs).
- ``resize_context``: Long-CLIP's knowledge-preserving stretch (Zhang et al. 2024, section 3.1): the first ``keep``
  positions (20), which CLIP trained well, are kept; the remaining ones are interpolated linearly to fill the new
  length (77 → 248: the 57 others stretched 4×).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from clipforge.config import replace
from clipforge.models.config import ResNetConfig, ViTConfig

if TYPE_CHECKING:
    from clipforge.models.clip import CLIP
    from clipforge.models.clippo import CLIPPO


def resize_grid(pos_embed: torch.Tensor, prefix: int, old_grid: int, new_grid: int) -> torch.Tensor:
    """Positions (prefix + old_grid², C) → (prefix + new_grid², C): the square grid resized bicubically with
    antialiasing (``align_corners=False``) in float32, the ``prefix`` leading rows kept (timm's
    ``resample_abs_pos_embed``)."""
    if pos_embed.shape[0] != prefix + old_grid**2:
        raise ValueError(f"positions ({pos_embed.shape[0]}) are not {prefix} prefix token(s) and a "
                         f"{old_grid} × {old_grid} grid")
    if new_grid == old_grid:
        return pos_embed.detach().clone()
    head, grid = pos_embed[:prefix], pos_embed[prefix:]
    C = grid.shape[-1]
    grid = grid.float().reshape(1, old_grid, old_grid, C).permute(0, 3, 1, 2)  # (1, C, G, G)
    grid = F.interpolate(grid, size=(new_grid, new_grid), mode="bicubic", align_corners=False, antialias=True)
    grid = grid.permute(0, 2, 3, 1).reshape(new_grid**2, C).to(pos_embed.dtype)  # (G'², C)
    return torch.cat([head.detach(), grid], dim=0)


def _replace_parameter(owner: nn.Module, name: str, value: torch.Tensor) -> None:
    old = getattr(owner, name)
    setattr(owner, name, nn.Parameter(value.to(device=old.device, dtype=old.dtype), requires_grad=old.requires_grad))


def resize_image_size(model: CLIP | CLIPPO, image_size: int) -> CLIP | CLIPPO:
    """Makes ``model`` take images of ``image_size`` pixels: its position grid resized, its config updated.

    A ViT's grid of ``image_size / patch_size`` positions per side is resized (the class token's position kept;
    SigLIP's MAP-pooled towers have no class token, so the whole table is the grid); a ResNet's attention-pool grid
    (``image_size / 32`` per side, after the mean token's position) likewise. A CLIPPO model's renderer draws text
    at the new size too (``render.image_size`` follows), which changes its text input: fine-tune after.

    Args:
        model: A CLIP, SigLIP or CLIPPO model; changed in place.
        image_size: The new input side in pixels: a whole number of patches (ViT) or a multiple of 32 (ResNet).

    Returns:
        ``model``.

    Raises:
        ValueError: ``image_size`` is not a whole number of patches (naming the patch size and the nearest
            sizes that are), or the tower is NaFlex (its positions are resized per image already).
    """
    vision = model.config.vision
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a whole number of pixels ≥ 1, got {image_size!r}")
    if isinstance(vision, ViTConfig):
        if vision.naflex:
            raise ValueError("a NaFlex image tower resizes its positions to each image's patch grid already: change "
                             "vision.max_num_patches (the patch budget) instead of image_size")
        step, prefix, tower = vision.patch_size, int(vision.class_token), cast(nn.Module, model.visual)
        what = f"a whole number of {step}-px patches (patch_size={step})"
    elif isinstance(vision, ResNetConfig):
        step, prefix, tower = 32, 1, cast(nn.Module, model.visual.attn_pool)  # its first token: the mean feature
        what = "a multiple of 32 (a ResNet's overall stride)"
    else:  # pragma: no cover - ModelConfig allows nothing else
        raise ValueError(f"cannot resize a {type(vision).__name__} image tower")
    if image_size % step or image_size < step:
        below, above = max(step, image_size // step * step), (image_size // step + 1) * step
        raise ValueError(f"image_size={image_size} is not {what}: try {below} or {above}")
    pos_embed = cast(torch.Tensor, tower.pos_embed)
    old_grid = math.isqrt(pos_embed.shape[0] - prefix)  # the stored grid (a remainder of pixels may be cut off)
    _replace_parameter(tower, "pos_embed", resize_grid(pos_embed, prefix, old_grid, image_size // step))
    changes: dict[str, Any] = {"vision": {"image_size": image_size}}
    if "image_size" in getattr(model.config, "render", {}):
        changes["render"] = {"image_size": image_size}
    model.config = replace(model.config, changes)
    cast(Any, model.visual).config = model.config.vision
    return model


def stretch_positions(pos_embed: torch.Tensor, context_length: int, keep: int = 20, align_end: bool = False
                      ) -> torch.Tensor:
    """Text positions (T, C) → (context_length, C): the first ``keep`` rows kept, the others stretched linearly.

    New row ``keep + j`` reads old position ``keep + j / r``, ``r = (context_length − keep) / (T − keep)``, linearly
    between its two neighbours; the last ``r − 1`` rows lie past the old last position and extend the last step
    (Long-CLIP's ``4*length - 3*keep_len - k`` rows). With ``align_end`` the new last row reads the old last
    position exactly instead (``r = (context_length − 1 − keep) / (T − 1 − keep)``), for a tower that pools there.
    Computed in float32.
    """
    T = pos_embed.shape[0]
    if context_length == T:
        return pos_embed.detach().clone()
    old = pos_embed.detach().float()
    j = torch.arange(context_length - keep, dtype=torch.float64)
    if align_end:
        t = keep + j * (T - 1 - keep) / max(context_length - 1 - keep, 1)
    else:
        t = keep + j * (T - keep) / (context_length - keep)
    i0 = t.floor().long().clamp(keep, T - 2)  # (N,): the left neighbour; past the end, the last pair extrapolates
    w = (t - i0).float()[:, None]  # (N, 1)
    tail = old[i0] + w * (old[i0 + 1] - old[i0])  # (N, C)
    return torch.cat([old[:keep], tail], dim=0).to(pos_embed.dtype)


def resize_context(model: CLIP | CLIPPO, context_length: int, keep: int = 20) -> CLIP | CLIPPO:
    """Lets ``model``'s text tower read ``context_length`` tokens (Long-CLIP's knowledge-preserving stretch).

    The first ``keep`` position embeddings stay as trained; the rest are interpolated linearly to fill the new
    length (``stretch_positions``). The config's ``text.context_length`` follows, so the tokenizer built from it
    (``clipforge.get_text_processor``) pads to the new length and the causal attention covers it (it is built per
    call from the input's length).

    CLIP's causal tower reads its features at the end-of-text token and no position sees a later one, so a caption
    of at most ``keep`` tokens (start and end included) gets exactly the features it had. SigLIP's bidirectional
    tower is different: every text is padded to the full context, every token attends to all the padding, and the
    features are read at the last position, which is padding. So no caption keeps its features: more pad tokens are
    attended after the change, whatever the positions. Here the last position keeps its trained embedding exactly
    (the stretch is aligned at both ends), but the model needs fine-tuning at the new length before use.

    Args:
        model: A CLIP or SigLIP model; changed in place.
        context_length: Tokens per text after the change, start and end included; at least the current one.
        keep: Leading positions kept as trained (Long-CLIP: 20).

    Returns:
        ``model``.

    Raises:
        ValueError: The model has no text tower (CLIPPO renders text as images: its "context" is the image size),
            ``context_length`` is shorter than the model's, or ``keep`` is not below both lengths.
    """
    text: Any = getattr(model, "text", None)
    if text is None or not hasattr(text, "pos_embed"):
        raise ValueError(f"a {model.config.family} model has no text tower with position embeddings: CLIPPO renders "
                         "text as images (change render settings or the image size instead)")
    old = text.config.context_length
    if isinstance(context_length, bool) or not isinstance(context_length, int) or context_length < old:
        raise ValueError(f"context_length={context_length!r}: expected a whole number ≥ the model's {old} (shortening "
                         "a trained context is not a stretch)")
    if isinstance(keep, bool) or not isinstance(keep, int) or not 0 <= keep < old - 1:
        raise ValueError(f"keep={keep!r}: expected a whole number in 0..{old - 2} (leading positions kept of the "
                         f"model's {old}; at least two others are needed to interpolate between)")
    align_end = text.config.pool == "last"
    _replace_parameter(text, "pos_embed", stretch_positions(text.pos_embed, context_length, keep, align_end))
    model.config = replace(model.config, {"text": {"context_length": context_length}})
    text.config = cast(Any, model.config).text
    return model
