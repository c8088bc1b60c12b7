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


def param_groups(model: nn.Module, weight_decay: float, logit_scale_lr_mult: float = 1.0) -> list[dict]:
    """Trainable parameters split into a decayed group and a ``weight_decay=0`` group.

    Parameters with ``requires_grad=False`` (a locked tower) are left out. With ``logit_scale_lr_mult`` other
    than 1, the logit scale (and SigLIP's bias) form a third group whose ``lr_mult`` scales the schedule's
    rate (``set_lr``).
    """
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


def build_optimizer(model: nn.Module, lr: float, weight_decay: float, betas: tuple[float, float],
                    eps: float, device: torch.device, logit_scale_lr_mult: float = 1.0) -> torch.optim.AdamW:
    """AdamW over ``param_groups(model)``, with the fused kernel on CUDA and on the CPU (one kernel over all
    tensors instead of a loop over them; for a tiny model the 49,408-row token table dominates the update)."""
    return torch.optim.AdamW(param_groups(model, weight_decay, logit_scale_lr_mult), lr=lr, betas=betas, eps=eps,
                             fused=device.type in ("cuda", "cpu"))


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
