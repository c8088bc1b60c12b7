"""SLIP and DeCLIP: more supervision from each pair, for small datasets.

**SLIP** (Mu et al. 2022, "SLIP: Self-supervision meets Language-Image Pre-training"): beside the contrastive
loss, a SimCLR loss on two more augmented views of each image, through a projector MLP of its own
(Linear–BN–ReLU–Linear–BN–ReLU–Linear, as SLIP's ``ssl_mlp``). SLIP puts the projector on the image tower's pooled
features; here it reads the image embedding before L2 normalisation, which every family (ResNet, ViT, CLIPPO's
shared tower, SigLIP) has. ``loss = contrastive + slip.weight × simclr``.

**DeCLIP** (Li et al. 2022, "Supervision Exists Everywhere"): *multi-view* supervision — a second augmented view
of each image and a second caption draw (another of its captions, through ``text_augment``), with the
contrastive loss averaged over the four image-view × caption pairings — and *nearest-neighbour* supervision — a
FIFO queue of past text embeddings; each image is also contrasted with the queue's nearest neighbour of its
caption's embedding (detached). ``loss = mean over pairings + declip.nn_weight × nn term``. DeCLIP's other term,
image self-supervision, is SLIP's here; its masked-language term is not built.

**Reading** (CLIPPO only): a curriculum for the one shared tower, which at small scale learns colour long before it
reads. Each caption is rendered a second time with its ink moved and scaled (``clipforge.data.augment.reading_view``)
and the two renderings are a positive pair under the run's contrastive loss, as CLIPPO's text/text pairs are;
``loss = … + reading.weight × contrastive(rendered, re-rendered)``.

The projector and the queue live on the model as ``model.recipe_heads`` (a ``RecipeHeads``): so the optimiser,
gradient all-reduce, checkpoints and resume hold them like any weight; the final model is exported without them
(``without_recipe_heads``). The extra views and captions come from the data (``clipforge.data.augment``); every
term sees the global batch (features gathered with gradient, as the contrastive loss does).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from clipforge.config import ConfigError
from clipforge.train.distributed import Runtime, gather_features
from clipforge.train.gradcache import global_loss
from clipforge.train.loss import simclr_loss

HEADS = "recipe_heads"


@dataclass(frozen=True)
class SlipConfig:
    """SLIP's image self-supervision (the train config's ``slip``).

    Attributes:
        weight: The SimCLR term's weight beside the contrastive loss (SLIP: 1).
        temperature: SimCLR's temperature (SLIP: 0.1).
        mlp_dim: The projector's hidden width (SLIP: 4096).
        out_dim: The projector's output width (SLIP: 256).
        view_scale: The crop-area range of the two SimCLR views (SLIP, as SimCLR: 0.08–1); their other
            augmentations are the run's ``augment`` (caption-preserving, as the main view's).
    """

    weight: float = 1.0
    temperature: float = 0.1
    mlp_dim: int = 4096
    out_dim: int = 256
    view_scale: tuple[float, float] = (0.08, 1.0)

    def __post_init__(self) -> None:
        if self.weight <= 0 or self.temperature <= 0:
            raise ConfigError(f"slip.weight and slip.temperature must be positive, got {self.weight}, "
                              f"{self.temperature}")
        if not 0 < self.view_scale[0] <= self.view_scale[1] <= 1:
            raise ConfigError(f"slip.view_scale: expected 0 < low <= high <= 1, got {list(self.view_scale)}")
        if self.mlp_dim <= 0 or self.out_dim <= 0:
            raise ConfigError(f"slip.mlp_dim and slip.out_dim must be positive, got {self.mlp_dim}, {self.out_dim}")


@dataclass(frozen=True)
class DeclipConfig:
    """DeCLIP's multi-view and nearest-neighbour supervision (the train config's ``declip``).

    Attributes:
        multi_view: A second image view and caption per pair; the contrastive loss averages the four pairings.
        nn_weight: The nearest-neighbour term's weight (0: none, and no queue).
        queue_size: Text embeddings the FIFO queue holds (DeCLIP: 64k).
        text_weight: The weight of a caption–caption term (0: none; needs ``multi_view``): each pair's two caption
            draws a positive pair under the run's contrastive loss, the other pairs' captions its negatives.
            DeCLIP's own text self-supervision is masked language modelling, which a causal text tower cannot
            do; this is its contrastive stand-in.
    """

    multi_view: bool = True
    nn_weight: float = 0.0
    queue_size: int = 4096
    text_weight: float = 0.0

    def __post_init__(self) -> None:
        if self.nn_weight < 0 or self.queue_size <= 0 or self.text_weight < 0:
            raise ConfigError(f"declip.nn_weight and declip.text_weight must be >= 0 and declip.queue_size positive, "
                              f"got {self.nn_weight}, {self.text_weight}, {self.queue_size}")
        if self.text_weight and not self.multi_view:
            raise ConfigError("declip.text_weight contrasts the two caption draws of multi_view: set "
                              "declip.multi_view: true")
        if not self.multi_view and not self.nn_weight:
            raise ConfigError("declip: neither multi_view nor nn_weight is on: nothing to add")


@dataclass(frozen=True)
class ReadingConfig:
    """CLIPPO's reading term (the train config's ``reading``): each caption against its own second rendering.

    Attributes:
        weight: The term's weight beside the image–text loss.
        scale: The range of the second rendering's size, as a fraction of the first (its place is uniform over the
            free space).
    """

    weight: float = 0.5
    scale: tuple[float, float] = (0.6, 1.0)

    def __post_init__(self) -> None:
        if self.weight <= 0:
            raise ConfigError(f"reading.weight must be positive, got {self.weight}")
        if not 0 < self.scale[0] <= self.scale[1] <= 1:
            raise ConfigError(f"reading.scale: expected 0 < low <= high <= 1, got {list(self.scale)}")


def image_views(slip: SlipConfig | None, declip: DeclipConfig | None, transform: Any,
                slip_transform: Any) -> tuple[Any, ...]:
    """The transform of each extra image view per sample, in the order ``recipe_forward_backward`` reads them:
    DeCLIP's second view (``transform``, the main view's), then SLIP's two (``slip_transform``)."""
    declip_views = (transform,) if declip is not None and declip.multi_view else ()
    return declip_views + ((slip_transform, slip_transform) if slip is not None else ())


