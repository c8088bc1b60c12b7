"""LoRA: low-rank adapters on a model's linear projections, base weights frozen (Hu et al. 2021).

``apply_lora(model, LoRAConfig(rank=8, targets=("attn", "mlp")))`` replaces each chosen ``nn.Linear`` by a
``LoRALinear`` that computes ``W x + b + (alpha / rank) · B A dropout(x)``, with ``A`` (rank, in) initialised
Kaiming-uniform and ``B`` (out, rank) zero, so at initialisation the model computes exactly what the base does.
Every base parameter is frozen, the logit scale and bias included (as peft and OpenCLIP's LoRA recipes do), and
BatchNorm layers (a ResNet tower's) keep their running statistics, computing in eval mode even while the model
trains, as ``lock`` does for a LiT tower: the adapters alone change, and a saved adapter set fits the base it was
trained on without any other tensor.
``merge_lora`` folds ``W += scale · B A`` back into plain ``nn.Linear`` layers: the result is an ordinary model
that ``save_pretrained`` writes and every loader reads.

This is a small module of our own rather than ``peft``: the model's layers are plain ``nn.Linear`` modules, so
the wrapper is a few lines, keeps the base weight's name (``attn.qkv.weight``; the adapter adds ``.lora_A`` and
``.lora_B`` beside it), and needs no extra dependency. Saving and loading adapter sets with the base model's
fingerprint lives in ``clipforge.train.lora`` (``save_adapters``, ``load_adapters``).

Targets choose layers by what they are, not by name: ``attn`` is the fused ``qkv`` and ``out_proj`` of every
block's attention, ``mlp`` the ``fc`` and ``proj`` of every block's MLP, ``pool`` every projection of an
attention-pooling head (SigLIP's MAP head, the ResNet's attention pool). Any other target is a ``fnmatch`` pattern
over module names relative to the model (``visual.transformer.blocks.1[01].attn.qkv``, ``*.attnpool.*_proj``),
matched against ``nn.Linear`` layers only. ``towers`` picks the towers (``model.towers()``); CLIPPO's single tower
is both.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from clipforge.config import ConfigError
from clipforge.models.layers import MLP, Attention, Block, MAPHead
from clipforge.models.resnet import AttentionPool2d

GROUPS = ("attn", "mlp", "pool")
_LORA_CONFIG = "lora_config"  # the attribute of a model that holds its LoRAConfig once adapters are applied


@dataclass(frozen=True)
class LoRAConfig:
    """Which layers get adapters, and their shape.

    Attributes:
        rank: The adapters' inner dimension r (``A`` is r × in, ``B`` out × r).
        alpha: The update is scaled by ``alpha / rank`` (peft's ``lora_alpha``), so changing the rank keeps the
            update's size at a given learning rate.
        dropout: Dropout on the adapter's input during training (not on the base path).
        towers: ``image``, ``text`` or both.
        targets: ``attn``, ``mlp``, ``pool`` (see the module docstring) or module-name patterns.
    """

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    towers: tuple[Literal["image", "text"], ...] = ("image", "text")
    targets: tuple[str, ...] = ("attn", "mlp")

    def __post_init__(self) -> None:
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ConfigError(f"lora.rank must be an integer >= 1, got {self.rank!r}")
        if not self.alpha > 0:
            raise ConfigError(f"lora.alpha must be positive, got {self.alpha!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"lora.dropout must be in [0, 1), got {self.dropout!r}")
        if not self.towers or set(self.towers) - {"image", "text"} or len(set(self.towers)) != len(self.towers):
            raise ConfigError(f"lora.towers: expected 'image', 'text' or both, got {list(self.towers)}")
        if not self.targets or not all(isinstance(t, str) and t for t in self.targets):
            raise ConfigError(f"lora.targets: expected a non-empty list of {list(GROUPS)} or module-name patterns, "
                              f"got {list(self.targets)}")

    @property
    def scale(self) -> float:
        """The factor on the low-rank update: ``alpha / rank``."""
        return self.alpha / self.rank


class LoRALinear(nn.Linear):
    """An ``nn.Linear`` whose frozen weight gets a trainable low-rank update: ``y = W x + b + s · B A drop(x)``.

    It holds the base layer's own ``weight`` and ``bias`` (same names, same tensors, frozen) and adds ``lora_A``
    (rank, in) and ``lora_B`` (out, rank).

    Args:
        base: The layer to adapt; its parameters are taken over, not copied.
        rank: Inner dimension of the update.
        scale: Factor on the update (``alpha / rank``).
        dropout: Dropout probability on the update's input.
        generator: Seeds ``A``'s Kaiming-uniform initialisation (``B`` starts at zero).
    """

    def __init__(self, base: nn.Linear, rank: int, scale: float, dropout: float = 0.0,
                 generator: torch.Generator | None = None):
        super().__init__(base.in_features, base.out_features, bias=base.bias is not None, device="meta")
        self.weight = base.weight
        self.bias = base.bias
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        self.rank, self.scale = rank, scale
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        a = torch.empty(rank, base.in_features, dtype=base.weight.dtype)
        nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=generator)  # nn.Linear's (and peft's) init
        self.lora_A = nn.Parameter(a.to(base.weight.device))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, dtype=base.weight.dtype,
                                               device=base.weight.device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        update = F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B)  # (..., out); exactly 0 while B is
        return F.linear(x, self.weight, self.bias) + self.scale * update

    def delta(self) -> torch.Tensor:
        """The update as a weight matrix: ``scale · B A`` (out, in), computed in float32."""
        return self.scale * (self.lora_B.float() @ self.lora_A.float())

    def merged(self) -> nn.Linear:
        """A plain ``nn.Linear`` with ``W + scale · B A`` and the base bias (trainable again, as in any model)."""
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        with torch.no_grad():
            linear.weight = nn.Parameter((self.weight.float() + self.delta()).to(self.weight.dtype))
            if self.bias is not None:
                linear.bias = nn.Parameter(self.bias.detach().clone())
        return linear

    def unwrapped(self) -> nn.Linear:
        """A plain ``nn.Linear`` sharing this layer's base weight and bias (the update left out)."""
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        linear.weight, linear.bias = self.weight, self.bias
        return linear

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}, scale={self.scale:g}"


