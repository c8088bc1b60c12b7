"""Losses (known answers), gradient caching (equals the full-batch step), optimiser grouping and schedule."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

import clipforge
from clipforge.train.distributed import Runtime
from clipforge.train.gradcache import forward_backward
from clipforge.train.loop import lock_tower
from clipforge.train.loss import clip_loss, siglip_loss
from clipforge.train.optim import build_optimizer, lr_at, param_groups, set_lr

TINY = {"embed_dim": 16, "init_logit_bias": -2.0,
        "vision": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 2, "heads": 2},
        "text": {"width": 32, "heads": 2, "layers": 2, "vocab_size": 100, "context_length": 8}}


def _features(n: int = 6, d: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g), dim=-1), F.normalize(torch.randn(n, d, generator=g), dim=-1)


def test_clip_loss_known_answers():
    # Orthonormal, perfectly aligned pairs: logits are scale on the diagonal, 0 elsewhere.
    eye = torch.eye(4)
    expected = -math.log(math.exp(10) / (math.exp(10) + 3))
    assert clip_loss(eye, eye, torch.tensor(10.0)).item() == pytest.approx(expected, abs=1e-6)
    # Uninformative features: the loss is log(N).
    same = F.normalize(torch.ones(5, 3), dim=-1)
    assert clip_loss(same, same, torch.tensor(7.0)).item() == pytest.approx(math.log(5), rel=1e-6)


def test_clip_loss_matches_definition_and_bias_cancels():
    image, text = _features()
    scale = torch.tensor(3.0)
    logits = scale * image @ text.T
    labels = torch.arange(6)
    expected = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    torch.testing.assert_close(clip_loss(image, text, scale), expected)
    torch.testing.assert_close(clip_loss(image, text, scale, torch.tensor(-4.0)), expected)


def test_local_loss_rows_average_to_global_loss():
    image, text = _features(8)
    scale = torch.tensor(5.0)
    local = [clip_loss(image[r * 4:(r + 1) * 4], text[r * 4:(r + 1) * 4], scale, image_columns=image,
                       text_columns=text, offset=r * 4) for r in range(2)]
    torch.testing.assert_close((local[0] + local[1]) / 2, clip_loss(image, text, scale))
    local = [siglip_loss(image[r * 4:(r + 1) * 4], text[r * 4:(r + 1) * 4], scale, torch.tensor(-1.0),
                         text_columns=text, offset=r * 4) for r in range(2)]
    torch.testing.assert_close((local[0] + local[1]) / 2, siglip_loss(image, text, scale, torch.tensor(-1.0)))


def test_siglip_loss_known_answer():
    image, text = _features(3)
    scale, bias = torch.tensor(10.0), torch.tensor(-10.0)
    logits = scale * image @ text.T + bias
    z = 2 * torch.eye(3) - 1
    expected = -sum(math.log(1 / (1 + math.exp(-z[i, j].item() * logits[i, j].item())))
                    for i in range(3) for j in range(3)) / 3
    assert siglip_loss(image, text, scale, bias).item() == pytest.approx(expected, rel=1e-6)


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("loss_fn", [clip_loss, siglip_loss])
@pytest.mark.parametrize("lock", ["none", "image", "text"])
def test_gradcache_equals_full_batch_step(loss_fn, lock):
    # float64, so that the 1e-5 bound measures the method, not float32 summation order.
    torch.manual_seed(0)
    model = clipforge.create_model("tiny-vit", **TINY).double()
    lock_tower(model, lock)
    images, texts = torch.randn(12, 3, 32, 32, dtype=torch.float64), torch.randint(1, 100, (12, 8))
    results = []
    for accum in (1, 3):
        model.zero_grad()
        loss = forward_backward(model, images, texts, loss_fn, Runtime(), accum_steps=accum, lock=lock)
        results.append((loss, _grads(model)))
    (loss_full, full), (loss_cached, cached) = results
    torch.testing.assert_close(loss_cached, loss_full, rtol=0, atol=1e-10)
    assert full.keys() == cached.keys() and full
    if lock != "none":
        assert not any(k.startswith("visual." if lock == "image" else "text.") for k in full)
    for name in full:
        assert (full[name] - cached[name]).abs().max().item() <= 1e-5, name


def test_gradcache_replays_patch_dropout():
    """With patch dropout, the recomputed micro-batches must see the same random patches as the cached pass."""
    torch.manual_seed(0)
    model = clipforge.create_model("tiny-vit", **{**TINY, "vision": {**TINY["vision"], "patch_dropout": 0.5}})
    images, texts = torch.randn(8, 3, 32, 32), torch.randint(1, 100, (8, 8))
    torch.manual_seed(1)
    forward_backward(model, images, texts, clip_loss, Runtime(), accum_steps=2)
    g = _grads(model)
    # The same step by hand: cache features under the same RNG stream, then the exact gradient.
    model.zero_grad()
    torch.manual_seed(1)
    feats = [model(images[i:i + 4], texts[i:i + 4]) for i in (0, 4)]
    loss = clip_loss(torch.cat([f.image_features for f in feats]), torch.cat([f.text_features for f in feats]),
                     model.scale())
    loss.backward()
    for name, grad in _grads(model).items():
        assert (grad - g[name]).abs().max().item() <= 1e-5, name


def test_weight_decay_only_on_weight_matrices():
    model = clipforge.create_model("tiny-vit", init_logit_bias=-10.0)
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    not_decayed = {names[id(p)] for p in no_decay["params"]}
    assert decayed | not_decayed == set(names.values()) and not decayed & not_decayed
    for name in ("visual.patch_embed.weight", "visual.proj", "text.proj", "visual.transformer.blocks.0.attn.qkv.weight",
                 "text.transformer.blocks.0.mlp.fc.weight", "visual.transformer.blocks.1.attn.out_proj.weight"):
        assert name in decayed, name
    for name in ("text.token_embed.weight", "text.pos_embed", "visual.pos_embed", "visual.class_token",
                 "logit_scale", "logit_bias", "visual.ln_pre.weight", "visual.ln_post.bias",
                 "text.transformer.blocks.0.attn.qkv.bias", "text.ln_final.weight"):
        assert name in not_decayed, name
    assert all(p.ndim >= 2 for p in decay["params"])


def test_logit_scale_can_take_its_own_learning_rate():
    model = clipforge.create_model("tiny-vit", init_logit_bias=-10.0)
    assert len(param_groups(model, 0.1)) == 2  # the default keeps the two groups (and old optimiser states)
    decay, no_decay, temperature = param_groups(model, 0.1, logit_scale_lr_mult=10.0)
    assert temperature["params"] == [model.logit_scale, model.logit_bias] and temperature["weight_decay"] == 0.0
    assert not {id(p) for p in temperature["params"]} & {id(p) for p in decay["params"] + no_decay["params"]}
    optimizer = build_optimizer(model, 1e-3, 0.1, (0.9, 0.98), 1e-6, torch.device("cpu"), logit_scale_lr_mult=10.0)
    set_lr(optimizer, 2e-4)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([2e-4, 2e-4, 2e-3])


def test_locked_tower_is_left_out_of_the_optimiser():
    model = clipforge.create_model("tiny-vit", **TINY)
    lock_tower(model, "image")
    model.train()
    lock_tower(model, "image")
    groups = param_groups(model, 0.1)
    visual = {id(p) for p in model.visual.parameters()}
    assert not any(id(p) in visual for g in groups for p in g["params"])
    assert not model.visual.training and model.text.training


def test_warmup_then_cosine():
    lrs = [lr_at(s, 1.0, 10, 110, min_lr=0.1) for s in range(110)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a < b for a, b in itertools.pairwise(lrs[:10]))
    assert lrs[10] == pytest.approx(1.0) and lrs[60] == pytest.approx(0.55)
    assert all(a >= b for a, b in itertools.pairwise(lrs[10:]))
    assert lr_at(110, 1.0, 10, 110, min_lr=0.1) == pytest.approx(0.1)
