"""Each parameter's tower and layer: the numbering behind layer-wise learning-rate decay and partial unlocking.

A tower's layers, as timm's ``param_groups_layer_decay`` numbers a ViT's: layer 0 holds the embeddings (a ViT's
conv stem, patch embedding, class token, position embeddings and ``ln_pre``; the text tower's token and position
embeddings; a ResNet's stem convolutions and norms), layers 1..L the blocks (a transformer's blocks; a ResNet's four
stages), and layer L + 1 the head: the final norm, the pooling head and the projection. Parameters outside the
towers (the logit scale and bias) belong to no tower. CLIPPO's one tower is the image tower.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from clipforge.config import ConfigError
from clipforge.models.resnet import ModifiedResNet
from clipforge.train.finetune_config import UnlockConfig

# A tower's attributes (first component of a parameter's name inside the tower) that make up its layer 0.
_EMBEDDINGS = ("stem", "patch_embed", "class_token", "pos_embed", "ln_pre", "token_embed",
               "conv1", "bn1", "conv2", "bn2", "conv3", "bn3")


@dataclass(frozen=True)
class Layer:
    """Where a parameter sits: ``tower`` (``image``, ``text``, or ``None`` outside the towers), ``index`` (0 for the
    embeddings, 1..``blocks`` for the blocks, ``blocks`` + 1 for the head) and the tower's block count."""

    tower: str | None
    index: int
    blocks: int


def tower_blocks(tower: nn.Module) -> list[nn.Module]:
    """The tower's blocks in order: a transformer's blocks, or a ResNet's four stages.

    Raises:
        TypeError: a tower of neither kind.
    """
    if isinstance(tower, ModifiedResNet):
        return [tower.layer1, tower.layer2, tower.layer3, tower.layer4]
    transformer = getattr(tower, "transformer", None)
    blocks = getattr(transformer, "blocks", None)
    if not isinstance(blocks, nn.ModuleList):
        raise TypeError(f"{type(tower).__name__} has no transformer blocks or ResNet stages to number")
    return list(blocks)


def towers(model: nn.Module) -> dict[str, nn.Module]:
    """The model's distinct towers by name (CLIPPO's shared tower once, as ``image``)."""
    named: dict[str, nn.Module] = {}
    for name, tower in model.towers().items():  # type: ignore[operator]  # CLIP, CLIPPO and SigLIP define towers()
        if all(tower is not t for t in named.values()):
            named[name] = tower
    return named


def layer_map(model: nn.Module) -> dict[str, Layer]:
    """Every parameter of ``model`` (by its name in ``named_parameters``) with its tower and layer."""
    tower_of = {id(t): name for name, t in towers(model).items()}
    layers: dict[str, Layer] = {}
    for prefix, module in model.named_modules():
        name = tower_of.get(id(module))
        if name is None:
            continue
        blocks = tower_blocks(module)
        block_of = {id(p): i + 1 for i, block in enumerate(blocks) for p in block.parameters()}
        for local, param in module.named_parameters():
            index = block_of.get(id(param))
            if index is None:
                index = 0 if local.split(".")[0] in _EMBEDDINGS else len(blocks) + 1
            layers[f"{prefix}.{local}"] = Layer(name, index, len(blocks))
    for name, _ in model.named_parameters():
        layers.setdefault(name, Layer(None, 0, 0))
    return layers


def layer_lr_mult(layer: Layer, decay: float) -> float:
    """``decay ** (L + 1 − index)``: 1 for the head and outside the towers, ``decay`` for the last block,
    ``decay ** (L + 1)`` for the embeddings (timm's ``param_groups_layer_decay``)."""
    if layer.tower is None:
        return 1.0
    return decay ** (layer.blocks + 1 - layer.index)


