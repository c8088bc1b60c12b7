"""SigLIP's ring exchange (``siglip_ring_loss``) under 2 and 4 CPU processes (gloo) equals the single-process loss.

Each worker writes what it measured to ``rank<r>.pt``; the test process computes the single-process reference on
the global batch and compares. Checked: loss and gradients within 1e-5 (fp32 features; the model steps in float64,
the loop's step in fp32); each rank's loss and gradients before averaging equal open_clip's ``SigLipLoss`` blocks;
no tensor the ring builds (forward or backward) has a global-batch dimension, which the gather's local loss does.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import clipforge
from clipforge.config import ConfigError
from clipforge.models.factory import build_model
from clipforge.train import Runtime, load_config, parse_overrides, train
from clipforge.train.checkpoint import load_checkpoint
from clipforge.train.distributed import all_reduce_gradients, all_reduce_mean, init_runtime, ring_shift, shutdown
from clipforge.train.gradcache import forward_backward
from clipforge.train.loss import clip_loss, siglip_loss, siglip_ring_loss

pytestmark = pytest.mark.distributed

LOCAL, DIM = 6, 10  # local batch ≠ feature dim, and DIM < any global batch (2 · 6), so a global dimension shows
TINY_MODEL = {"embed_dim": 16, "init_logit_bias": -2.0, "init_logit_scale": 1.7,
              "vision": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 1, "heads": 2},
              "text": {"width": 32, "heads": 2, "layers": 1, "vocab_size": 100, "context_length": 8}}
MODEL_BATCH = 8
# (accum_steps, lock) of the model-level steps: a plain step, GradCache, a locked text tower.
MODEL_CASES = [(1, "none"), (2, "none"), (1, "text")]
TINY_RUN = ["loss=siglip", "model_overrides.embed_dim=32", "model_overrides.init_logit_bias=-3.0",
            "model_overrides.init_logit_scale=1.5", "model_overrides.vision.image_size=32",
            "model_overrides.vision.patch_size=8", "model_overrides.vision.width=32", "model_overrides.vision.layers=1",
            "model_overrides.vision.heads=2", "model_overrides.text.width=32", "model_overrides.text.heads=2",
            "model_overrides.text.layers=1", "model_overrides.text.context_length=16", "data.train_size=100",
            "eval.size=4", "eval.retrieval_size=4", "schedule.warmup_steps=0", "log_every=1", "steps=1",
            "batch_size=8", "plots=false", "optim.lr=1e-3"]


def _features(world_size: int) -> dict[str, torch.Tensor]:
    """The global batch: random unit features and a random scale and bias (not SigLIP's init), fp32."""
    g = torch.Generator().manual_seed(world_size)
    n = world_size * LOCAL
    return {"image": F.normalize(torch.randn(n, DIM, generator=g), dim=-1),
            "text": F.normalize(torch.randn(n, DIM, generator=g), dim=-1),
            "scale": torch.rand((), generator=g) * 8 + 2, "bias": torch.rand((), generator=g) * -6 - 1}


class _Shapes(TorchDispatchMode):
    """Records the shape of every tensor every op produces (forward and backward) and every matmul's."""

    def __init__(self) -> None:
        super().__init__()
        self.outputs: set[tuple[int, ...]] = set()
        self.matmuls: set[tuple[int, ...]] = set()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        shapes = {tuple(t.shape) for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)}
        self.outputs |= shapes
        if func.overloadpacket in (torch.ops.aten.mm, torch.ops.aten.addmm, torch.ops.aten.bmm):
            self.matmuls |= shapes
        return out


def _leaves(features: dict[str, torch.Tensor], rows: slice) -> dict[str, torch.Tensor]:
    return {"image": features["image"][rows].clone().requires_grad_(),
            "text": features["text"][rows].clone().requires_grad_(),
            "scale": features["scale"].clone().requires_grad_(), "bias": features["bias"].clone().requires_grad_()}


def _feature_level(runtime: Runtime) -> dict[str, Any]:
    """The ring's loss and gradients on this rank's slice (raw and averaged as the loop does), and its shapes."""
    rows = slice(runtime.rank * LOCAL, (runtime.rank + 1) * LOCAL)
    features = _features(runtime.world_size)
    x = _leaves(features, rows)
    with _Shapes() as ring_shapes:
        loss = siglip_ring_loss(x["image"], x["text"], x["scale"], x["bias"], runtime)
        loss.backward()
    raw = {k: v.grad.clone() for k, v in x.items()}
    # The loop's averaging: all_reduce_gradients divides the parameter gradients' sum over ranks by the world
    # size; a feature's share of that is its gradient here divided by the world size.
    all_reduce_gradients([x["scale"], x["bias"]], runtime)
    averaged = {"image": raw["image"] / runtime.world_size, "text": raw["text"] / runtime.world_size,
                "scale": x["scale"].grad, "bias": x["bias"].grad}

    return {"loss": loss.detach(), "mean_loss": all_reduce_mean(loss, runtime), "raw": raw, "averaged": averaged,
            "ring_shapes": ring_shapes.outputs, "ring_matmuls": ring_shapes.matmuls}


