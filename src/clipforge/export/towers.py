"""Each tower as its own small module with named inputs, and the random inputs its export is traced and checked on.

An exported graph has one tower and one output, ``features`` (B, D), not L2-normalised:

- ``image``: ``model.visual`` on normalised pixels (B, 3, H, W); for a SigLIP 2 NaFlex tower, on the NaFlex batch's
  three tensors ``patches`` (B, N, 3·p·p), ``mask`` (B, N) and ``spatial_shapes`` (B, 2).
- ``text``: ``model.encode_text`` on token ids (B, T). T is dynamic for a causal tower pooled at the end-of-text token
  (CLIP: a shorter padded text gives the same features, so a runtime may pad to the batch's longest text) and fixed at
  the context length otherwise (SigLIP reads the last position of the padded text: the padding is part of the input).

CLIPPO has no text tower: rendered text goes through the image tower (``text_input: "pixels"`` in export.json).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from clipforge.models.clip import ContrastiveModel
from clipforge.models.naflex import NaFlexBatch, target_size


class ImageTower(nn.Module):
    """``visual(pixels)``: normalised images (B, 3, H, W) → features (B, D)."""

    def __init__(self, visual: nn.Module):
        super().__init__()
        self.visual = visual

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.visual(pixels)


class NaFlexImageTower(nn.Module):
    """A SigLIP 2 NaFlex tower on its batch as three tensors: patches (B, N, 3·p·p), mask (B, N), spatial shapes
    (B, 2) → features (B, D)."""

    def __init__(self, visual: nn.Module):
        super().__init__()
        self.visual = visual

    def forward(self, patches: torch.Tensor, mask: torch.Tensor, spatial_shapes: torch.Tensor) -> torch.Tensor:
        return self.visual(NaFlexBatch(patches, mask, spatial_shapes))


class TextTower(nn.Module):
    """``model.encode_text(tokens)``: token ids (B, T) → features (B, D), not normalised."""

    def __init__(self, model: ContrastiveModel):
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(tokens)


@dataclass
class TowerExport:
    """What exporting one tower needs.

    Attributes:
        name: ``image`` or ``text``.
        module: The wrapper to trace.
        input_names: The graph's input names, in ``forward``'s order.
        input_shapes: Each input's shape for export.json, dynamic axes named (``"batch"``, ``"sequence"``).
        input_dtypes: Each input's dtype name (``float32``, ``int64``, ``bool``).
        make_inputs: ``(batch, length, generator) -> inputs``; ``length`` is the text's T (ignored by images).
        cases: The (batch, length) pairs the parity check runs.
    """

    name: str
    module: nn.Module
    input_names: list[str]
    input_shapes: dict[str, list[int | str]]
    input_dtypes: dict[str, str]
    make_inputs: Callable[[int, int, torch.Generator], tuple[torch.Tensor, ...]]
    cases: list[tuple[int, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        # A wrapper is born in training mode; torch.onnx.export restores that mode on every submodule afterwards,
        # which would leave a BatchNorm of the model training. In eval mode from the start, it stays there.
        self.module.eval()

    @property
    def file(self) -> str:
        """The graph's file name in the export directory."""
        return f"{self.name}.onnx"

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """The TorchScript exporter's ``dynamic_axes``: every named axis of the inputs, and the output's batch."""
        axes = {name: {i: d for i, d in enumerate(shape) if isinstance(d, str)}
                for name, shape in self.input_shapes.items()}
        return {**axes, "features": {0: "batch"}}


def dynamic_sequence(text_config: Any) -> bool:
    """Whether a text tower's T may vary: causal attention and end-of-text pooling (CLIP), so padding after the
    end-of-text token changes nothing. A bidirectional tower, or one read at the last position, sees its padding."""
    return bool(text_config.causal) and text_config.pool == "eot"


