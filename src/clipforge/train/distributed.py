"""Everything that crosses processes: the ``Runtime`` facts, feature exchange with gradient, gradient averaging.

Launch with ``torchrun --nproc_per_node=N -m clipforge.cli.main train ...``: torchrun sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous address, and ``init_runtime`` (``clipforge.distributed``, shared
with ``clipforge embed``) joins the group (NCCL on CUDA, gloo on CPU). A plain ``python`` launch is a world of one
and never touches ``torch.distributed``.

Data parallelism is explicit rather than hidden in ``DistributedDataParallel``: features are gathered
with gradient (so the loss sees the global batch), and after the backward pass ``all_reduce_gradients``
averages the gradients once per optimiser step. That is correct for gradient caching and for locked
towers alike, where DDP's reducer would need ``no_sync`` juggling.

SigLIP can skip the gather: ``ring_shift`` passes a block of features to the right neighbour (and receives
the left one's), so a rank sees every other rank's texts one block at a time (``siglip_ring_loss``).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from clipforge.distributed import Runtime, barrier, gather_objects, init_runtime, shutdown


def gather_features(features: torch.Tensor, runtime: Runtime) -> torch.Tensor:
    """All ranks' features concatenated in rank order, (world_size · N, D), differentiable.

    The backward pass sums each rank's gradient contributions back to the rank that owns the rows
    (``torch.distributed.nn.functional.all_gather``), so a loss over the global batch trains every rank.
    """
    if not runtime.distributed:
        return features
    import torch.distributed.nn.functional as dist_fn

    return torch.cat(dist_fn.all_gather(features), dim=0)


def _send_receive(tensor: torch.Tensor, to_rank: int, from_rank: int) -> torch.Tensor:
    """Sends ``tensor`` to ``to_rank`` and returns the same-shaped tensor that ``from_rank`` sends here."""
    tensor = tensor.contiguous()
    received = torch.empty_like(tensor)
    ops = [dist.P2POp(dist.isend, tensor, to_rank), dist.P2POp(dist.irecv, received, from_rank)]
    for request in dist.batch_isend_irecv(ops):
        request.wait()
    return received


class _RingShift(torch.autograd.Function):
    """One step around the ring: forward sends to ``to_rank`` and receives from ``from_rank``; backward sends
    the received tensor's gradient back to its sender, ``from_rank``, and receives this rank's from ``to_rank``."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, tensor: torch.Tensor, to_rank: int,
                from_rank: int) -> torch.Tensor:
        ctx.to_rank, ctx.from_rank = to_rank, from_rank  # type: ignore[attr-defined]
        return _send_receive(tensor, to_rank, from_rank)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        return _send_receive(grad, ctx.from_rank, ctx.to_rank), None, None  # type: ignore[attr-defined]


def ring_shift(tensor: torch.Tensor, runtime: Runtime) -> torch.Tensor:
    """The left neighbour's ``tensor`` (rank − 1, cyclically), differentiable; this rank's goes to rank + 1.

    Every rank must call it, in the same order, with tensors of one shape and dtype (a point-to-point
    exchange with both neighbours at once, ``dist.batch_isend_irecv``). The backward pass runs the ring the
    other way: the gradient of the received block goes back to the rank that sent it, so ``k`` successive
    shifts deliver to each rank the gradient of everything computed from its block ``k`` ranks away.
    Only the default process group (the one ``init_runtime`` joins) is used.
    """
    if not runtime.distributed:
        return tensor
    right, left = (runtime.rank + 1) % runtime.world_size, (runtime.rank - 1) % runtime.world_size
    return _RingShift.apply(tensor, right, left)


def all_reduce_gradients(parameters: list[torch.nn.Parameter], runtime: Runtime) -> None:
    """Averages gradients across ranks in one flat all-reduce per dtype (a no-op for one process).

    Each rank's loss is the global loss (or, with the local loss or SigLIP's ring, its share of it) and the
    gather's (or the ring's) backward has already summed the feature gradients, so the average is the global
    batch's gradient.
    """
    if not runtime.distributed:
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    for dtype in {g.dtype for g in grads}:
        group = [g for g in grads if g.dtype == dtype]
        flat = torch.cat([g.reshape(-1) for g in group])
        dist.all_reduce(flat)
        flat /= runtime.world_size
        offset = 0
        for g in group:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()


def broadcast_parameters(module: torch.nn.Module, runtime: Runtime) -> None:
    """Copies rank 0's parameters and buffers to every rank, so all replicas start identical."""
    if not runtime.distributed:
        return
    for tensor in [*module.parameters(), *module.buffers()]:
        dist.broadcast(tensor.data, src=0)


def all_reduce_mean(value: torch.Tensor, runtime: Runtime) -> torch.Tensor:
    """The mean of ``value`` over ranks (for logging)."""
    if not runtime.distributed:
        return value
    value = value.detach().clone()
    dist.all_reduce(value)
    return value / runtime.world_size


__all__ = ["Runtime", "all_reduce_gradients", "all_reduce_mean", "barrier", "broadcast_parameters",
           "gather_features", "gather_objects", "init_runtime", "ring_shift", "shutdown"]
