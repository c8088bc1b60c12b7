"""Vision Transformer image tower, as in CLIP (Radford et al. 2021) with room for mean and MAP pooling, and SigLIP
2's NaFlex inputs (each image at its own aspect ratio, padded patches masked: ``clipforge.models.naflex``)."""

from __future__ import annotations

import itertools
import math
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from clipforge.models.config import ViTConfig
from clipforge.models.layers import MAPHead, Transformer, make_act
from clipforge.models.naflex import NaFlexBatch, check_batch, conv_weight_as_linear, from_images, resize_positions


class VisionTransformer(nn.Module):
    """Patch embedding → [class token] + positions → ``ln_pre`` → blocks → pool → ``ln_post`` → [projection].

    Args:
        config: The tower's shape.
        embed_dim: Output (shared embedding space) dimension.
        act: Activation name for the MLPs.
        norm_eps: LayerNorm epsilon.
    """

    def __init__(self, config: ViTConfig, embed_dim: int, act: str, norm_eps: float = 1e-5):
        super().__init__()
        self.config = config
        width, scale = config.width, config.width**-0.5
        self.stem = conv_stem(config.patch_size, width, act) if config.stem == "conv" else None
        last_conv = cast(nn.Conv2d, self.stem[-2]) if self.stem is not None else None  # an activation follows it
        in_channels, kernel = (last_conv.out_channels, 1) if last_conv is not None else (3, config.patch_size)
        self.patch_embed = nn.Conv2d(in_channels, width, kernel, stride=kernel, bias=config.patch_bias)
        n_tokens = config.grid_size**2 + int(config.class_token)
        self.class_token = nn.Parameter(scale * torch.randn(width)) if config.class_token else None
        self.pos_embed = nn.Parameter(scale * torch.randn(n_tokens, width))
        self.ln_pre = nn.LayerNorm(width, eps=norm_eps) if config.ln_pre else nn.Identity()
        self.transformer = Transformer(width, config.layers, config.heads, config.mlp_ratio, make_act(act),
                                       norm_eps=norm_eps, drop_path=config.drop_path, dropout=config.dropout)
        self.attn_pool: MAPHead | None = None
        if config.pool == "map":
            self.attn_pool = MAPHead(width, config.heads, config.mlp_ratio, make_act(act), norm_eps)
        self.ln_post = nn.LayerNorm(width, eps=norm_eps)
        self.proj = nn.Parameter(scale * torch.randn(width, embed_dim)) if config.proj else None
        self.proj_bias = nn.Parameter(torch.zeros(embed_dim)) if config.proj_bias else None
        if config.init_gain != 1.0:
            with torch.no_grad():
                self.patch_embed.weight.mul_(config.init_gain)
                for name, param in self.transformer.named_parameters():
                    if name.endswith("weight") and param.ndim == 2:
                        param.mul_(config.init_gain)

    def forward(self, images: torch.Tensor | NaFlexBatch) -> torch.Tensor:
        """Encodes normalised images (B, 3, H, W) into (B, embed_dim) features (not L2-normalised).

        A NaFlex tower (``config.naflex``) also takes a ``NaFlexBatch``; plain images become one with every image
        the full (H/p, W/p) grid. Either is refused (ValueError) over the patch budget ``max_num_patches``.
        """
        if self.config.naflex:
            return self.forward_naflex(images if isinstance(images, NaFlexBatch) else
                                       from_images(images, self.config.patch_size, self.config.max_num_patches))
        if isinstance(images, NaFlexBatch):
            raise ValueError("a NaFlexBatch needs a NaFlex image tower (vision.naflex=True); this one takes "
                             f"images (B, 3, {self.config.image_size}, {self.config.image_size})")
        if self.stem is not None:
            images = self.stem(images)
        x = self.patch_embed(images).flatten(2).transpose(1, 2)  # (B, grid², width)
        if self.class_token is not None:
            x = torch.cat([self.class_token.expand(x.shape[0], 1, -1).to(x.dtype), x], dim=1)
        x = x + self.pos_embed.to(x.dtype)
        x = self._drop_patches(x)
        x = self.ln_pre(x)
        x = self.transformer(x)
        x = self.pool(x)
        if self.proj is None:
            return x  # SigLIP: the MAP head's output is the embedding
        x = x @ self.proj
        return x + self.proj_bias if self.proj_bias is not None else x

    def forward_naflex(self, batch: NaFlexBatch) -> torch.Tensor:
        """Encodes a NaFlex batch (patches (B, N, 3·p·p), mask (B, N), spatial shapes (B, 2)) into (B, embed_dim).

        The patch convolution's weight is applied to the flattened patches, the positions are resized to each
        image's grid, and the mask keeps padding out of every attention and the pooling (Siglip2VisionModel).
        """
        check_batch(batch, self.config.patch_size, self.config.max_num_patches)
        weight = self.patch_embed.weight
        x = F.linear(batch.patches.to(weight.dtype), conv_weight_as_linear(weight), self.patch_embed.bias)
        x = x + resize_positions(self.pos_embed, batch.spatial_shapes, x.shape[1]).to(x.dtype)  # (B, N, width)
        mask = batch.mask.to(device=x.device, dtype=torch.bool)  # (B, N): true at real patches
        x = self.transformer(self.ln_pre(x), mask)
        x = self.ln_post(x)
        if self.config.pool == "mean":
            x = (x * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        else:  # map: __post_init__ allows nothing else
            x = cast(MAPHead, self.attn_pool)(x, mask)
        if self.proj is None:
            return x
        x = x @ self.proj
        return x + self.proj_bias if self.proj_bias is not None else x

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """Reduces tokens (B, T, width) to one vector per image.

        ``cls`` normalises the class token (OpenAI); ``mean`` and ``map`` normalise every token first and
        then pool (OpenCLIP's ``avg``; big_vision's encoder norm before its MAP head).
        """
        if self.config.pool == "cls":
            return self.ln_post(x[:, 0])
        if self.config.pool == "mean":
            return self.ln_post(x[:, int(self.config.class_token):]).mean(dim=1)
        return cast(MAPHead, self.attn_pool)(self.ln_post(x))  # pool == "map": __init__ built it

    def _drop_patches(self, x: torch.Tensor) -> torch.Tensor:
        """Patch dropout (FLIP): keep a random subset of patch tokens during training, class token kept."""
        p = self.config.patch_dropout
        if not self.training or p == 0.0:
            return x
        n_prefix = int(self.config.class_token)
        prefix, patches = x[:, :n_prefix], x[:, n_prefix:]
        B, N, C = patches.shape
        keep = max(1, int(N * (1 - p)))
        idx = torch.rand(B, N, device=x.device).argsort(dim=1)[:, :keep]  # (B, keep)
        patches = patches.gather(1, idx.unsqueeze(-1).expand(-1, -1, C))
        return torch.cat([prefix, patches], dim=1)


def conv_stem(patch_size: int, width: int, act: str) -> nn.Sequential:
    """3×3 stride-2 convolutions (Xiao et al. 2021), ``log2(patch_size)`` of them, each normalised and activated.

    Channels double at each step and reach ``width // 2`` at the last one (at least 16 each), so the
    output grid equals the patch grid and ``patch_embed`` becomes a 1×1 projection to ``width``. Each conv but
    the last is followed by a GroupNorm (8 groups where the channels allow): Xiao et al. normalise with
    BatchNorm, but batch statistics would differ between a one-tower model's image and text passes and
    between training and evaluation; GroupNorm has neither problem. ``benchmarks/stem.py`` compares it with
    patches (figures in docs/models.md).
    """
    n = patch_size.bit_length() - 1
    channels = [3] + [max(16, width >> (n - i)) for i in range(n)]
    layers: list[nn.Module] = []
    for i, (c_in, c_out) in enumerate(itertools.pairwise(channels)):
        layers.append(nn.Conv2d(c_in, c_out, 3, stride=2, padding=1))
        if i < n - 1:
            layers.append(nn.GroupNorm(math.gcd(8, c_out), c_out))
        layers.append(make_act(act)())
    return nn.Sequential(*layers)