class RecipeHeads(nn.Module):
    """SLIP's projector and DeCLIP's text queue.

    Args:
        embed_dim: The model's embedding width.
        slip: SLIP's options, or ``None`` (no projector).
        declip: DeCLIP's options, or ``None`` (no queue).
    """

    def __init__(self, embed_dim: int, slip: SlipConfig | None, declip: DeclipConfig | None):
        super().__init__()
        self.projector: nn.Module | None = None
        if slip is not None:
            h, out = slip.mlp_dim, slip.out_dim
            self.projector = nn.Sequential(nn.Linear(embed_dim, h), nn.BatchNorm1d(h), nn.ReLU(inplace=True),
                                           nn.Linear(h, h), nn.BatchNorm1d(h), nn.ReLU(inplace=True), nn.Linear(h, out))
        size = declip.queue_size if declip is not None and declip.nn_weight > 0 else 0
        self.register_buffer("queue", torch.zeros(size, embed_dim))  # (Q, D) L2-normalised text embeddings
        self.register_buffer("queue_count", torch.zeros((), dtype=torch.long))  # embeddings pushed so far

    @torch.no_grad()
    def nearest(self, texts: torch.Tensor) -> torch.Tensor | None:
        """Each row's nearest neighbour (cosine) among the queued embeddings, or ``None`` while the queue is empty."""
        filled = min(int(self.queue_count), self.queue.shape[0])
        if not filled:
            return None
        queue = self.queue[:filled].to(texts.dtype)
        return queue[(texts @ queue.T).argmax(dim=1)]  # (N, D)

    @torch.no_grad()
    def push(self, texts: torch.Tensor) -> None:
        """Appends ``texts`` (N, D), overwriting the oldest when full."""
        size = self.queue.shape[0]
        texts = texts[-size:].to(self.queue.dtype)
        start = int(self.queue_count) % size
        rows = (torch.arange(texts.shape[0], device=texts.device) + start) % size
        self.queue[rows] = texts
        self.queue_count += texts.shape[0]


def attach_recipe_heads(model: nn.Module, slip: SlipConfig | None, declip: DeclipConfig | None) -> None:
    """Puts a ``RecipeHeads`` on ``model`` (on its device) when SLIP or DeCLIP's queue is asked for."""
    if slip is None and (declip is None or not declip.nn_weight):
        return
    device = next(model.parameters()).device
    model.add_module(HEADS, RecipeHeads(model.config.embed_dim, slip, declip).to(device))


