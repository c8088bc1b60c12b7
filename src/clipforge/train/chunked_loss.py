"""The contrastive losses in blocks of rows: the (N, M) logits never exist at once (memory O(chunk · M)).

``clip_loss(..., chunk_size=c)`` and ``siglip_loss(..., chunk_size=c)`` call these. Both losses are sums over rows
(CLIP: a cross-entropy per row of each direction; SigLIP: a sum of log-sigmoids per row), so each block of ``c`` rows
is scored against all M columns on its own and the block sums are added. Every block runs under
``torch.utils.checkpoint``: its (c, M) logits are freed after the forward pass and recomputed when the backward pass
reaches the block, so the backward pass holds one block's logits at a time too (the autograd engine finishes a
block's nodes before it starts the previous block's). What stays are the features and their gradients, O(N · D).

CLIP's two directions are both row-wise cross-entropies: image rows against the text columns, and text rows against
the image columns. In the single-process loss the second is the column direction of the first matrix, but in the
distributed local loss (``image_columns`` / ``text_columns`` gathered, ``offset = rank · N``) it is a different
(N, M) matrix, ``text_features @ image_columns.T``. So each block computes its rows of both matrices (the same two
matrix products, in total, as the plain loss) and no column-wise logsumexp is needed in either case.

The result equals the plain loss, and so does every gradient, up to float rounding (the tests compare within 1e-5
in fp32, with and without columns and offset, and SigLIP's ``negatives_only``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


def check_chunk_size(chunk_size: int) -> None:
    """Raises ValueError unless ``chunk_size`` is a positive int (not a bool)."""
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size <= 0:
        raise ValueError(f"chunk_size: expected a positive number of rows or None, got {chunk_size!r}")


def _sum_blocks(block: Callable[[int, int], torch.Tensor], n: int, chunk_size: int) -> torch.Tensor:
    """``Σ block(start, stop)`` over the row blocks ``[start, stop)`` of ``chunk_size`` rows (the last may be short)."""
    check_chunk_size(chunk_size)
    total = block(0, min(n, chunk_size)).float()  # on the features' device
    for start in range(chunk_size, n, chunk_size):
        total = total + block(start, min(n, start + chunk_size))
    return total


def chunked_clip_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
                      logit_bias: torch.Tensor | None, image_columns: torch.Tensor, text_columns: torch.Tensor,
                      offset: int, chunk_size: int, label_smoothing: float = 0.0) -> torch.Tensor:
    """``clip_loss`` computed ``chunk_size`` rows at a time (see the module docstring).

    Args:
        image_features: (N, D) image rows.
        text_features: (N, D) text rows of the same pairs.
        logit_scale: The temperature (logits = scale · cos).
        logit_bias: Optional scalar added to every logit.
        image_columns: (M, D) the columns of the text rows.
        text_columns: (M, D) the columns of the image rows.
        offset: Column of row 0's positive pair.
        chunk_size: Rows per block.
        label_smoothing: Each row's target puts this much mass uniformly over the M columns.

    Returns:
        The scalar loss: the mean over the N rows of both directions' cross-entropies, halved.
    """
    def block(start: int, stop: int) -> torch.Tensor:
        score = functools.partial(clip_block_sum, offset=offset + start, label_smoothing=label_smoothing)
        return checkpoint(score, image_features[start:stop], text_features[start:stop], text_columns, image_columns,
                          logit_scale, logit_bias, use_reentrant=False)

    return _sum_blocks(block, image_features.shape[0], chunk_size) / (2 * image_features.shape[0])


def clip_block_sum(image_rows: torch.Tensor, text_rows: torch.Tensor, text_columns: torch.Tensor,
                   image_columns: torch.Tensor, logit_scale: torch.Tensor, logit_bias: torch.Tensor | None, *,
                   offset: int, label_smoothing: float = 0.0) -> torch.Tensor:
    """The summed cross-entropies of one block of rows, both directions; row 0's positive sits at column ``offset``."""
    logits_per_image = logit_scale * image_rows @ text_columns.T  # (c, M)
    logits_per_text = logit_scale * text_rows @ image_columns.T  # (c, M)
    if logit_bias is not None:
        logits_per_image, logits_per_text = logits_per_image + logit_bias, logits_per_text + logit_bias
    labels = torch.arange(offset, offset + image_rows.shape[0], device=image_rows.device)
    return (F.cross_entropy(logits_per_image.float(), labels, reduction="sum", label_smoothing=label_smoothing)
            + F.cross_entropy(logits_per_text.float(), labels, reduction="sum", label_smoothing=label_smoothing))


def chunked_siglip_loss(image_features: torch.Tensor, logit_scale: torch.Tensor, logit_bias: torch.Tensor | None,
                        text_columns: torch.Tensor, offset: int, negatives_only: bool,
                        chunk_size: int) -> torch.Tensor:
    """``siglip_loss`` computed ``chunk_size`` image rows at a time against all text columns.

    Args:
        image_features: (N, D) image rows.
        logit_scale: The temperature.
        logit_bias: The learned bias; ``None`` means 0.
        text_columns: (M, D) the text columns.
        offset: Column of row 0's positive pair.
        negatives_only: Every sign −1 (no positive pair among the columns).
        chunk_size: Rows per block.

    Returns:
        The scalar loss: the sum over columns, averaged over the N rows.
    """
    def block(start: int, stop: int) -> torch.Tensor:
        score = functools.partial(siglip_block_sum, offset=offset + start, negatives_only=negatives_only)
        return checkpoint(score, image_features[start:stop], text_columns, logit_scale, logit_bias,
                          use_reentrant=False)

    return _sum_blocks(block, image_features.shape[0], chunk_size) / image_features.shape[0]


def siglip_block_sum(image_rows: torch.Tensor, text_columns: torch.Tensor, logit_scale: torch.Tensor,
                  logit_bias: torch.Tensor | None, *, offset: int, negatives_only: bool) -> torch.Tensor:
    """``Σ −log σ(z · logit)`` over one block of image rows and every text column (z = +1 on the positives)."""
    logits = logit_scale * image_rows @ text_columns.T  # (c, M)
    if logit_bias is not None:
        logits = logits + logit_bias
    c, m = logits.shape
    signs = -torch.ones(c, m, device=logits.device, dtype=torch.float32)
    if not negatives_only:
        signs[torch.arange(c, device=logits.device), torch.arange(offset, offset + c, device=logits.device)] = 1.0
    return -F.logsigmoid(signs * logits.float()).sum()
