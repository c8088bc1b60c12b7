"""One optimiser step's forward and backward over the global batch, directly or with gradient caching.

Gradient caching (Gao et al. 2021, "Scaling Deep Contrastive Learning Batch Size under Memory Limited
Setup") splits the local batch into micro-batches but keeps every negative: (1) embed every
micro-batch without a graph; (2) compute the loss on those cached features as leaves, and backpropagate
to them; (3) re-embed each micro-batch with a graph and backpropagate the cached feature gradients
through it. The parameter gradients equal the full-batch step's, at one extra forward pass. Random
ops inside the towers (patch dropout) replay the same numbers in (3) as in (1).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from typing import NamedTuple

import torch
from torch import nn

from clipforge.train.distributed import Runtime, gather_features
from clipforge.train.loss import clip_distill_loss, siglip_loss, siglip_ring_loss

LossFn = Callable[..., torch.Tensor]


class Distillation(NamedTuple):
    """A teacher's (no-grad) L2-normalised features of this rank's batch and its logit scale, with the term's weight
    and form (``clip_distill_loss``): the loss becomes ``contrastive + weight × distillation``. ``terms``, when given,
    receives each step's distillation term (detached, unweighted) for the log."""

    image_features: torch.Tensor
    text_features: torch.Tensor
    logit_scale: torch.Tensor
    weight: float = 1.0
    form: str = "kl"
    terms: list[torch.Tensor] | None = None


