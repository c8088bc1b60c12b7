"""FSDP2 (``torch.distributed.fsdp.fully_shard``): parameters, gradients and optimiser state sharded across ranks.

``parallel: fsdp`` in the train config. ``shard_model`` applies ``fully_shard`` bottom-up: each block of each tower (a
transformer block; a ResNet stage), then each tower, so a tower's remaining parameters (embeddings, final norm,
projection) form one more unit. A block's parameters are gathered just before its forward pass and freed after it
(and again for the backward pass); its gradients are reduce-scattered as they are computed, so each rank keeps
1/world_size of every parameter, gradient and Adam moment. The logit scale and bias sit outside the towers: they stay
whole on every rank (two scalars) and their gradients are averaged with ``all_reduce_gradients`` like DDP's.

What composes with it, unchanged: features gathered with gradient (or the local loss, or SigLIP's ring), gradient
caching (the towers' forward passes run through the sharded blocks whether or not gradients are kept), gradient
checkpointing, LiT locking (a frozen tower is sharded too), ``torch.compile`` of the towers (applied after sharding).

Mixed precision: with bf16, ``MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)``: blocks compute in bf16
from fp32 master weights, gradients are reduced in fp32. ``cpu_offload`` keeps the shards in CPU memory.

A world of one (a plain ``python`` launch) does not shard: the model trains as usual and checkpoints are still
written in Distributed Checkpoint's format, so a run moves between 1 and N ranks freely (``clipforge.train.dcp``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from clipforge.train.distributed import Runtime
from clipforge.train.layer_groups import tower_blocks, towers


def is_sharded(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` is a DTensor (a parameter or gradient that ``fully_shard`` split across ranks)."""
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


def shard_model(model: nn.Module, runtime: Runtime, amp: torch.dtype | None, cpu_offload: bool = False,
                reshard_after_forward: bool = True, in_one_process: bool = False) -> None:
    """Applies FSDP2 to ``model`` in place: every tower block, then every tower; a no-op in a world of one.

    Call it after the weights are final on every rank (``broadcast_parameters``) and before the optimiser is built:
    the optimiser must hold the sharded parameters. A world of one shards only to offload (``cpu_offload``: a model
    too big for one GPU trains from CPU memory), in a process group of one that this call starts.

    Args:
        model: A CLIP, CLIPPO or SigLIP model (anything with ``towers()``).
        runtime: This process's group; every rank calls this together.
        amp: The autocast dtype (bf16 computes and communicates in it, reduces gradients in fp32); ``None``: fp32.
        cpu_offload: Keep the shards (parameters, gradients, optimiser state) in CPU memory.
        reshard_after_forward: Free the gathered parameters after each unit's forward pass (ZeRO-3).
        in_one_process: Shard in a world of one too (``benchmarks/fsdp.py`` measures FSDP2's own overhead so).

    Raises:
        ValueError: ``cpu_offload`` on a CPU device (it moves each unit from CPU memory to the GPU for compute).
    """
    if cpu_offload and runtime.device.type != "cuda":
        raise ValueError("fsdp.cpu_offload keeps the shards in CPU memory and computes on the GPU: it needs CUDA "
                         f"devices, and this run is on {runtime.device.type}")
    if not runtime.distributed and not cpu_offload and not in_one_process:
        return
    if not dist.is_initialized():  # one process offloading to the CPU: FSDP2 needs a group, here of one
        dist.init_process_group("nccl" if runtime.device.type == "cuda" else "gloo", store=dist.HashStore(),
                                rank=0, world_size=1)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

    mesh = init_device_mesh(runtime.device.type, (dist.get_world_size(),))
    options = {"mesh": mesh, "reshard_after_forward": reshard_after_forward,
               "offload_policy": CPUOffloadPolicy() if cpu_offload else OffloadPolicy()}
    if amp is not None:
        options["mp_policy"] = MixedPrecisionPolicy(param_dtype=amp, reduce_dtype=torch.float32)
    for tower in towers(model).values():
        for block in tower_blocks(tower):
            fully_shard(block, **options)
        fully_shard(tower, **options)


