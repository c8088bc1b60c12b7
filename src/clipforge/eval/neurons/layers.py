"""Which units a model's image tower has, by layer name, and reading them with a forward hook.

Layer names (``list_layers`` gives a model's own):

- ``visual.blocks.<i>``: a ViT block's output, the residual stream; a unit is one of its ``width`` channels.
- ``visual.blocks.<i>.mlp``: a ViT block's MLP neurons (after the activation); ``width · mlp_ratio`` units.
- ``visual.layer<s>`` and ``visual.layer<s>.<j>``: a ResNet stage's (or one of its blocks') output channels.
- ``embedding``: the axes of the joint embedding space; a unit is a coordinate of the L2-normalised image embedding,
  and its top texts come from the text tower.
- ``embedding.text``: directions of the joint embedding space named by words: unit ``i`` is the text tower's
  embedding of the ``i``-th vocabulary word in a prompt (``a photo of a {}.``), and its activation on an image the
  cosine similarity with it (``text_directions``; the vocabulary decides the units).

A unit's activation on an image is its value averaged over positions (tokens, or the spatial grid), as Goh et al.
(2021) and Lucid's channel objective take it. Recording stops the forward pass at the hooked module.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

KINDS = ("residual", "mlp", "channel", "embedding", "text-direction")
TEXT_DIRECTIONS = "embedding.text"


@dataclass(frozen=True, eq=False)
class Layer:
    """A named layer of units.

    Attributes:
        name: Its name (``visual.blocks.3.mlp``, ``visual.layer4``, ``embedding``).
        kind: ``residual``, ``mlp``, ``channel`` or ``embedding``.
        module: The module whose output holds the units.
        units: How many units the layer has.
        reduce: The module's output → activations (B, units), averaged over positions.
        names: What each unit stands for, where units have names (``embedding.text``: the words).
    """

    name: str
    kind: str
    module: nn.Module
    units: int
    reduce: Callable[[torch.Tensor], torch.Tensor]
    names: tuple[str, ...] = ()


def _tokens_mean(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=1)  # (B, T, C) → (B, C)


def _spatial_mean(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=(2, 3))  # (B, C, H, W) → (B, C)


def _unit_norm(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x.float(), dim=-1)  # (B, D): coordinates of the normalised embedding


def list_layers(model: nn.Module) -> dict[str, Layer]:
    """Every layer of ``model``'s image tower (``model.visual``) that ``clipforge neurons`` can read, by name."""
    from clipforge.models.resnet import ModifiedResNet
    from clipforge.models.vit import VisionTransformer

    visual = cast(nn.Module, model.visual)
    layers: dict[str, Layer] = {}
    if isinstance(visual, VisionTransformer):
        for i, block in enumerate(cast(Any, visual.transformer.blocks)):
            width = block.ln_1.normalized_shape[0]
            layers[f"visual.blocks.{i}"] = Layer(f"visual.blocks.{i}", "residual", block, width, _tokens_mean)
            layers[f"visual.blocks.{i}.mlp"] = Layer(f"visual.blocks.{i}.mlp", "mlp", block.mlp.act,
                                                     block.mlp.fc.out_features, _tokens_mean)
    elif isinstance(visual, ModifiedResNet):
        for s, stage in enumerate((visual.layer1, visual.layer2, visual.layer3, visual.layer4), start=1):
            blocks = list(cast(Any, stage))
            channels = blocks[-1].conv3.out_channels
            layers[f"visual.layer{s}"] = Layer(f"visual.layer{s}", "channel", stage, channels, _spatial_mean)
            for j, block in enumerate(blocks):
                name = f"visual.layer{s}.{j}"
                layers[name] = Layer(name, "channel", block, block.conv3.out_channels, _spatial_mean)
    embed_dim = getattr(getattr(model, "config", None), "embed_dim", None)
    if embed_dim is None:
        raise ValueError(f"{type(model).__name__}: no config.embed_dim; not a clipforge contrastive model")
    layers["embedding"] = Layer("embedding", "embedding", visual, int(embed_dim), _unit_norm)
    return layers


def get_layer(model: nn.Module, name: str) -> Layer:
    """The layer called ``name``.

    Raises:
        ValueError: no such layer; the message lists the valid names.
    """
    layers = list_layers(model)
    if name not in layers:
        raise ValueError(f"unknown layer {name!r}; valid layers: {', '.join([*layers, TEXT_DIRECTIONS])}")
    return layers[name]


def text_directions(model: nn.Module, directions: torch.Tensor, words: list[str]) -> Layer:
    """The ``embedding.text`` layer: unit ``i`` is the unit vector ``directions[i]`` (V, D) of the joint space (the
    text embedding of ``words[i]``); an image's activation is its normalised embedding's cosine with it."""
    weights = F.normalize(directions.float(), dim=-1)  # (V, D)

    def cosine(x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x.float(), dim=-1) @ weights.to(x.device).T  # (B, V)

    return Layer(TEXT_DIRECTIONS, "text-direction", cast(nn.Module, model.visual), len(words), cosine, tuple(words))


def check_units(layer: Layer, units: list[int] | None) -> list[int]:
    """``units`` (all of the layer's when ``None``), checked to be distinct and in ``0 .. layer.units - 1``.

    Raises:
        ValueError: a unit out of range or repeated.
    """
    if units is None:
        return list(range(layer.units))
    bad = [u for u in units if not 0 <= u < layer.units]
    if bad:
        raise ValueError(f"unit {bad[0]} out of range: layer {layer.name!r} has units 0..{layer.units - 1}")
    if len(set(units)) != len(units):
        raise ValueError(f"units repeat: {units}")
    if not units:
        raise ValueError("no units given")
    return list(units)


class _Stop(Exception):
    """Raised by the hook to end a forward pass once the layer's output is read."""


def layer_activations(model: nn.Module, layer: Layer, images: torch.Tensor, stop: bool = True) -> torch.Tensor:
    """The layer's activations (B, units) for normalised images (B, 3, H, W), as the model's forward computes them.

    Gradients flow when enabled (feature visualisation). With ``stop``, the forward pass ends at the layer.
    """
    captured: list[torch.Tensor] = []

    def hook(module: nn.Module, inputs: object, output: torch.Tensor) -> None:
        captured.append(layer.reduce(output))
        if stop:
            raise _Stop

    handle = layer.module.register_forward_hook(hook)
    try:
        cast(Any, model).encode_image(images)
    except _Stop:
        pass
    finally:
        handle.remove()
    if not captured:
        raise RuntimeError(f"layer {layer.name!r} was not reached by the image tower's forward pass")
    return captured[0]
