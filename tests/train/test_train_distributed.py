"""Two CPU processes (gloo) train exactly like one process on the same global batch."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

import clipforge
from clipforge.train import Runtime, load_config, parse_overrides, train
from clipforge.train.checkpoint import load_checkpoint
from clipforge.train.distributed import all_reduce_gradients, init_runtime, shutdown
from clipforge.train.gradcache import forward_backward
from clipforge.train.loss import LOSSES

pytestmark = pytest.mark.distributed

TINY_MODEL = {"embed_dim": 16, "init_logit_bias": -2.0,
              "vision": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 1, "heads": 2},
              "text": {"width": 32, "heads": 2, "layers": 1, "vocab_size": 100, "context_length": 8}}
TINY_RUN = ["model_overrides.embed_dim=32", "model_overrides.vision.image_size=32",
            "model_overrides.vision.patch_size=8", "model_overrides.vision.width=32",
            "model_overrides.vision.layers=1", "model_overrides.vision.heads=2", "model_overrides.text.width=32",
            "model_overrides.text.heads=2", "model_overrides.text.layers=1", "model_overrides.text.context_length=16",
            "data.train_size=500", "eval.size=10", "eval.retrieval_size=4", "schedule.warmup_steps=1", "log_every=1",
            "steps=3", "batch_size=8", "plots=false", "data.augment=true"]
# (loss, local_loss, accum_steps): every way a step can combine the gather with the loss.
CASES = [("clip", False, 1), ("clip", True, 1), ("siglip", False, 1), ("siglip", True, 2), ("clip", True, 2)]
BATCH = 8


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return (torch.randn(BATCH, 3, 32, 32, generator=g, dtype=torch.float64),
            torch.randint(1, 100, (BATCH, 8), generator=g))


def _step(loss: str, local_loss: bool, accum: int, runtime: Runtime) -> tuple[float, dict[str, torch.Tensor]]:
    """One step's loss and (averaged) gradients on this rank's slice of the global batch, in float64."""
    torch.manual_seed(0)
    model = clipforge.create_model("tiny-vit", **TINY_MODEL).double()
    images, texts = _inputs()
    local = BATCH // runtime.world_size
    rows = slice(runtime.rank * local, (runtime.rank + 1) * local)
    value = forward_backward(model, images[rows], texts[rows], LOSSES[loss], runtime, accum_steps=accum,
                             local_loss=local_loss)
    all_reduce_gradients(list(model.parameters()), runtime)
    from clipforge.train.distributed import all_reduce_mean

    return all_reduce_mean(value, runtime).item(), {n: p.grad.clone() for n, p in model.named_parameters()}


def _worker(rank: int, world_size: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    runtime = init_runtime("cpu")
    try:
        steps = {case: _step(*case, runtime) for case in CASES}
        config = load_config(None, parse_overrides([*TINY_RUN, f"output_dir={out}/distributed"]))
        result = train(config, runtime)
        torch.save({"steps": steps, "losses": result.losses}, f"{out}/rank{rank}.pt")
    finally:
        shutdown(runtime)



def test_two_processes_equal_one(tmp_path: Path, free_port: int):
    mp.spawn(_worker, args=(2, free_port, str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]

    # Step level: per-step loss and averaged gradients equal the single-process step on the global batch.
    for case in CASES:
        loss, grads = _step(*case, Runtime())
        for rank in ranks:
            rank_loss, rank_grads = rank["steps"][case]
            assert abs(rank_loss - loss) <= 1e-5, case
            for name, grad in grads.items():
                assert (rank_grads[name] - grad).abs().max().item() <= 1e-5, (case, name)

    # Run level: the whole loop (data sharding, gather, all-reduce, clipping, AdamW) in float32.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        config = load_config(None, parse_overrides([*TINY_RUN, f"output_dir={tmp_path / 'single'}"]))
        single = train(config, Runtime())
    finally:
        torch.set_num_threads(threads)
    assert [s for s, _ in single.losses] == [s for s, _ in ranks[0]["losses"]] == [1, 2, 3]
    for (_, a), (_, b) in zip(single.losses, ranks[0]["losses"]):
        assert abs(a - b) <= 1e-5
    a = load_checkpoint(tmp_path / "single/checkpoints/step_00000003.pt")
    b = load_checkpoint(tmp_path / "distributed/checkpoints/step_00000003.pt")
    assert len(b["rng"]) == 2
    for name, value in a["model"].items():
        assert (value - b["model"][name]).abs().max().item() <= 1e-5, name