def replicated_parameters(parameters: list[nn.Parameter]) -> list[nn.Parameter]:
    """The parameters FSDP left whole on every rank (the logit scale and bias): their gradients need averaging."""
    return [p for p in parameters if not is_sharded(p)]


def clip_grad_norm(parameters: list[nn.Parameter], max_norm: float, runtime: Runtime) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_`` over sharded and whole parameters together: the global 2-norm of every
    gradient (each shard's squares summed over ranks, the replicated gradients counted once), then one scale.

    Returns:
        The total norm before clipping.
    """
    grads = [p.grad for p in parameters if p.grad is not None]
    sharded = [g.to_local() for g in grads if is_sharded(g)]  # type: ignore[attr-defined]
    whole = [g for g in grads if not is_sharded(g)]
    device = (sharded or whole)[0].device
    squares = torch.zeros((), device=device, dtype=torch.float32)
    for g in sharded:
        squares += g.float().pow(2).sum()
    if runtime.distributed and sharded:
        dist.all_reduce(squares)
    for g in whole:
        squares += g.float().pow(2).sum().to(device)
    total = squares.sqrt()
    scale = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for g in sharded:
        g.mul_(scale.to(g.device, g.dtype))
    for g in whole:
        g.mul_(scale.to(g.device, g.dtype))
    return total


@dataclass(frozen=True)
class MemoryReport:
    """Bytes this rank holds of the trained model's state (parameters, gradients, Adam's two moments).

    Attributes:
        parameters: This rank's share of every parameter (its shard, or the whole tensor when not sharded).
        gradients: The gradients it will hold (the trainable parameters' share).
        optimizer: Adam's ``exp_avg`` and ``exp_avg_sq`` of the trainable share, fp32.
        total_parameters: The whole model's parameter bytes (every rank's shares together).
    """

    parameters: int
    gradients: int
    optimizer: int
    total_parameters: int

    def describe(self) -> str:
        gib = 2**30
        share = self.parameters / max(self.total_parameters, 1)
        return (f"parameters {self.parameters / gib:.3f} GiB ({share:.1%} of the model), gradients "
                f"{self.gradients / gib:.3f} GiB, optimizer {self.optimizer / gib:.3f} GiB")


def memory_report(model: nn.Module) -> MemoryReport:
    """What this rank holds of ``model``'s parameters, gradients and optimiser state, counted from the shards."""
    params = grads = optimizer = total = 0
    for p in model.parameters():
        local = p.to_local() if is_sharded(p) else p  # type: ignore[attr-defined]
        size = local.numel() * local.element_size()
        params += size
        total += p.numel() * p.element_size()
        if p.requires_grad:
            grads += size
            optimizer += 2 * local.numel() * 4
    return MemoryReport(params, grads, optimizer, total)


def report_memory(model: nn.Module, runtime: Runtime) -> list[MemoryReport]:
    """Every rank's ``memory_report``, printed by rank 0 at the start of a run (collective)."""
    import sys

    from clipforge.train.distributed import gather_objects

    reports = gather_objects(memory_report(model), runtime)
    if runtime.is_main:
        for rank, report in enumerate(reports):
            print(f"fsdp rank {rank}: {report.describe()}", file=sys.stderr)
    return reports


def whole_model(model: nn.Module, runtime: Runtime, sharded: bool) -> nn.Module:
    """A model with every weight whole, for what rank 0 does alone (evaluate, export, plot).

    ``sharded`` (FSDP): every rank must call it; the shards are gathered into a CPU state dict on rank 0 and loaded
    into an unsharded copy on the run's device, in eval mode (the other ranks get ``model`` back, unused). Otherwise
    ``model`` itself.
    """
    if not sharded or not any(is_sharded(p) for p in model.parameters()):
        return model
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from clipforge.models.factory import build_model

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not runtime.is_main:
        return model
    copy = build_model(model.config)  # type: ignore[arg-type]
    copy.load_state_dict(state)
    return copy.to(runtime.device).eval()