def _model_step(accum: int, lock: str, runtime: Runtime, exchange: str) -> tuple[float, dict[str, torch.Tensor]]:
    """One step's loss and averaged gradients of a tiny float64 SigLIP model on this rank's slice."""
    torch.manual_seed(0)
    model = clipforge.create_model("tiny-vit", **TINY_MODEL).double()
    g = torch.Generator().manual_seed(1)
    images = torch.randn(MODEL_BATCH, 3, 32, 32, generator=g, dtype=torch.float64)
    texts = torch.randint(1, 100, (MODEL_BATCH, 8), generator=g)
    local = MODEL_BATCH // runtime.world_size
    rows = slice(runtime.rank * local, (runtime.rank + 1) * local)
    value = forward_backward(model, images[rows], texts[rows], siglip_loss, runtime, accum_steps=accum,
                             exchange=exchange, lock=lock)
    params = [p for p in model.parameters() if p.grad is not None]
    all_reduce_gradients(params, runtime)
    return all_reduce_mean(value, runtime).item(), {n: p.grad.clone() for n, p in model.named_parameters()
                                                    if p.grad is not None}


def _worker(rank: int, world_size: int, port: int, out: str, with_model: bool) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    runtime = init_runtime("cpu")
    try:
        result: dict[str, Any] = {"features": _feature_level(runtime)}
        block = torch.full((2, 3), float(rank), requires_grad=True)
        shifted = ring_shift(block, runtime)
        (shifted * (rank + 1)).sum().backward()  # the gradient goes back to the sender: rank + 2 of rank + 1
        result["shift"] = (shifted.detach(), block.grad)
        if with_model:
            result["model"] = {case: _model_step(*case, runtime, "ring") for case in MODEL_CASES}
            config = load_config(None, parse_overrides([*TINY_RUN, "siglip_exchange=ring", f"output_dir={out}/ring"]))
            result["losses"] = train(config, runtime).losses
        torch.save(result, f"{out}/rank{rank}.pt")
    finally:
        shutdown(runtime)


def _check_features(ranks: list[dict[str, Any]], world_size: int) -> dict[str, float]:
    """Compares every rank's ring results with the single-process loss; returns the largest differences."""
    features = _features(world_size)
    x = _leaves(features, slice(None))
    loss = siglip_loss(x["image"], x["text"], x["scale"], x["bias"])
    loss.backward()
    diffs = {"loss": 0.0, "image": 0.0, "text": 0.0, "scale": 0.0, "bias": 0.0}
    per_rank = [r["features"]["loss"] for r in ranks]
    diffs["loss"] = abs((sum(per_rank) / world_size - loss).item())
    for rank, r in enumerate(ranks):
        f = r["features"]
        rows = slice(rank * LOCAL, (rank + 1) * LOCAL)
        diffs["loss"] = max(diffs["loss"], abs((f["mean_loss"] - loss).item()))
        for name in ("image", "text"):
            diffs[name] = max(diffs[name], (f["averaged"][name] - x[name].grad[rows]).abs().max().item())
        for name in ("scale", "bias"):
            diffs[name] = max(diffs[name], abs((f["averaged"][name] - x[name].grad).item()))
        # Never a global dimension: one (local, local) block of logits at a time, (local, dim) gradients.
        assert all(max(shape, default=0) < world_size * LOCAL for shape in f["ring_shapes"]), f["ring_shapes"]
        assert f["ring_matmuls"] <= {(LOCAL, LOCAL), (LOCAL, DIM), (DIM, LOCAL)}, f["ring_matmuls"]
        assert (LOCAL, LOCAL) in f["ring_matmuls"]
        shifted, grad = r["shift"]
        assert torch.equal(shifted, torch.full((2, 3), float((rank - 1) % world_size)))
        assert torch.equal(grad, torch.full((2, 3), float((rank + 1) % world_size + 1)))
    assert max(diffs.values()) <= 1e-5, diffs
    with _Shapes() as gather_shapes:  # the control: the gather's local loss, (local, global) logits, is seen
        z = _leaves(features, slice(0, LOCAL))
        siglip_loss(z["image"], z["text"], z["scale"], z["bias"], text_columns=features["text"]).backward()
    assert (LOCAL, world_size * LOCAL) in gather_shapes.matmuls
    _check_open_clip(ranks, world_size)
    return diffs