@contextmanager
def without_recipe_heads(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` without its recipe heads for the block (the exported model is the plain model)."""
    heads = getattr(model, HEADS, None)
    if heads is None:
        yield model
        return
    delattr(model, HEADS)
    try:
        yield model
    finally:
        model.add_module(HEADS, heads)


def recipe_forward_backward(model: nn.Module, images: torch.Tensor, texts: torch.Tensor, info: dict[str, Any],
                            loss_fn: Callable[..., torch.Tensor], runtime: Runtime, slip: SlipConfig | None,
                            declip: DeclipConfig | None, *, reading: ReadingConfig | None = None,
                            local_loss: bool = False, lock: str = "none", autocast: torch.dtype | None = None,
                            terms: dict[str, list[torch.Tensor]] | None = None) -> torch.Tensor:
    """The step's loss with SLIP's, DeCLIP's and the reading terms; accumulates the gradients (no optimiser step).

    Args:
        model: A contrastive model; with ``recipe_heads`` when SLIP or DeCLIP's queue is on.
        images: This rank's (B, 3, H, W) images.
        texts: This rank's text input.
        info: The batch's info: ``views`` (B, V, 3, H, W), for DeCLIP's multi-view ``texts2``, for the reading term
            ``texts_read`` (each caption's second rendering).
        loss_fn: The contrastive loss (``clipforge.train.loss``).
        runtime: Rank and world size, for the gathers.
        slip: SLIP's options or ``None``.
        declip: DeCLIP's options or ``None``.
        reading: The reading term's options (CLIPPO) or ``None``.
        local_loss: Each rank's own rows against every column (``global_loss``).
        lock: ``none`` or ``text`` (a locked text tower runs without a graph).
        autocast: The autocast dtype (``None``: full precision).
        terms: Receives each term's value (detached, unweighted) by name, for the log.

    Returns:
        The total loss, detached.
    """
    device = images.device
    views = info["views"].to(device, non_blocking=True) if "views" in info else None
    heads = getattr(model, HEADS, None)
    record = terms if terms is not None else {}
    with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
        image_features = model.encode_image(images, normalize=True)
        with torch.no_grad() if lock == "text" else nullcontext():
            text_features = model.encode_text(texts, normalize=True)

        def contrastive(i: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return global_loss(i, t, model, loss_fn, runtime, local_loss)

        loss = contrastive(image_features, text_features)
        if declip is not None and declip.multi_view:
            assert views is not None and "texts2" in info, "declip.multi_view: the data draws a view and a caption"
            image2 = model.encode_image(views[:, 0], normalize=True)
            with torch.no_grad() if lock == "text" else nullcontext():
                text2 = model.encode_text(info["texts2"].to(device, non_blocking=True), normalize=True)
            loss = (loss + contrastive(image2, text2) + contrastive(image_features, text2)
                    + contrastive(image2, text_features)) / 4
        record.setdefault("contrastive", []).append(loss.detach())
        if declip is not None and declip.text_weight:
            term = contrastive(text_features, text2)
            record.setdefault("declip_text", []).append(term.detach())
            loss = loss + declip.text_weight * term
        if reading is not None:
            assert "texts_read" in info, "reading: the data renders each caption a second time"
            read = model.encode_text(info["texts_read"].to(device, non_blocking=True), normalize=True)
            term = contrastive(text_features, read)
            record.setdefault("reading", []).append(term.detach())
            loss = loss + reading.weight * term
        if declip is not None and declip.nn_weight:
            assert heads is not None
            all_texts = gather_features(text_features.detach(), runtime)
            neighbours = heads.nearest(all_texts.float())
            if neighbours is not None:
                mine = neighbours.split(text_features.shape[0])[runtime.rank] if runtime.distributed else neighbours
                term = contrastive(image_features, mine.to(image_features.dtype))
                record.setdefault("declip_nn", []).append(term.detach())
                loss = loss + declip.nn_weight * term
            heads.push(all_texts.float())
        if slip is not None:
            assert heads is not None and heads.projector is not None and views is not None
            first, second = views[:, -2], views[:, -1]
            z = heads.projector(model.encode_image(torch.cat([first, second])).float())  # (2B, out)
            z1, z2 = z.chunk(2)
            term = simclr_loss(gather_features(z1, runtime), gather_features(z2, runtime), slip.temperature)
            record.setdefault("slip", []).append(term.detach())
            loss = loss + slip.weight * term
    loss.backward()
    return loss.detach()
