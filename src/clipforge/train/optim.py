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
                    layer_decay: dict[str, float] | None = None, lazy_embedding: bool = False) -> torch.optim.AdamW:
    """AdamW over ``param_groups(model)``, with the fused kernel on CUDA and on the CPU (one kernel over all
    tensors instead of a loop over them; for a tiny model the 49,408-row token table dominates the update).

    With ``lazy_embedding`` the model's ``nn.Embedding`` tables produce sparse gradients (``sparse_embeddings``) and
    the optimiser is :class:`LazyAdamW`, which updates only the rows a step's batch used.
    """
    groups = param_groups(model, weight_decay, logit_scale_lr_mult, layer_decay)
    fused = device.type in ("cuda", "cpu")
    if lazy_embedding:
        sparse_embeddings(model)
        return LazyAdamW(groups, lr=lr, betas=betas, eps=eps, fused=fused)
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=fused)


def sparse_embeddings(model: nn.Module) -> list[nn.Parameter]:
    """Makes every trainable ``nn.Embedding`` of ``model`` produce a sparse (row) gradient; returns their weights."""
    weights = []
    for module in model.modules():
        if isinstance(module, nn.Embedding) and module.weight.requires_grad:
            module.sparse = True
            weights.append(module.weight)
    return weights


class LazyAdamW(torch.optim.AdamW):
    """AdamW whose sparse-gradient parameters (embedding tables) update only the rows the gradient holds.

    Dense gradients take AdamW's own step (fused where asked). A sparse gradient (``nn.Embedding(sparse=True)``)
    updates its rows as AdamW would update them — the moments, the bias correction by the parameter's step
    count, decoupled weight decay — and leaves every other row, and its moments, as they are: the "lazy" Adam of
    TensorFlow's ``LazyAdam`` and torch's ``SparseAdam``, with AdamW's decay. A row that never had a gradient
    gets no update from AdamW either (its moments are zero); a row absent from this batch but not from earlier
    ones would still move under AdamW's decaying momentum, and does not here. The saving is the dense work on
    the whole table each step: zeroing its gradient, its share of the clipping norm and of the update (~12 ms
    of the quickstart's ~85 ms step on 2 CPU cores, where the 49,408-row table is most of the model).

    The state (``step``, ``exp_avg``, ``exp_avg_sq`` per parameter) is AdamW's, so a checkpoint of either loads
    into the other. Sparse gradients must be coalesced before clipping (``coalesce_sparse_grads``).
    """

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[no-untyped-def]
        sparse = [p for group in self.param_groups for p in group["params"]
                  if p.grad is not None and p.grad.is_sparse]
        grads = [p.grad for p in sparse]
        for p in sparse:
            p.grad = None  # AdamW's own step skips them
        try:
            loss = super().step(closure)
        finally:
            for p, g in zip(sparse, grads, strict=True):
                p.grad = g
        if sparse:
            ids = {id(p) for p in sparse}
            for group in self.param_groups:
                for p in group["params"]:
                    if id(p) in ids:
                        self._lazy_update(p, group)
        return loss

    def _lazy_update(self, param: torch.Tensor, group: dict) -> None:
        if group["amsgrad"] or group["maximize"]:
            raise ValueError("LazyAdamW: amsgrad and maximize are not supported for sparse gradients")
        assert param.grad is not None
        grad = param.grad.coalesce()
        rows, values = grad.indices()[0], grad.values()
        state = self.state[param]
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float32, device=param.device)
            state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        state["step"] += 1
        step = float(state["step"])
        beta1, beta2 = group["betas"]
        lr, eps, weight_decay = group["lr"], group["eps"], group["weight_decay"]
        p_rows = param[rows]
        m = state["exp_avg"][rows].lerp_(values, 1 - beta1)
        v = state["exp_avg_sq"][rows].mul_(beta2).addcmul_(values, values, value=1 - beta2)
        state["exp_avg"][rows] = m
        state["exp_avg_sq"][rows] = v
        if weight_decay:
            p_rows.mul_(1 - lr * weight_decay)
        denom = (v.sqrt() / math.sqrt(1 - beta2 ** step)).add_(eps)
        param[rows] = p_rows.addcdiv_(m, denom, value=-lr / (1 - beta1 ** step))


def coalesce_sparse_grads(params: list[torch.Tensor]) -> None:
    """Coalesces each sparse gradient in place (duplicate rows summed), so its norm and its update are the
    gradient's: an embedding's raw sparse gradient holds one row per token occurrence."""
    for p in params:
        if p.grad is not None and p.grad.is_sparse:
            p.grad = p.grad.coalesce()


@torch.no_grad()
def clip_grad_norm_with_sparse(params: list[torch.Tensor], max_norm: float) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_`` where some gradients are sparse (coalesced, ``coalesce_sparse_grads``): the
    2-norm of every gradient, a sparse one counted by its values, then one scale for all. torch 2.13's foreach norm
    has no sparse kernel, so the values tensors stand in for the sparse gradients they hold.

    Returns:
        The total norm before clipping.
    """
    tensors = [p.grad._values() if p.grad.is_sparse else p.grad for p in params if p.grad is not None]
    total = torch.nn.utils.get_total_norm(tensors)
    torch._foreach_mul_(tensors, (max_norm / (total + 1e-6)).clamp(max=1.0))  # a sparse gradient's values, in place
    return total


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