def _check_open_clip(ranks: list[dict[str, Any]], world_size: int) -> None:
    """Each rank's loss and raw gradients are open_clip's ``SigLipLoss`` of the same blocks (its per-block loss,
    summed in the ring's order), before any averaging."""
    from open_clip.loss import SigLipLoss

    block_loss = SigLipLoss()._loss
    features = _features(world_size)
    x = _leaves(features, slice(None))
    blocks = [(x["image"][r * LOCAL:(r + 1) * LOCAL], x["text"][r * LOCAL:(r + 1) * LOCAL]) for r in range(world_size)]
    losses = []
    for rank, (image, text) in enumerate(blocks):
        loss = block_loss(image, text, x["scale"], x["bias"])
        for k in range(1, world_size):
            loss = loss + block_loss(image, blocks[(rank - k) % world_size][1], x["scale"], x["bias"],
                                     negative_only=True)
        losses.append(loss)
    total = torch.stack(losses).sum()
    grads = dict(zip(("image", "text"), torch.autograd.grad(total, [x["image"], x["text"]], retain_graph=True)))
    for rank, r in enumerate(ranks):
        f, rows = r["features"], slice(rank * LOCAL, (rank + 1) * LOCAL)
        assert abs((f["loss"] - losses[rank]).item()) <= 1e-5
        scale, bias = torch.autograd.grad(losses[rank], [x["scale"], x["bias"]], retain_graph=True)
        for name, expected in (("image", grads["image"][rows]), ("text", grads["text"][rows]), ("scale", scale),
                               ("bias", bias)):
            torch.testing.assert_close(f["raw"][name], expected, atol=1e-5, rtol=0, msg=name)


@pytest.mark.parametrize("world_size", [2, 4])
def test_ring_equals_single_process(tmp_path: Path, free_port: int, world_size: int):
    with_model = world_size == 2
    mp.spawn(_worker, args=(world_size, free_port, str(tmp_path), with_model), nprocs=world_size, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(world_size)]
    diffs = _check_features(ranks, world_size)
    print(f"world_size={world_size} max abs diff: " + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items()))
    if not with_model:
        return

    # Model level (float64): GradCache and a locked tower through the ring equal one process with the gather.
    for case in MODEL_CASES:
        loss, grads = _model_step(*case, Runtime(), "gather")
        for rank in ranks:
            rank_loss, rank_grads = rank["model"][case]
            assert abs(rank_loss - loss) <= 1e-5, case
            assert rank_grads.keys() == grads.keys(), case
            for name, grad in grads.items():
                assert (rank_grads[name] - grad).abs().max().item() <= 1e-5, (case, name)

    # The loop (fp32): one optimiser step of `siglip_exchange=ring` under 2 processes equals one process.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        config = load_config(None, parse_overrides([*TINY_RUN, f"output_dir={tmp_path / 'single'}"]))
        single = train(config, Runtime())
    finally:
        torch.set_num_threads(threads)
    assert abs(single.losses[0][1] - ranks[0]["losses"][0][1]) <= 1e-5
    a = load_checkpoint(tmp_path / "single/checkpoints/step_00000001.pt")
    b = load_checkpoint(tmp_path / "ring/checkpoints/step_00000001.pt")
    for name, value in a["model"].items():
        assert (value - b["model"][name]).abs().max().item() <= 1e-5, name
    torch.manual_seed(0)  # the loop's initialisation: the step moved the weights, so the comparison is not vacuous
    start = build_model(config.model_config()).state_dict()
    assert max((a["model"][k] - v).abs().max().item() for k, v in start.items()) > 1e-4


def test_world_of_one_is_siglip_loss():
    features = _features(1)
    args = (features["image"], features["text"], features["scale"], features["bias"])
    assert torch.equal(siglip_ring_loss(*args, Runtime()), siglip_loss(*args))


def test_ring_needs_the_siglip_loss():
    with pytest.raises(ConfigError, match="siglip_exchange=ring.*loss: siglip"):
        load_config(None, parse_overrides(["siglip_exchange=ring"]))
    with pytest.raises(ConfigError, match="siglip_exchange"):
        load_config(None, parse_overrides(["loss=siglip", "model_overrides.init_logit_bias=-10",
                                           "siglip_exchange=allgather"]))
    model = clipforge.create_model("tiny-vit", **TINY_MODEL)
    with pytest.raises(ValueError, match="loss_fn must be siglip_loss"):
        forward_backward(model, torch.randn(2, 3, 32, 32), torch.randint(1, 100, (2, 8)), clip_loss, Runtime(),
                         exchange="ring")
