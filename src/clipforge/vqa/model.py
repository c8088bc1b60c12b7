"""VQA by rendering: a CLIPPO backbone and a classifier head over a fixed answer vocabulary (CLIPPO §4.4).

The input is one canvas, the question rendered at the top and the image below it (see
``clipforge.vqa.compose.QuestionImageComposer``), so question and image tokens meet in the ViT's own
self-attention; no fusion module is needed. The head reads the backbone's pooled, projected embedding
before L2 normalisation (``encode_text(pixels, normalize=False)``: CLIPPO's uint8 entry point into its one
tower): the same vector contrastive pre-training shapes, and the whole backbone is fine-tuned with the head.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from clipforge.config import ConfigError
from clipforge.models.clippo import CLIPPO


@dataclass(frozen=True)
class VQAHeadConfig:
    """The classifier head.

    Attributes:
        answers: The answer vocabulary, in output order.
        hidden: Width of a hidden layer (LayerNorm → Linear → GELU → Linear); 0 is LayerNorm → Linear.
        dropout: Dropout before the last Linear, at training time.
    """

    answers: tuple[str, ...]
    hidden: int = 0
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if len(self.answers) < 2 or len(set(self.answers)) != len(self.answers):
            raise ConfigError(f"head.answers: expected at least two distinct answers, got {list(self.answers)}")
        if self.hidden < 0:
            raise ConfigError(f"head.hidden must be >= 0, got {self.hidden}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"head.dropout must be in [0, 1), got {self.dropout}")


class VQAHead(nn.Module):
    """LayerNorm → [Linear → GELU] → Dropout → Linear: pooled features (B, D) → answer logits (B, A).

    Args:
        dim: Input feature dimension.
        config: Hidden width, dropout and the answers (their count is the output width).
    """

    def __init__(self, dim: int, config: VQAHeadConfig):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.hidden = nn.Sequential(nn.Linear(dim, config.hidden), nn.GELU()) if config.hidden else nn.Identity()
        self.dropout = nn.Dropout(config.dropout)
        self.out = nn.Linear(config.hidden or dim, len(config.answers))
        nn.init.zeros_(self.out.weight)  # start from uniform answer probabilities: loss log(A) at step 0
        nn.init.zeros_(self.out.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.out(self.dropout(self.hidden(self.norm(features))))


class VQA(nn.Module):
    """A CLIPPO backbone and a head: composed uint8 canvases (B, 3, H, W) → answer logits (B, A).

    Args:
        backbone: The CLIPPO model (its one ViT encodes the composed canvas).
        config: The head's config and the answer vocabulary.
    """

    def __init__(self, backbone: CLIPPO, config: VQAHeadConfig):
        super().__init__()
        if not isinstance(backbone, CLIPPO):
            raise TypeError(f"VQA by rendering needs a CLIPPO backbone, got {type(backbone).__name__}")
        self.backbone, self.config = backbone, config
        self.head = VQAHead(backbone.config.embed_dim, config)

    @property
    def answers(self) -> tuple[str, ...]:
        """The answer vocabulary, in output order."""
        return self.config.answers

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pooled, projected, unnormalised features (B, embed_dim) of composed uint8 canvases (B, 3, H, W)."""
        # CLIPPO's uint8 entry point: it normalises with the model's mean/std, as for rendered text.
        return self.backbone.encode_text(pixels, normalize=False)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Answer logits (B, A) for composed uint8 canvases (B, 3, H, W)."""
        return self.head(self.features(pixels))