def check_unlock(model: nn.Module, unlock: UnlockConfig, lock: str) -> None:
    """Raises ``ConfigError`` when ``unlock`` asks for more blocks than a tower has, or unlocks a ``lock``-ed tower."""
    named = towers(model)
    for tower in ("image", "text"):
        n = unlock.blocks(tower)
        if n is None:
            continue
        if tower not in named:
            raise ConfigError(f"unlock.{tower}_blocks: this model's one tower is the image tower (CLIPPO): "
                              "use unlock.image_blocks")
        if lock != "none" and model.towers()[lock] is named[tower]:  # type: ignore[operator]
            raise ConfigError(f"unlock.{tower}_blocks: lock={lock} freezes that tower whole; drop one of the two")
        blocks = len(tower_blocks(named[tower]))
        if n > blocks + 1:
            raise ConfigError(f"unlock.{tower}_blocks={n}: the {tower} tower has {blocks} blocks "
                              f"(at most {blocks + 1}: every block and the embeddings)")


def frozen_at(model: nn.Module, unlock: UnlockConfig, step: int | None) -> set[str]:
    """The parameter names that ``unlock`` freezes at optimiser step ``step`` (``None``: at every step, i.e. those
    that never train). A pure function of the step, so resuming needs nothing but the step."""
    if unlock.at_step is not None and (step is None or step >= unlock.at_step):
        return set()
    frozen = set()
    for name, layer in layer_map(model).items():
        n = unlock.blocks(layer.tower) if layer.tower is not None else None
        if n is not None and layer.index <= layer.blocks - n:
            frozen.add(name)
    return frozen


def apply_unlock(model: nn.Module, unlock: UnlockConfig, step: int | None, may_train: set[str]) -> None:
    """Sets which parameters of the partially unlocked towers train at ``step`` (``None``: every parameter that
    trains at some step): those in ``may_train`` (trainable before unlocking: not ``lock``-ed, not a LoRA base
    weight) that ``frozen_at`` does not name. Modules whose parameters are all frozen go to eval mode (fixed
    BatchNorm statistics, as ``lock`` does); towers ``unlock`` does not name are left as they are."""
    if unlock.image_blocks is None and unlock.text_blocks is None:
        return
    frozen = frozen_at(model, unlock, step)
    layers = layer_map(model)
    for name, param in model.named_parameters():
        tower = layers[name].tower
        if tower is not None and unlock.blocks(tower) is not None:
            param.requires_grad_(name in may_train and name not in frozen)
    for tower_name, tower in towers(model).items():
        if unlock.blocks(tower_name) is None:
            continue
        tower.train(model.training)
        for module in tower.modules():  # parents first: a module whose parameters are all frozen keeps fixed statistics
            params = list(module.parameters())
            if params and not any(p.requires_grad for p in params):
                module.eval()


def describe_groups(model: nn.Module, groups: Iterable[dict]) -> str:
    """One line per optimiser group: its towers, layer range, lr multiple, weight decay and trainable parameters."""
    layers = _layers_by_id(model)
    lines = [f"{'group':>5}  {'tower':<16} {'layers':<8} {'lr_mult':>9} {'wd':>6} {'trainable':>11}"]
    for i, group in enumerate(groups):
        params: list[torch.Tensor] = list(group["params"])
        placed = [layers[id(p)] for p in params if id(p) in layers]
        tower = ",".join(sorted({lay.tower or "model" for lay in placed})) or "-"
        indices = [lay.index for lay in placed if lay.tower is not None]
        span = f"{min(indices)}-{max(indices)}" if indices else "-"
        if indices and min(indices) == max(indices):
            span = str(indices[0])
        trainable = sum(p.numel() for p in params if p.requires_grad)
        lines.append(f"{i:>5}  {tower:<16} {span:<8} {group.get('lr_mult', 1.0):>9.4g} {group['weight_decay']:>6.3g} "
                     f"{trainable:>11,}")
    return "\n".join(lines)


def _layers_by_id(model: nn.Module) -> dict[int, Layer]:
    named = layer_map(model)
    return {id(p): named[name] for name, p in model.named_parameters()}