def target_layers(model: nn.Module, config: LoRAConfig) -> dict[str, nn.Linear]:
    """The ``nn.Linear`` layers ``config`` adapts, by module name relative to ``model``, in module order.

    Raises:
        ConfigError: a target matches no layer of the chosen towers (listing the groups and layer names there
            are), or a chosen tower gets no adapter at all; or the model has no ``towers()``.
    """
    towers_of = getattr(model, "towers", None)
    if not callable(towers_of):
        raise ConfigError(f"lora: {type(model).__name__} has no towers() to choose layers from")
    chosen = {id(towers_of()[name]) for name in config.towers}
    prefixes = [name + "." for name, module in model.named_modules() if id(module) in chosen]
    linears = {name: m for name, m in model.named_modules()
               if isinstance(m, nn.Linear) and not isinstance(m, LoRALinear) and name.startswith(tuple(prefixes))}
    groups = _groups(model)
    selected: set[str] = set()
    for target in config.targets:
        names = [n for n in linears
                 if (groups.get(n) == target if target in GROUPS else fnmatch.fnmatchcase(n, target))]
        if not names:
            present = sorted({g for n, g in groups.items() if n in linears})
            raise ConfigError(f"lora.targets: {target!r} matches no linear layer of the {' and '.join(config.towers)} "
                              f"tower{'s' if len(config.towers) > 1 else ''}; groups there: {present}; "
                              f"layers: {_summary(list(linears))}")
        selected.update(names)
    for tower in config.towers:
        prefix = next(n for n, m in model.named_modules() if m is towers_of()[tower]) + "."
        if not any(n.startswith(prefix) for n in selected):
            raise ConfigError(f"lora: no target of {list(config.targets)} matches a layer of the {tower} tower "
                              f"({prefix}*); its layers: {_summary([n for n in linears if n.startswith(prefix)])}")
    return {n: m for n, m in linears.items() if n in selected}


def _groups(model: nn.Module) -> dict[str, str]:
    """Each grouped linear layer's name → its group (``attn``, ``mlp``, ``pool``), found by module class."""
    groups: dict[str, str] = {}
    for name, module in model.named_modules():
        if isinstance(module, MAPHead | AttentionPool2d):
            for sub, m in module.named_modules():
                if isinstance(m, nn.Linear):
                    groups[f"{name}.{sub}"] = "pool"
        elif isinstance(module, Block):
            for child, group in (("attn", "attn"), ("mlp", "mlp")):
                part = getattr(module, child)
                if isinstance(part, Attention | MLP):
                    for sub, m in part.named_children():
                        if isinstance(m, nn.Linear):
                            groups[f"{name}.{child}.{sub}"] = group
    return groups