def image_export(model: ContrastiveModel) -> TowerExport:
    """The image tower's export: ``pixels`` (B, 3, S, S), or a NaFlex tower's three inputs."""
    vision: Any = model.config.vision
    if getattr(vision, "naflex", False):
        return _naflex_export(model)
    size = vision.image_size

    def make(batch: int, _: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        return (torch.randn(batch, 3, size, size, generator=generator),)

    return TowerExport("image", ImageTower(model.visual), ["pixels"], {"pixels": ["batch", 3, size, size]},
                       {"pixels": "float32"}, make, [(1, 0), (3, 0)])


def _naflex_export(model: ContrastiveModel) -> TowerExport:
    vision: Any = model.config.vision
    p, n = vision.patch_size, vision.max_num_patches
    aspects = [(1, 1), (3, 4), (16, 9), (1, 3), (5, 2)]  # height:width of the random images, each under the budget

    def make(batch: int, _: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        grids = []
        for i in range(batch):
            h, w = aspects[i % len(aspects)]
            height, width = target_size(h * 100, w * 100, p, n)
            grids.append((height // p, width // p))
        shapes = torch.tensor(grids, dtype=torch.int64)  # (B, 2)
        mask = torch.arange(n)[None, :] < shapes.prod(-1)[:, None]  # (B, N): the first h·w patches are real
        patches = torch.randn(batch, n, 3 * p * p, generator=generator) * mask[..., None]
        return patches, mask, shapes

    shapes: dict[str, list[int | str]] = {"patches": ["batch", n, 3 * p * p], "mask": ["batch", n],
                                          "spatial_shapes": ["batch", 2]}
    return TowerExport("image", NaFlexImageTower(model.visual), list(shapes), shapes,
                       {"patches": "float32", "mask": "bool", "spatial_shapes": "int64"}, make, [(1, 0), (3, 0)])


def text_export(model: ContrastiveModel, sot_token_id: int | None = None,
                eot_token_id: int | None = None) -> TowerExport:
    """The text tower's export: ``tokens`` (B, T), T dynamic where ``dynamic_sequence`` allows.

    The random texts are what a tokenizer gives: start token, ids, end-of-text token, zero padding; one row of each
    batch fills the whole context. ``sot_token_id`` / ``eot_token_id`` default to OpenAI's layout (the last two ids),
    or the config's ``text.eot_token_id``.
    """
    text: Any = getattr(model.config, "text")  # noqa: B009  (CLIP and SigLIP configs; CLIPPO has none)
    context, vocab = text.context_length, text.vocab_size
    eot = eot_token_id if eot_token_id is not None else (text.eot_token_id if text.eot_token_id is not None
                                                        else vocab - 1)
    sot = sot_token_id if sot_token_id is not None else max(0, vocab - 2)
    # The OpenAI rule reads the highest id: every other id must be lower. The explicit rule reads the first eot.
    high = eot if text.eot_token_id is None else vocab

    def make(batch: int, length: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        tokens = torch.zeros(batch, length, dtype=torch.int64)
        for i in range(batch):
            n = length if i == 0 else int(torch.randint(2, length + 1, (1,), generator=generator))
            ids = torch.randint(1, max(2, high), (n,), generator=generator)
            ids[ids == eot] = 1 if eot != 1 else 2
            ids[0], ids[n - 1] = sot, eot
            tokens[i, :n] = ids
        return (tokens,)

    dynamic = dynamic_sequence(text)
    cases = [(1, context), (3, context)] + ([(3, max(2, context // 2))] if dynamic else [])
    shape: list[int | str] = ["batch", "sequence" if dynamic else context]
    return TowerExport("text", TextTower(model), ["tokens"], {"tokens": shape}, {"tokens": "int64"}, make, cases)


def tower_exports(model: ContrastiveModel, towers: tuple[str, ...], processor: Any = None) -> list[TowerExport]:
    """The towers to export, in order. CLIPPO has one tower: asking for either gives ``image``."""
    if model.config.family == "clippo":
        return [image_export(model)]
    exports = [image_export(model)] if "image" in towers else []
    if "text" in towers:
        exports.append(text_export(model, getattr(processor, "sot_token_id", None),
                                   getattr(processor, "eot_token_id", None)))
    return exports
