"""``optim.lazy_embedding``: sparse token-table gradients and ``LazyAdamW``, against torch's AdamW."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from clipforge.config import ConfigError
from clipforge.train import Runtime, load_config, parse_overrides, train
from clipforge.train.optim import LazyAdamW, clip_grad_norm_with_sparse, coalesce_sparse_grads, sparse_embeddings

HYPER = {"lr": 1e-2, "betas": (0.9, 0.98), "eps": 1e-6}


class Bag(nn.Module):
    """A token table and a dense layer on top (two parameter groups: the table undecayed, the layer decayed)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(50, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(tokens).mean(1))


def _optimizer(model: Bag, lazy: bool, fused: bool, table_decay: float = 0.0) -> torch.optim.AdamW:
    groups = [{"params": [model.embed.weight], "weight_decay": table_decay},
              {"params": list(model.head.parameters()), "weight_decay": 0.1}]
    if lazy:
        sparse_embeddings(model)
        return LazyAdamW(groups, fused=fused, **HYPER)
    return torch.optim.AdamW(groups, fused=fused, **HYPER)


def _train(model: Bag, optimizer: torch.optim.Optimizer, batches: list[torch.Tensor], clip: float | None = None):
    for tokens in batches:
        loss = model(tokens).square().sum()
        loss.backward()
        coalesce_sparse_grads(list(model.parameters()))
        if clip is not None and isinstance(optimizer, LazyAdamW):  # the loop's clipping with a sparse table
            clip_grad_norm_with_sparse(list(model.parameters()), clip)
        elif clip is not None:
            torch.nn.utils.clip_grad_norm_(list(model.parameters()), clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("table_decay", [0.0, 0.05])
def test_rows_used_every_step_train_exactly_as_adamw(fused: bool, table_decay: float):
    """Every row in every batch: the lazy update is AdamW's, moments, decay and bias correction included."""
    g = torch.Generator().manual_seed(1)
    batches = [torch.cat([torch.arange(50).view(5, 10), torch.randint(0, 50, (5, 4), generator=g)], 1)
               for _ in range(6)]  # repeats too: the raw sparse gradient holds duplicate rows
    dense, lazy = Bag(), Bag()
    _train(dense, _optimizer(dense, False, fused, table_decay), batches, clip=0.5)
    _train(lazy, _optimizer(lazy, True, fused, table_decay), batches, clip=0.5)
    for (name, a), b in zip(dense.named_parameters(), lazy.parameters(), strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-6, msg=name)


def test_rows_a_batch_does_not_use_stay_still_with_their_moments():
    model = Bag()
    optimizer = _optimizer(model, True, fused=False)
    _train(model, optimizer, [torch.tensor([[1, 2, 3]])])
    table = model.embed.weight.detach().clone()
    moments = {k: v.clone() for k, v in optimizer.state[model.embed.weight].items()}
    _train(model, optimizer, [torch.tensor([[3, 4, 4]])])
    after, state = model.embed.weight.detach(), optimizer.state[model.embed.weight]
    untouched = [r for r in range(50) if r not in (3, 4)]
    assert torch.equal(after[untouched], table[untouched])
    assert torch.equal(state["exp_avg"][untouched], moments["exp_avg"][untouched])
    assert not torch.equal(after[[3, 4]], table[[3, 4]])
    assert float(state["step"]) == 2
    # AdamW would have moved rows 1 and 2 on their momentum alone
    dense = Bag()
    adamw = _optimizer(dense, False, fused=False)
    _train(dense, adamw, [torch.tensor([[1, 2, 3]]), torch.tensor([[3, 4, 4]])])
    assert not torch.allclose(dense.embed.weight[[1, 2]], after[[1, 2]])
    never = [r for r in range(50) if r not in (1, 2, 3, 4)]  # rows never used: AdamW leaves them too (no decay)
    torch.testing.assert_close(dense.embed.weight[never], after[never], rtol=0, atol=0)


@pytest.mark.parametrize("max_norm", [1e9, 0.1])
def test_clipping_sees_the_gradient_norm_of_the_coalesced_rows(max_norm: float):
    """clip_grad_norm_with_sparse on the sparse table and the dense layer: torch's clip_grad_norm_ on the same
    gradients held dense, the norm and the clipped gradients (0.1 clips, 1e9 does not)."""
    model = Bag()
    sparse_embeddings(model)
    tokens = torch.tensor([[1, 1, 1, 2]])
    model(tokens).sum().backward()
    coalesce_sparse_grads(list(model.parameters()))
    sparse_norm = clip_grad_norm_with_sparse(list(model.parameters()), max_norm)
    dense = Bag()
    dense(tokens).sum().backward()
    dense_norm = torch.nn.utils.clip_grad_norm_(list(dense.parameters()), max_norm)
    torch.testing.assert_close(sparse_norm, dense_norm)
    assert model.embed.weight.grad is not None and model.embed.weight.grad.is_sparse
    assert (dense_norm > max_norm) == (max_norm == 0.1)
    for a, b in zip(model.parameters(), dense.parameters(), strict=True):
        assert a.grad is not None and b.grad is not None
        torch.testing.assert_close(a.grad.to_dense(), b.grad, rtol=0, atol=1e-7)


def test_state_is_adamw_state_in_both_directions():
    batches = [torch.arange(50).view(5, 10)] * 4
    straight = Bag()
    _train(straight, _optimizer(straight, True, fused=True), batches)
    first = Bag()
    lazy = _optimizer(first, True, fused=True)
    _train(first, lazy, batches[:2])
    second = Bag()
    second.load_state_dict(first.state_dict())
    adamw = _optimizer(second, False, fused=True)
    adamw.load_state_dict(lazy.state_dict())  # a lazy run's checkpoint resumed densely ...
    third = Bag()
    third.load_state_dict(second.state_dict())
    again = _optimizer(third, True, fused=True)
    again.load_state_dict(adamw.state_dict())  # ... and back
    _train(third, again, batches[2:])
    for a, b in zip(straight.parameters(), third.parameters(), strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-6)


TINY = ["model_overrides.embed_dim=32", "model_overrides.vision.image_size=32", "model_overrides.vision.patch_size=8",
        "model_overrides.vision.width=32", "model_overrides.vision.layers=1", "model_overrides.vision.heads=2",
        "model_overrides.text.width=32", "model_overrides.text.heads=2", "model_overrides.text.layers=1",
        "model_overrides.text.context_length=16", "data.train_size=400", "eval.size=20", "eval.retrieval_size=8",
        "schedule.warmup_steps=2", "log_every=1", "plots=false", "batch_size=16"]


def test_training_with_a_lazy_token_table_learns_and_resumes_exactly(tmp_path, one_thread):
    lazy = ["optim.lazy_embedding=true"]
    straight = train(load_config(None, parse_overrides([*TINY, *lazy, "steps=30", f"output_dir={tmp_path / 'a'}"])),
                     Runtime())
    dense = train(load_config(None, parse_overrides([*TINY, "steps=30", f"output_dir={tmp_path / 'd'}"])), Runtime())
    losses, reference = [loss for _, loss in straight.losses], [loss for _, loss in dense.losses]
    assert losses[0] == pytest.approx(reference[0], abs=1e-6)  # the same model and batch before any update
    assert math.isfinite(losses[-1]) and losses[-1] < 0.97 * losses[0]
    # the captions' few words are in nearly every batch, where the lazy update is AdamW's
    assert sum(losses[-10:]) == pytest.approx(sum(reference[-10:]), rel=0.03), (losses, reference)
    half = load_config(None, parse_overrides([*TINY, *lazy, "steps=30", "checkpoint_every=15",
                                              f"output_dir={tmp_path / 'b'}"]))
    train(half, Runtime())
    resumed = train(half, Runtime(), resume=str(tmp_path / "b/checkpoints/step_00000015.pt"))
    assert resumed.losses == straight.losses[15:]


def test_lazy_embedding_refuses_fsdp_and_more_than_one_process():
    with pytest.raises(ConfigError, match="lazy_embedding"):
        load_config(None, parse_overrides(["optim.lazy_embedding=true", "parallel=fsdp"]))
    config = load_config(None, parse_overrides(["optim.lazy_embedding=true", "batch_size=8"]))
    with pytest.raises(ConfigError, match="one process"):
        config.check_world_size(2)