def _summary(names: list[str], limit: int = 12) -> str:
    """Layer names for an error message, block indices collapsed (``text.transformer.blocks.*.attn.qkv``)."""
    import re

    collapsed = list(dict.fromkeys(re.sub(r"\.\d+\.", ".*.", n) for n in names))
    more = f" … ({len(collapsed) - limit} more)" if len(collapsed) > limit else ""
    return ", ".join(collapsed[:limit]) + more if collapsed else "none"


def apply_lora(model: nn.Module, config: LoRAConfig, seed: int = 0) -> nn.Module:
    """Wraps the layers ``config`` targets in ``LoRALinear`` (in place) and freezes every base parameter.

    Args:
        model: A clipforge model without adapters.
        config: Which layers, and the adapters' rank, alpha and dropout.
        seed: Seeds the ``A`` matrices (so a run's adapters start the same whatever the global RNG did).

    Returns:
        ``model``, whose only trainable parameters are now the adapters (its BatchNorm layers, if any, keep their
        statistics); at this point its outputs equal the base model's exactly.

    Raises:
        ConfigError: a target matches no layer (see ``target_layers``).
        ValueError: the model already has adapters.
    """
    if lora_config(model) is not None:
        raise ValueError("apply_lora: this model already has LoRA adapters (merge_lora it first to stack another)")
    layers = target_layers(model, config)
    model.requires_grad_(False)
    generator = torch.Generator().manual_seed(seed)
    for name, linear in layers.items():
        _set_module(model, name, LoRALinear(linear, config.rank, config.scale, config.dropout, generator))
    for module in model.modules():
        if isinstance(module, _BatchNorm) and module.track_running_stats:
            module.register_forward_pre_hook(_keep_statistics)
    setattr(model, _LORA_CONFIG, config)
    return model


def _keep_statistics(module: nn.Module, args: object) -> None:
    """A BatchNorm forward pre-hook: eval mode for this call whatever ``model.train()`` set, so a frozen base's
    running statistics stay as they were (and its features are those of the base)."""
    module.training = False


def lora_config(model: nn.Module) -> LoRAConfig | None:
    """The ``LoRAConfig`` applied to ``model``, or ``None`` for a model without adapters."""
    config = getattr(model, _LORA_CONFIG, None)
    return config if isinstance(config, LoRAConfig) else None


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """The model's adapted layers by module name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the adapter tensors: ``<layer>.lora_A`` and ``<layer>.lora_B`` of every adapted layer (detached)."""
    state: dict[str, torch.Tensor] = {}
    for name, layer in lora_layers(model).items():
        state[f"{name}.lora_A"] = layer.lora_A.detach()
        state[f"{name}.lora_B"] = layer.lora_B.detach()
    return state


def merge_lora(model: nn.Module) -> nn.Module:
    """Folds every adapter into its layer (``W += scale · B A``), in place: plain ``nn.Linear`` layers again.

    Returns:
        ``model`` as an ordinary clipforge model (every parameter trainable, no ``lora_config``), which
        ``save_pretrained`` writes and any loader reads. Copy it first (``copy.deepcopy``) to keep the adapters.
    """
    for name, layer in lora_layers(model).items():
        _set_module(model, name, layer.merged())
    model.requires_grad_(True)
    for module in model.modules():
        hooks = module._forward_pre_hooks
        for key in [k for k, hook in hooks.items() if hook is _keep_statistics]:
            del hooks[key]
    if hasattr(model, _LORA_CONFIG):
        delattr(model, _LORA_CONFIG)
    return model


@contextmanager
def lora_removed(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, ``model`` is its base model: each adapted layer swapped for a plain layer sharing the
    base weights (no copy), so its ``state_dict`` and fingerprint are the base's; the adapters return after."""
    layers = lora_layers(model)
    try:
        for name, layer in layers.items():
            _set_module(model, name, layer.unwrapped())
        yield model
    finally:
        for name, layer in layers.items():
            _set_module(model, name, layer)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts (tensors shared by two towers counted once)."""
    params = list(model.parameters())  # deduplicated by identity
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    """Replaces the submodule at dotted ``name``; its position among its siblings (and the state_dict's key
    order) is kept."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)
