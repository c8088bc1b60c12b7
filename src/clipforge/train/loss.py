"""Contrastive losses as pure functions of features: CLIP's InfoNCE and SigLIP's sigmoid loss.

Neither function gathers anything: in a distributed run the caller passes its local rows and the
globally gathered columns (``clipforge.train.distributed.gather_features``) and an ``offset`` that says
where the local rows sit in the global batch (``rank * local_batch``). With ``offset=0`` and the same
tensors as rows and columns these are the ordinary single-process losses.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def clip_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor | None = None,
    *,
    image_columns: torch.Tensor | None = None,
    text_columns: torch.Tensor | None = None,
    offset: int = 0,
) -> torch.Tensor:
    """Symmetric InfoNCE (CLIP paper, Figure 3): cross-entropy over rows and over columns, averaged.

    Args:
        image_features: (N, D) L2-normalised image features, the rows of the image→text logits.
        text_features: (N, D) L2-normalised text features of the same pairs, the rows of text→image.
        logit_scale: The (exponentiated, clamped) temperature: logits = scale · cos.
        logit_bias: Optional scalar added to every logit (it cancels in the softmax; accepted so that
            every loss takes the same arguments).
        image_columns: (M, D) image features to contrast text rows against; default ``image_features``.
            In a distributed run: the gathered global batch, so every negative counts.
        text_columns: (M, D) likewise for the image rows; default ``text_features``.
        offset: Index of row 0's positive pair among the columns (``rank * N`` for OpenCLIP's local loss).

    Returns:
        The scalar loss, averaged over the N rows of both directions.
    """
    image_columns = image_features if image_columns is None else image_columns
    text_columns = text_features if text_columns is None else text_columns
    logits_per_image = logit_scale * image_features @ text_columns.T  # (N, M)
    logits_per_text = logit_scale * text_features @ image_columns.T  # (N, M)
    if logit_bias is not None:
        logits_per_image, logits_per_text = logits_per_image + logit_bias, logits_per_text + logit_bias
    labels = torch.arange(offset, offset + image_features.shape[0], device=image_features.device)
    return (F.cross_entropy(logits_per_image.float(), labels) + F.cross_entropy(logits_per_text.float(), labels)) / 2


def siglip_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor | None = None,
    *,
    image_columns: torch.Tensor | None = None,
    text_columns: torch.Tensor | None = None,
    offset: int = 0,
) -> torch.Tensor:
    """SigLIP's pairwise sigmoid loss (Zhai et al. 2023, Algorithm 1): each image–text pair is a binary task.

    ``-mean_rows sum_columns log σ(z · (scale · cos + bias))`` with z = +1 on the positive pair, −1 elsewhere.
    Only image rows against text columns are needed (the loss is symmetric); ``image_columns`` is
    accepted for a uniform signature and ignored.

    Args:
        image_features: (N, D) L2-normalised image features (rows).
        text_features: (N, D) L2-normalised text features of the same pairs.
        logit_scale: The exponentiated temperature (SigLIP initialises it at 10).
        logit_bias: The learned bias (SigLIP initialises it at −10); ``None`` means 0.
        image_columns: Ignored.
        text_columns: (M, D) text features to contrast the image rows against; default ``text_features``.
        offset: Column of row 0's positive pair.

    Returns:
        The scalar loss: the sum over columns, averaged over the N rows.
    """
    del image_columns
    text_columns = text_features if text_columns is None else text_columns
    logits = logit_scale * image_features @ text_columns.T  # (N, M)
    if logit_bias is not None:
        logits = logits + logit_bias
    n, m = logits.shape
    signs = -torch.ones(n, m, device=logits.device, dtype=torch.float32)
    signs[torch.arange(n, device=logits.device), torch.arange(offset, offset + n, device=logits.device)] = 1.0
    return -F.logsigmoid(signs * logits.float()).sum() / n


LOSSES = {"clip": clip_loss, "siglip": siglip_loss}
