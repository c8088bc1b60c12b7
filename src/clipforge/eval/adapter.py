"""One wrapper that every evaluation uses, whatever the model family.

``EvalModel(model, transform, processor)`` bundles what evaluation needs: images go through ``transform``
(PIL → normalised tensor), strings through ``processor`` (token ids for CLIP, rendered pixels for CLIPPO;
opaque here), and both through the model's ``encode_image`` / ``encode_text``. Nothing below branches on
the family, so CLIP and CLIPPO (and any module with the same three members) evaluate the same way.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn


class EvalModel:
    """A model with its image transform and text processor, for inference.

    Args:
        model: Has ``encode_image(images, normalize)``, ``encode_text(text_input, normalize)`` and a
            ``logit_scale`` parameter (the log of the temperature's inverse).
        transform: PIL image → float tensor (3, H, W), or a ``NaFlexBatch`` item for a SigLIP 2 NaFlex model
            (``torch.stack`` of those is a batch, so nothing here changes).
        processor: ``list[str]`` → the model's text input tensor.
        device: Where inputs go; the model's own device when ``None``.
    """

    def __init__(self, model: nn.Module, transform: Callable[[Image.Image], Any],
                 processor: Callable[[list[str]], torch.Tensor], device: torch.device | str | None = None):
        self.model = model.eval()
        self.transform = transform
        self.processor = processor
        if device is None:
            param = next(model.parameters(), None)
            device = param.device if param is not None else "cpu"
        self.device = torch.device(device)
        self._fingerprint: str | None = None

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Embeds a batch of transformed images (N, 3, H, W) → float32 (N, D) on the CPU."""
        x = self.model.encode_image(images.to(self.device), normalize=False).float()
        return (F.normalize(x, dim=-1) if normalize else x).cpu()

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str], normalize: bool = True, batch_size: int = 256) -> torch.Tensor:
        """Embeds strings → float32 (N, D) on the CPU, ``batch_size`` at a time."""
        out = []
        for i in range(0, len(texts), batch_size):
            text_input = self.processor(list(texts[i:i + batch_size]))
            x = self.model.encode_text(text_input.to(self.device), normalize=False).float()
            out.append(F.normalize(x, dim=-1) if normalize else x)
        if not out:
            raise ValueError("no texts to encode")
        return torch.cat(out).cpu()

    def logit_scale(self) -> float:
        """The multiplier applied to cosine similarities: the model's ``scale()`` (CLIP: ``exp(logit_scale)`` clamped
        at 100; SigLIP: unclamped), or ``exp(logit_scale)`` at most 100 for a module without ``scale()``."""
        scale = getattr(self.model, "scale", None)
        if callable(scale):
            return float(scale().detach().float())
        return float(self.model.logit_scale.detach().float().exp().clamp(max=100.0))

    def logit_bias(self) -> float:
        """The bias added to scaled similarities (SigLIP's learned one), 0 for a model without one."""
        bias = getattr(self.model, "logit_bias", None)
        return float(bias.detach().float()) if isinstance(bias, torch.Tensor) else 0.0

    @property
    def scoring(self) -> str:
        """``softmax`` or ``sigmoid``: the model config's ``scoring`` (``softmax`` when it has none)."""
        return str(getattr(getattr(self.model, "config", None), "scoring", "softmax"))

    def probabilities(self, similarities: torch.Tensor) -> torch.Tensor:
        """Label probabilities from cosine similarities (N, L), by the model's ``scoring``.

        ``softmax``: over the labels, summing to one (CLIP). ``sigmoid``: ``σ(scale · cos + bias)`` for each label on
        its own (SigLIP: several labels may be likely, or none; they do not sum to one).
        """
        logits = self.logit_scale() * similarities.float() + self.logit_bias()
        return logits.sigmoid() if self.scoring == "sigmoid" else logits.softmax(dim=-1)

    def fingerprint(self) -> str:
        """A short hash identifying the weights (see :func:`model_fingerprint`); computed once."""
        if self._fingerprint is None:
            self._fingerprint = model_fingerprint(self.model)
        return self._fingerprint


def model_fingerprint(model: nn.Module, n_tensors: int = 8, max_elements: int = 1 << 16) -> str:
    """A hash of a model's config and a few of its parameter tensors, cheap even for billion-parameter models.

    Two models with the same config and the same values in the sampled tensors (first, last, and evenly
    spaced ones in between; each tensor's shape, sum, and its first and last ``max_elements`` values) get
    the same fingerprint. Fine-tuning changes every tensor, so a changed checkpoint changes it.

    Args:
        model: Any module; its ``config`` attribute (a dataclass or anything with a stable ``repr``) is
            included when present.
        n_tensors: How many parameter tensors to sample.
        max_elements: Values hashed from each end of each sampled tensor.
    """
    h = hashlib.sha256()
    config = getattr(model, "config", None)
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        h.update(json.dumps(dataclasses.asdict(config), sort_keys=True, default=str).encode())
    elif config is not None:
        h.update(repr(config).encode())
    h.update(type(model).__name__.encode())
    named = list(model.state_dict().items())
    h.update(str(len(named)).encode())
    if named:
        picks = sorted({round(i * (len(named) - 1) / max(n_tensors - 1, 1)) for i in range(n_tensors)})
        for i in picks:
            name, tensor = named[i]
            flat = tensor.detach().reshape(-1).float().cpu()
            h.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}{flat.double().sum().item():.12g}".encode())
            h.update(flat[:max_elements].numpy().tobytes())
            h.update(flat[-max_elements:].numpy().tobytes())
    return h.hexdigest()[:16]


def describe(model: Any) -> str:
    """A human-readable model name for result files: the config's ``name`` if any, else the class name."""
    config = getattr(model, "config", None)
    name = getattr(config, "name", None)
    return str(name) if name else type(model).__name__
