"""This process among its peers: the ``Runtime`` facts and joining torchrun's process group.

Shared by everything that runs under ``torchrun`` (training, ``clipforge embed``): torchrun sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous address, and :func:`init_runtime` joins the group (NCCL on CUDA,
gloo on the CPU). A plain ``python`` launch is a world of one and never touches ``torch.distributed``. What crosses
processes during training (features with gradient, gradient averaging) is in ``clipforge.train.distributed``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")

@dataclass(frozen=True)
class Runtime:
    """Facts about this process, kept out of the (frozen, saved) config.

    Attributes:
        rank: This process's rank in the group (0 in a single-process run).
        world_size: Number of processes.
        local_rank: Rank on this machine (picks the GPU).
        device: Where this process computes.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        """Whether this process logs, plots and writes checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """Whether more than one process takes part."""
        return self.world_size > 1


def init_runtime(device: str | None = None) -> Runtime:
    """The runtime for this process, joining the process group when launched by ``torchrun``.

    Args:
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``None`` (CUDA when available); under torchrun each rank takes
            its ``LOCAL_RANK``'s GPU.

    Raises:
        ValueError: ``cuda`` is asked for on a machine where torch sees no CUDA device.
    """
    kind = torch.device(device).type if device else ("cuda" if torch.cuda.is_available() else "cpu")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device or 'cuda'}: torch sees no CUDA device here (use --device cpu, or a CUDA "
                         "build of torch)")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    named = torch.device(device) if device else None
    # ``cuda`` alone (or none) means this rank's GPU; a single process may name one (``cuda:1``).
    pick = kind == "cuda" and (named is None or named.index is None or world_size > 1)
    dev = torch.device("cuda", local_rank) if pick else torch.device(device or kind)
    if kind == "cuda":
        torch.cuda.set_device(dev)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if kind == "cuda" else "gloo", rank=rank, world_size=world_size,
                                store=_attempt_store(rank, world_size))
    return Runtime(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def _attempt_store(rank: int, world_size: int) -> dist.Store | None:
    """Under torchrun, the rendezvous store with keys of this restart attempt only; ``None`` (``env://``) otherwise.

    An elastic restart (``torchrun --max-restarts``) reuses the agent's store, where the killed attempt's process
    group left its keys (each rank's address): a restarted group reading them waits on ranks that no longer exist.
    Prefixing every key with ``TORCHELASTIC_RESTART_COUNT`` keeps each attempt's group to itself.
    """
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    if attempt is None or "MASTER_ADDR" not in os.environ:
        return None
    agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"  # the agent hosts it; every rank is a client
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world_size,
                          is_master=not agent and rank == 0, multi_tenant=not agent)
    return dist.PrefixStore(f"clipforge/attempt_{attempt}", store)


def shutdown(runtime: Runtime) -> None:
    """Leaves the process group (if this run joined one)."""
    if runtime.distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(runtime: Runtime) -> None:
    """Waits for every rank."""
    if runtime.distributed:
        dist.barrier()


def gather_objects(obj: T, runtime: Runtime) -> list[T]:
    """Every rank's ``obj`` (picklable), in rank order (e.g. RNG states for a checkpoint)."""
    if not runtime.distributed:
        return [obj]
    out: list[T] = [obj] * runtime.world_size  # placeholders, overwritten in rank order
    dist.all_gather_object(out, obj)
    return out
