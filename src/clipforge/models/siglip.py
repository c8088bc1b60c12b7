"""SigLIP (Zhai et al. 2023) and SigLIP 2 (Tschannen et al. 2025): CLIP's two towers with SigLIP's shapes.

Everything that makes a SigLIP model is data in ``SigLIPConfig``: the image tower is a ViT without class token
or pre-norm whose MAP head output is the embedding (``vision.proj=False``); the text tower is bidirectional
(``text.causal=False``), pooled at the last position (``text.pool="last"``) with a biased linear head; the logit
scale is not clamped and a logit bias is learned. So the class is CLIP's, with its own config and name, and the
same surface: ``encode_image``, ``encode_text``, ``forward``, ``towers()``.
"""

from __future__ import annotations

from clipforge.models.clip import CLIP
from clipforge.models.config import SigLIPConfig


class SigLIP(CLIP):
    """A SigLIP model: an image tower, a text tower, a learnable logit scale and bias.

    Args:
        config: The full model config (see ``SigLIPConfig``).
    """

    config: SigLIPConfig

    def __init__(self, config: SigLIPConfig):
        super().__init__(config)
