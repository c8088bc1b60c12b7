"""Contrastive losses as pure functions of features: CLIP's InfoNCE, SigLIP's sigmoid loss, and distillation.

Neither function gathers anything: in a distributed run the caller passes its local rows and the
globally gathered columns (``clipforge.train.distributed.gather_features``) and an ``offset`` that says
where the local rows sit in the global batch (``rank * local_batch``). With ``offset=0`` and the same
tensors as rows and columns these are the ordinary single-process losses.

``siglip_ring_loss`` is SigLIP's distributed loss without the gather: the sigmoid loss is a sum over
pairs, so it splits into blocks; the text blocks travel around the ring (``ring_shift``, the one place
that talks to other processes) and each block is scored by ``siglip_loss``.

``chunk_size`` on ``clip_loss`` and ``siglip_loss`` computes the same loss in blocks of rows, each recomputed in the
backward pass, so the (N, M) logits never exist at once (``clipforge.train.chunked_loss``).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from clipforge.train.chunked_loss import (
    check_chunk_size,
    chunked_clip_loss,
    chunked_siglip_loss,
    clip_block_sum,
    siglip_block_sum,
)
from clipforge.train.distributed import Runtime, ring_shift


def clip_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor | None = None,
    *,
    image_columns: torch.Tensor | None = None,
    text_columns: torch.Tensor | None = None,
    offset: int = 0,
    chunk_size: int | None = None,
    label_smoothing: float = 0.0,
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
        chunk_size: Compute the loss ``chunk_size`` rows at a time against all columns, each block's logits
            recomputed in the backward pass: memory O(chunk_size · M) instead of O(N · M), the same loss and
            gradients. ``None`` (or a chunk of at least N rows): the plain computation.
        label_smoothing: Label smoothing of the contrastive targets: each row's target keeps ``1 − ε`` on its pair and
            spreads ``ε`` uniformly over the M columns (``F.cross_entropy``'s ``label_smoothing``); 0: one-hot.

    Returns:
        The scalar loss, averaged over the N rows of both directions.

    Raises:
        ValueError: ``chunk_size`` is not a positive int.
    """
    image_columns = image_features if image_columns is None else image_columns
    text_columns = text_features if text_columns is None else text_columns
    if chunk_size is not None and not _fits(chunk_size, image_features):
        return chunked_clip_loss(image_features, text_features, logit_scale, logit_bias, image_columns, text_columns,
                                 offset, chunk_size, label_smoothing)
    return clip_block_sum(image_features, text_features, text_columns, image_columns, logit_scale, logit_bias,
                          offset=offset, label_smoothing=label_smoothing) / (2 * image_features.shape[0])


