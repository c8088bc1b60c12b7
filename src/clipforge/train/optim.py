"""AdamW with weight decay on weight matrices only, and the warm-up + cosine learning-rate schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

# Bare parameters (not owned by a Linear/Conv) that are embeddings, queries or tokens, not weight matrices.
_EMBEDDING_NAMES = ("pos_embed", "class_token", "probe", "token_embed")
_MATRIX_MODULES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def decays(module: nn.Module, name: str, param: torch.Tensor) -> bool:
    """Whether ``param`` (attribute ``name`` of ``module``) gets weight decay.

    Only weight matrices do (ndim ≥ 2): Linear/Conv weights and bare projection matrices. Gains,
    biases, token and positional embeddings, class tokens, attention-pool probes and the logit
    scale/bias do not.
    """
    if param.ndim < 2 or isinstance(module, nn.Embedding):
        return False
    if isinstance(module, _MATRIX_MODULES):
        return name == "weight"
    return not (name in _EMBEDDING_NAMES or "embed" in name or "token" in name)


_TEMPERATURE_NAMES = ("logit_scale", "logit_bias")


def param_groups(model: nn.Module, weight_decay: float, logit_scale_lr_mult: float = 1.0,
                 layer_decay: dict[str, float] | None = None) -> list[dict]:
    """Trainable parameters split into a decayed group and a ``weight_decay=0`` group.

    Parameters with ``requires_grad=False`` (a locked tower) are left out. With ``logit_scale_lr_mult`` other
    than 1, the logit scale (and SigLIP's bias) form a third group whose ``lr_mult`` scales the schedule's
    rate (``set_lr``).

    ``layer_decay`` (``{"image": d, "text": d}``) other than 1 splits each tower by layer
    (``clipforge.train.layer_groups``): layer ``i`` of a tower with ``L`` blocks gets ``lr_mult = d ** (L + 1 − i)``,
    so the head (final norm, pooling head, projection) keeps the schedule's rate, the last block gets ``d`` times it
    and the embeddings ``d ** (L + 1)`` (timm's ``param_groups_layer_decay``). Each (tower, layer) forms a decayed
    and a ``weight_decay=0`` group under the same rules (``decays``); the logit scale keeps its own multiple.
    With every decay 1 (the default) the groups are the two or three above, as before.
    """
    decays_by_tower = {k: v for k, v in (layer_decay or {}).items() if v != 1.0}
    if decays_by_tower:
        return _layer_decay_groups(model, weight_decay, logit_scale_lr_mult, decays_by_tower)
    decay, no_decay, temperature = [], [], []
    separate = logit_scale_lr_mult != 1.0
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            if separate and name in _TEMPERATURE_NAMES:
                temperature.append(param)
            else:
                (decay if decays(module, name, param) else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if temperature:
        groups.append({"params": temperature, "weight_decay": 0.0, "lr_mult": logit_scale_lr_mult})
    return groups


def _layer_decay_groups(model: nn.Module, weight_decay: float, logit_scale_lr_mult: float,
                        layer_decay: dict[str, float]) -> list[dict]:
    """``param_groups`` with layer-wise decay: one decayed and one undecayed group per (tower, layer)."""
    from clipforge.train.layer_groups import layer_lr_mult, layer_map

    layers = layer_map(model)
    names = {id(p): n for n, p in model.named_parameters()}
    groups: dict[tuple[int, int, bool, bool], dict] = {}
    tower_order = {"image": 0, "text": 1, None: 2}
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            layer = layers[names[id(param)]]
            mult = layer_lr_mult(layer, layer_decay.get(layer.tower or "", 1.0))
            temperature = name in _TEMPERATURE_NAMES and layer.tower is None
            if temperature:
                mult *= logit_scale_lr_mult
            wd = decays(module, name, param)
            key = (tower_order[layer.tower], layer.index, not wd, temperature)
            group = groups.setdefault(key, {"params": [], "weight_decay": weight_decay if wd else 0.0,
                                            "lr_mult": mult})
            group["params"].append(param)
    return [groups[k] for k in sorted(groups)]


def build_optimizer(model: nn.Module, lr: float, weight_decay: float, betas: tuple[float, float],
                    eps: float, device: torch.device, logit_scale_lr_mult: float = 1.0,
                    layer_decay: dict[str, float] | None = None) -> torch.optim.AdamW:
    """AdamW over ``param_groups(model)``, with the fused kernel on CUDA and on the CPU (one kernel over all
    tensors instead of a loop over them; for a tiny model the 49,408-row token table dominates the update)."""
    groups = param_groups(model, weight_decay, logit_scale_lr_mult, layer_decay)
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=device.type in ("cuda", "cpu"))


def lr_at(step: int, base_lr: float, warmup_steps: int, total_steps: int, min_lr: float = 0.0) -> float:
    """Linear warm-up to ``base_lr`` over ``warmup_steps``, then cosine decay to ``min_lr`` at ``total_steps``.

    ``step`` counts optimiser steps from 0; the first step already uses ``base_lr / warmup_steps``.
    The schedule is a pure function of the step, so resuming needs nothing but the step.
    """
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Sets every group's learning rate (times the group's ``lr_mult``, if it has one)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_mult", 1.0)