def encode(model: nn.Module, images: torch.Tensor, texts: torch.Tensor, lock: str) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-normalised (image, text) features; a locked tower runs without a graph."""
    with torch.no_grad() if lock == "image" else nullcontext():
        image_features = model.encode_image(images, normalize=True)
    with torch.no_grad() if lock == "text" else nullcontext():
        text_features = model.encode_text(texts, normalize=True)
    return image_features, text_features


def global_loss(image_features: torch.Tensor, text_features: torch.Tensor, model: nn.Module, loss_fn: LossFn,
                runtime: Runtime, local_loss: bool, exchange: str = "gather",
                distill: Distillation | None = None) -> torch.Tensor:
    """The loss of this rank's features against the global batch's (gathered with gradient, or passed around a ring).

    Without ``local_loss`` every rank computes the full global loss (all rows, all columns); with it,
    its own rows against all columns, labels offset by ``rank × local batch`` (OpenCLIP's local loss).
    ``exchange="ring"`` (``loss_fn`` must be ``siglip_loss``) is SigLIP's local loss without a gather:
    ``siglip_ring_loss``. ``distill`` adds the distillation term over the same rows and columns.
    """
    loss = _contrastive_loss(image_features, text_features, model, loss_fn, runtime, local_loss, exchange)
    if distill is None:
        return loss
    if exchange == "ring":
        raise ValueError("distillation needs the gathered batch: exchange='gather'")
    d = distill
    all_images, all_texts = gather_features(image_features, runtime), gather_features(text_features, runtime)
    teacher_images, teacher_texts = gather_features(d.image_features, runtime), gather_features(d.text_features,
                                                                                               runtime)
    if local_loss and runtime.distributed:
        term = clip_distill_loss(image_features, text_features, model.scale(), d.image_features, d.text_features,
                                 d.logit_scale, image_columns=all_images, text_columns=all_texts,
                                 teacher_image_columns=teacher_images, teacher_text_columns=teacher_texts, form=d.form)
    else:
        term = clip_distill_loss(all_images, all_texts, model.scale(), teacher_images, teacher_texts, d.logit_scale,
                                 form=d.form)
    if d.terms is not None:
        d.terms.append(term.detach())
    return loss + d.weight * term


def _contrastive_loss(image_features: torch.Tensor, text_features: torch.Tensor, model: nn.Module, loss_fn: LossFn,
                      runtime: Runtime, local_loss: bool, exchange: str) -> torch.Tensor:
    scale, bias = model.scale(), model.logit_bias
    if exchange == "ring":
        if loss_fn is not siglip_loss:
            raise ValueError(f"exchange='ring' is SigLIP's exchange: loss_fn must be siglip_loss, got {loss_fn}")
        return siglip_ring_loss(image_features, text_features, scale, bias, runtime)
    if exchange != "gather":
        raise ValueError(f"exchange: expected 'gather' or 'ring', got {exchange!r}")
    all_images, all_texts = gather_features(image_features, runtime), gather_features(text_features, runtime)
    if local_loss and runtime.distributed:
        return loss_fn(image_features, text_features, scale, bias, image_columns=all_images, text_columns=all_texts,
                       offset=runtime.rank * image_features.shape[0])
    return loss_fn(all_images, all_texts, scale, bias)


def forward_backward(model: nn.Module, images: torch.Tensor, texts: torch.Tensor, loss_fn: LossFn, runtime: Runtime,
                     *, accum_steps: int = 1, local_loss: bool = False, exchange: str = "gather",
                     lock: str = "none", autocast: torch.dtype | None = None,
                     distill: Distillation | None = None) -> torch.Tensor:
    """Computes the step's loss and accumulates its gradients into ``.grad`` (no optimiser step, no all-reduce).

    Args:
        model: A CLIP-family model (``encode_image``, ``encode_text``, ``scale()``, ``logit_bias``).
        images: This rank's (B_local, 3, H, W) images.
        texts: This rank's (B_local, T) text input.
        loss_fn: A pure loss from ``clipforge.train.loss``.
        runtime: Rank and world size, for the gather.
        accum_steps: Micro-batches; 1 is a plain step, more uses gradient caching.
        local_loss: See ``global_loss``.
        exchange: ``gather`` or ``ring`` (SigLIP only): see ``global_loss``.
        lock: ``none``, ``image`` or ``text``: the tower that gets no gradient.
        autocast: The autocast dtype (``None``: full precision).
        distill: The teacher's features of this rank's batch: adds the distillation term (``global_loss``).

    Returns:
        The loss, detached (still on the device: reading it is the caller's host sync).
    """
    amp = lambda: torch.autocast(images.device.type, dtype=autocast, enabled=autocast is not None)
    if accum_steps == 1:
        with amp():
            image_features, text_features = encode(model, images, texts, lock)
            loss = global_loss(image_features, text_features, model, loss_fn, runtime, local_loss, exchange, distill)
        loss.backward()
        return loss.detach()

    chunks = list(zip(images.chunk(accum_steps), texts.chunk(accum_steps)))
    rng_states, cached = [], []
    with torch.no_grad(), amp():  # (1) features of every micro-batch, no graph
        for chunk_images, chunk_texts in chunks:
            rng_states.append(_rng_state(images.device))
            cached.append(encode(model, chunk_images, chunk_texts, lock))
    image_cache = torch.cat([c[0] for c in cached]).requires_grad_(lock != "image")
    text_cache = torch.cat([c[1] for c in cached]).requires_grad_(lock != "text")
    with amp():  # (2) the loss on the cached features; gradients flow to the cache and the logit scale/bias
        loss = global_loss(image_cache, text_cache, model, loss_fn, runtime, local_loss, exchange, distill)
    loss.backward()
    sizes = [len(c[0]) for c in cached]
    image_grads = image_cache.grad.split(sizes) if image_cache.grad is not None else [None] * len(chunks)
    text_grads = text_cache.grad.split(sizes) if text_cache.grad is not None else [None] * len(chunks)
    final_state = _rng_state(images.device)
    for (chunk_images, chunk_texts), state, g_image, g_text in zip(chunks, rng_states, image_grads, text_grads):
        _set_rng_state(state, images.device)  # (3) replay the micro-batch with a graph
        with amp():
            image_features, text_features = encode(model, chunk_images, chunk_texts, lock)
        outputs = [(f, g) for f, g in ((image_features, g_image), (text_features, g_text)) if g is not None]
        torch.autograd.backward([f for f, _ in outputs], [g for _, g in outputs])
    _set_rng_state(final_state, images.device)
    return loss.detach()


def _rng_state(device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def _set_rng_state(state: tuple[torch.Tensor, torch.Tensor | None], device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)