def siglip_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor | None = None,
    *,
    image_columns: torch.Tensor | None = None,
    text_columns: torch.Tensor | None = None,
    offset: int = 0,
    negatives_only: bool = False,
    chunk_size: int | None = None,
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
        negatives_only: No positive pair among the columns (every sign −1; ``offset`` is ignored): the
            blocks of another rank's texts in ``siglip_ring_loss``.
        chunk_size: Compute the loss ``chunk_size`` image rows at a time against all text columns, as in
            ``clip_loss``.

    Returns:
        The scalar loss: the sum over columns, averaged over the N rows.

    Raises:
        ValueError: ``chunk_size`` is not a positive int.
    """
    del image_columns
    text_columns = text_features if text_columns is None else text_columns
    if chunk_size is not None and not _fits(chunk_size, image_features):
        return chunked_siglip_loss(image_features, logit_scale, logit_bias, text_columns, offset, negatives_only,
                                   chunk_size)
    return siglip_block_sum(image_features, text_columns, logit_scale, logit_bias, offset=offset,
                            negatives_only=negatives_only) / image_features.shape[0]


def _fits(chunk_size: int, rows: torch.Tensor) -> bool:
    """Whether one block of ``chunk_size`` rows holds all the rows (then the plain loss is the same work, no recompute).

    Raises:
        ValueError: ``chunk_size`` is not a positive int.
    """
    check_chunk_size(chunk_size)
    return chunk_size >= rows.shape[0]


def siglip_ring_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor | None,
    runtime: Runtime,
) -> torch.Tensor:
    """This rank's SigLIP loss against the global batch, the texts passed around the ring (big_vision's chunked
    sigmoid loss; open_clip's ``SigLipLoss(dist_impl="shift")``).

    The rank scores its images against its own texts (the positives on the diagonal), then ``world_size − 1``
    times sends the text block it holds to the right neighbour, receives the left one's and scores its images
    against it with every sign −1. The loss is the sum over the blocks divided by the LOCAL batch n::

        L_r = (1/n) Σ_{i on rank r} Σ_{j in the global batch} −log σ(z_ij · (scale · cos_ij + bias))

    which is ``siglip_loss(image_r, text_r, text_columns=all_texts, offset=r·n)``, the local loss of the
    gather. The single-process loss over the global batch of N = world_size · n pairs divides the same
    double sum by N, so when every rank holds n pairs it is the mean over ranks of the L_r, and the training
    loop gets its gradient: each rank backpropagates its own L_r, the ring's backward brings every rank the
    gradient of Σ_r L_r with respect to its text features (its image features appear in its L_r only), and
    ``all_reduce_gradients`` divides the sum by the world size. Likewise ``all_reduce_mean`` of the
    L_r is the global loss that is logged.

    Memory: no rank builds more than one (n, n) block of logits at a time, in the forward pass and, as each
    block is recomputed in the backward pass (``torch.utils.checkpoint``), in the backward pass too; no
    (N, N) or (n, N) logits and no all-gather. What the backward pass keeps are the received text blocks
    (world_size · n · D values, as many as a gather of the texts would hold, but received one block at a
    time).

    Args:
        image_features: (n, D) this rank's L2-normalised image features.
        text_features: (n, D) this rank's L2-normalised text features of the same pairs; every rank must hold
            the same n (the blocks travel as fixed-size messages).
        logit_scale: The exponentiated temperature.
        logit_bias: The learned bias; ``None`` means 0.
        runtime: Rank and world size; every rank of the default process group must call this together.

    Returns:
        The scalar loss of this rank (the single-process ``siglip_loss`` in a world of one).
    """
    block_loss = functools.partial(_checkpointed_block, image_features, logit_scale=logit_scale,
                                   logit_bias=logit_bias)
    loss = block_loss(text_features, negatives_only=False)
    block = text_features
    for _ in range(runtime.world_size - 1):
        block = ring_shift(block, runtime)  # (n, D): the texts of rank − k after k shifts
        loss = loss + block_loss(block, negatives_only=True)
    return loss


def _checkpointed_block(image_features: torch.Tensor, text_block: torch.Tensor, *, logit_scale: torch.Tensor,
                        logit_bias: torch.Tensor | None, negatives_only: bool) -> torch.Tensor:
    """``siglip_loss`` of the image rows against one text block, its (n, n) logits recomputed in the backward
    pass rather than kept (so the ring holds one block's logits at a time)."""
    loss = functools.partial(siglip_loss, negatives_only=negatives_only)
    return checkpoint(loss, image_features, text_block, logit_scale, logit_bias, use_reentrant=False)


def distill_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, form: str = "kl") -> torch.Tensor:
    """Row-wise distillation of softmax distributions: the teacher's rows are the targets of the student's.

    ``cross_entropy`` is OpenCLIP's ``DistillClipLoss.dist_loss``: ``-mean_rows sum_j p_t log p_s``. ``kl`` subtracts
    the teacher's entropy, ``mean_rows KL(p_t ‖ p_s)``: the same gradient for the student, and 0 when the student's
    logits equal the teacher's (up to a constant per row). No gradient flows into ``teacher_logits``.

    Args:
        student_logits: (N, M) logits, one distribution per row.
        teacher_logits: (N, M) the teacher's logits of the same rows and columns.
        form: ``kl`` or ``cross_entropy``.

    Returns:
        The scalar loss, averaged over the N rows.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} differ in shape")
    log_student = student_logits.float().log_softmax(dim=1)
    log_teacher = teacher_logits.detach().float().log_softmax(dim=1)
    if form == "cross_entropy":
        return -(log_teacher.exp() * log_student).sum(dim=1).mean()
    if form == "kl":
        return F.kl_div(log_student, log_teacher, reduction="batchmean", log_target=True)
    raise ValueError(f"form: expected 'kl' or 'cross_entropy', got {form!r}")


def clip_distill_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    teacher_image_features: torch.Tensor,
    teacher_text_features: torch.Tensor,
    teacher_logit_scale: torch.Tensor,
    *,
    image_columns: torch.Tensor | None = None,
    text_columns: torch.Tensor | None = None,
    teacher_image_columns: torch.Tensor | None = None,
    teacher_text_columns: torch.Tensor | None = None,
    form: str = "kl",
) -> torch.Tensor:
    """OpenCLIP's ``DistillClipLoss`` distillation term: ``distill_loss`` of the image→text and the text→image
    logits, averaged; the contrastive term is the caller's (``clip_loss``).

    The student's and the teacher's features may differ in width (only their (N, M) logits meet). Rows and columns as
    in ``clip_loss``: the columns default to the rows (a single process, or the gathered batch on every rank).

    Returns:
        The scalar distillation loss.
    """
    def columns(given: torch.Tensor | None, rows: torch.Tensor) -> torch.Tensor:
        return rows if given is None else given

    student_i2t = logit_scale * image_features @ columns(text_columns, text_features).T  # (N, M)
    student_t2i = logit_scale * text_features @ columns(image_columns, image_features).T  # (N, M)
    teacher_i2t = teacher_logit_scale * teacher_image_features @ columns(teacher_text_columns, teacher_text_features).T
    teacher_t2i = teacher_logit_scale * teacher_text_features @ columns(teacher_image_columns,
                                                                        teacher_image_features).T
    return (distill_loss(student_i2t, teacher_i2t, form) + distill_loss(student_t2i, teacher_t2i, form)) / 2


def simclr_loss(first: torch.Tensor, second: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's NT-Xent loss (Chen et al. 2020), SLIP's image-only term: each of the 2N embeddings of two views of
    N images should pick its other view among the 2N − 1 others.

    Args:
        first: (N, D) projected embeddings of the first views (normalised here).
        second: (N, D) those of the second views, in the same order.
        temperature: Divides the cosine similarities (SLIP: 0.1).

    Returns:
        The scalar loss, the mean over the 2N rows.
    """
    z = F.normalize(torch.cat([first, second]).float(), dim=-1)  # (2N, D)
    n = first.shape[0]
    logits = z @ z.T / temperature  # (2N, 2N)
    logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    return F.cross_entropy(logits, targets)


LOSSES = {"clip": clip_loss, "siglip": siglip_loss}
