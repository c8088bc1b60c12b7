"""CLIPPO: one shared ViT for images and for text rendered as images (Tschannen et al. 2022)."""

from __future__ import annotations

import torch
from torch import nn

from clipforge.models.clip import ContrastiveModel, image_tower
from clipforge.models.config import CLIPPOConfig


class CLIPPO(ContrastiveModel):
    """One tower, two forward passes, and a learnable temperature.

    The same public surface as ``CLIP``: ``encode_image`` takes normalised images, ``encode_text`` takes
    the text processor's output — here rendered text as uint8 pixels (B, 3, H, W), which the model
    normalises itself with its mean/std, exactly as its image transform does for photos.

    Args:
        config: The model config (see ``CLIPPOConfig``).
    """

    config: CLIPPOConfig
    mean: torch.Tensor  # (1, 3, 1, 1) buffers, not saved: the config holds them
    std: torch.Tensor

    def __init__(self, config: CLIPPOConfig):
        super().__init__(config)
        self.visual = image_tower(config)
        self.register_buffer("mean", torch.tensor(config.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(config.std).view(1, 3, 1, 1), persistent=False)

    def encode_text(self, pixels: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Embeds rendered text, uint8 (B, 3, H, W) from the renderer → (B, embed_dim)."""
        if pixels.dtype != torch.uint8:
            raise TypeError(f"CLIPPO.encode_text takes the renderer's uint8 pixels, got {pixels.dtype}")
        dtype = next(self.visual.parameters()).dtype
        x = (pixels.to(dtype).div(255) - self.mean.to(dtype)) / self.std.to(dtype)
        return self.encode_image(x, normalize)

    def towers(self) -> dict[str, nn.Module]:
        """One shared tower: locking either side locks both."""
        return {"image": self.visual, "text": self.visual}
