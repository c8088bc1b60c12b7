"""The CLIP model: an image tower and a text tower projected into one space (Radford et al. 2021)."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from clipforge.models.config import CLIPConfig, CLIPPOConfig, SigLIPConfig, ViTConfig
from clipforge.models.resnet import ModifiedResNet
from clipforge.models.text import TextTransformer
from clipforge.models.vit import VisionTransformer


class CLIPOutput(NamedTuple):
    """What ``CLIP.forward`` returns: L2-normalised features (``None`` for an input not given) and the (clamped,
    exponentiated) logit scale."""

    image_features: torch.Tensor | None
    text_features: torch.Tensor | None
    logit_scale: torch.Tensor
    logit_bias: torch.Tensor | None


class ContrastiveModel(nn.Module):
    """What every model family shares: a learnable temperature (and optional bias) and ``forward``.

    Subclasses set ``visual`` (the image tower) and define ``encode_text``; ``config`` carries
    ``init_logit_scale``, ``init_logit_bias`` and ``max_logit_scale``.
    """

    visual: nn.Module
    config: CLIPConfig | CLIPPOConfig | SigLIPConfig

    def __init__(self, config: CLIPConfig | CLIPPOConfig | SigLIPConfig):
        super().__init__()
        self.config = config
        self.logit_scale = nn.Parameter(torch.tensor(float(config.init_logit_scale)))
        self.logit_bias: nn.Parameter | None = None
        if config.init_logit_bias is not None:
            self.logit_bias = nn.Parameter(torch.tensor(float(config.init_logit_bias)))

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Embeds normalised images (B, 3, H, W) → (B, embed_dim), optionally L2-normalised."""
        x = self.visual(images)
        return F.normalize(x, dim=-1) if normalize else x

    def encode_text(self, text: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        raise NotImplementedError

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        """Recomputes each block's activations in the backward pass to save memory."""
        for module in self.modules():
            if hasattr(module, "grad_checkpointing"):
                module.grad_checkpointing = enabled  # type: ignore[assignment]  # torch's __getattr__: Tensor | Module

    def scale(self) -> torch.Tensor:
        """The logit scale as used: exp(logit_scale), clamped at exp(max_logit_scale) unless that is ``None``."""
        if self.config.max_logit_scale is None:
            return self.logit_scale.exp()
        return self.logit_scale.clamp(max=self.config.max_logit_scale).exp()

    def forward(self, images: torch.Tensor | None = None, text: torch.Tensor | None = None) -> CLIPOutput:
        """Normalised features of both inputs (either may be ``None``) and the logit scale (and bias)."""
        image_features = self.encode_image(images, normalize=True) if images is not None else None
        text_features = self.encode_text(text, normalize=True) if text is not None else None
        return CLIPOutput(image_features, text_features, self.scale(), self.logit_bias)


def image_tower(config: CLIPConfig | CLIPPOConfig | SigLIPConfig) -> nn.Module:
    """The image tower its config's ``vision.kind`` names: a ViT or OpenAI's modified ResNet."""
    if isinstance(config.vision, ViTConfig):
        return VisionTransformer(config.vision, config.embed_dim, config.vision.act or config.act, config.norm_eps)
    return ModifiedResNet(config.vision, config.embed_dim)


class CLIP(ContrastiveModel):
    """Two towers and a learnable temperature.

    Args:
        config: The full model config (see ``CLIPConfig``).
    """

    config: CLIPConfig | SigLIPConfig

    def __init__(self, config: CLIPConfig | SigLIPConfig):
        super().__init__(config)
        self.visual = image_tower(config)
        self.text = TextTransformer(config.text, config.embed_dim, config.text.act or config.act, config.norm_eps)

    def encode_text(self, text: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Embeds token ids (B, T) → (B, embed_dim), optionally L2-normalised."""
        x = self.text(text)
        return F.normalize(x, dim=-1) if normalize else x

    def towers(self) -> dict[str, nn.Module]:
        """The model's towers by name, e.g. for LiT-style locking: ``{"image": ..., "text": ...}``."""
        return {"image": self.visual, "text": self.text}
