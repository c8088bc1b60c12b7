"""The chunked contrastive losses equal the plain ones, loss and every gradient, and never build the (N, M) logits."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from clipforge.train.loss import clip_loss, siglip_loss
from helpers.tiny import tiny_vit_overrides

TOL = 1e-5


def features(n: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1).float().requires_grad_()


def inputs(n: int, m: int | None, bias: bool) -> dict[str, Any]:
    """Rows (and, with ``m``, separate (m, D) columns), a scale and optionally a bias, all leaves needing grad."""
    d = 16
    args: dict[str, Any] = {"image_features": features(n, d, 0), "text_features": features(n, d, 1),
                            "logit_scale": torch.tensor(9.5, requires_grad=True),
                            "logit_bias": torch.tensor(-4.0, requires_grad=True) if bias else None}
    if m is not None:
        args["image_columns"], args["text_columns"] = features(m, d, 2), features(m, d, 3)
    return args


def loss_and_grads(loss_fn: Callable[..., torch.Tensor], args: dict[str, Any],
                   **kwargs: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor | None]]:
    for value in args.values():
        if isinstance(value, torch.Tensor):
            value.grad = None
    loss = loss_fn(**args, **kwargs)
    loss.backward()
    leaves = {k: v for k, v in args.items() if isinstance(v, torch.Tensor)}
    grads = {k: (v.grad.clone() if v.grad is not None else None) for k, v in leaves.items()}
    return loss.detach(), grads


def assert_same(loss_fn: Callable[..., torch.Tensor], args: dict[str, Any], chunk_size: int, **kwargs: Any) -> None:
    plain, plain_grads = loss_and_grads(loss_fn, args, **kwargs)
    chunked, chunked_grads = loss_and_grads(loss_fn, args, chunk_size=chunk_size, **kwargs)
    # 1e-5, relative once the loss exceeds 1: a SigLIP sum without bias reaches ~54, where one float32 ulp is 4e-6
    assert abs(float(chunked - plain)) <= TOL * max(1.0, abs(float(plain))), (float(chunked), float(plain))
    assert plain_grads.keys() == chunked_grads.keys()
    for name, grad in plain_grads.items():
        other = chunked_grads[name]
        if grad is None:  # siglip ignores image_columns: no gradient either way
            assert other is None, name
            continue
        assert other is not None, name
        assert (other - grad).abs().max().item() <= TOL, (name, (other - grad).abs().max().item())


@pytest.mark.parametrize("chunk_size", [1, 3, 8, 16])
@pytest.mark.parametrize("bias", [False, True])
def test_clip_chunked_equals_plain(chunk_size: int, bias: bool) -> None:
    assert_same(clip_loss, inputs(16, None, bias), chunk_size)


@pytest.mark.parametrize("chunk_size", [1, 5, 11])
@pytest.mark.parametrize("bias", [False, True])
def test_clip_chunked_equals_plain_local_loss(chunk_size: int, bias: bool) -> None:
    """The distributed local loss: 11 local rows at offset 22 of 44 gathered columns (rank 2 of 4)."""
    assert_same(clip_loss, inputs(11, 44, bias), chunk_size, offset=22)


@pytest.mark.parametrize("chunk_size", [1, 3, 8, 16])
@pytest.mark.parametrize("bias", [False, True])
def test_siglip_chunked_equals_plain(chunk_size: int, bias: bool) -> None:
    assert_same(siglip_loss, inputs(16, None, bias), chunk_size)


@pytest.mark.parametrize("chunk_size", [1, 4, 11])
@pytest.mark.parametrize("negatives_only", [False, True])
def test_siglip_chunked_equals_plain_local_loss(chunk_size: int, negatives_only: bool) -> None:
    assert_same(siglip_loss, inputs(11, 44, True), chunk_size, offset=33, negatives_only=negatives_only)


def test_chunked_losses_are_not_trivially_equal() -> None:
    """The comparison can fail: a wrong offset changes the chunked loss beyond the tolerance."""
    args = inputs(11, 44, True)
    right = clip_loss(**args, offset=22, chunk_size=4)
    wrong = clip_loss(**args, offset=21, chunk_size=4)
    assert abs((right - wrong).item()) > 100 * TOL


class LargestOutput(TorchDispatchMode):
    """Records the most elements any operator returned (forward and backward)."""

    def __init__(self) -> None:
        super().__init__()
        self.numel = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.numel = max(self.numel, t.numel())
        return out


@pytest.mark.parametrize("loss_fn", [clip_loss, siglip_loss])
def test_chunked_loss_never_builds_the_full_logits(loss_fn: Callable[..., torch.Tensor]) -> None:
    """64 rows × 64 columns: the plain loss makes 4,096-element logits; chunks of 8 rows stay at 8 × 64 (the
    (64, 16) features are the largest tensors left)."""
    n = 64
    args = inputs(n, None, True)
    for chunk_size, limit in ((None, None), (8, 8 * n)):
        seen = LargestOutput()
        with seen:
            loss_fn(**args, chunk_size=chunk_size).backward()
        if limit is None:
            assert seen.numel >= n * n
        else:
            assert seen.numel <= max(limit, n * 16), seen.numel


@pytest.mark.parametrize("bad", [0, -2, 2.5, True])
def test_bad_chunk_size_is_an_error(bad: Any) -> None:
    args = inputs(4, None, False)
    for loss_fn in (clip_loss, siglip_loss):
        with pytest.raises(ValueError, match="chunk_size"):
            loss_fn(**args, chunk_size=bad)


TRAIN = [*tiny_vit_overrides(), "data.train_size=200", "data.num_workers=0", "eval.size=16",
         "eval.retrieval_size=8", "schedule.warmup_steps=2", "log_every=1", "steps=3", "batch_size=8",
         "precision=fp32", "plots=false"]


@pytest.mark.parametrize("extra", [[], ["accum_steps=2"], ["model=siglip-tiny", "loss=siglip"]],
                         ids=["clip", "clip-gradcache", "siglip"])
def test_training_with_loss_chunk_size_matches_the_plain_loss(tmp_path: Any, one_thread: Any, extra: list[str]) -> None:
    """``loss_chunk_size: 3`` through the training loop (3 fp32 steps of batch 8): the same step losses."""
    from clipforge.train import Runtime, load_config, parse_overrides, train
    from clipforge.train.metrics import read_metrics

    def losses(name: str, *more: str) -> list[float]:
        config = load_config(None, parse_overrides([*TRAIN, *extra, *more, f"output_dir={tmp_path / name}"]))
        train(config, Runtime())
        return [r["loss"] for r in read_metrics(tmp_path / name / "metrics.jsonl") if "loss" in r]

    chunked, plain = losses("chunked", "loss_chunk_size=3"), losses("plain")
    assert len(chunked) == len(plain) == 3
    assert max(abs(a - b) for a, b in zip(chunked, plain, strict=True)) <= TOL, (chunked, plain)
