"""``channels_last``: the same training in the channels-last memory order, for a ResNet and a ViT tower, and the
ResNet's BatchNorm, which computes a few-channel channels-last input in the contiguous layout."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from clipforge.models.resnet import BatchNorm2d
from clipforge.train import Runtime, load_config, parse_overrides, train
from helpers.tiny import tiny_vit_overrides

RUN = ["data.train_size=200", "data.num_workers=0", "eval.size=8", "eval.retrieval_size=4",
       "schedule.warmup_steps=1", "log_every=1", "steps=3", "batch_size=8", "plots=false", "precision=fp32"]
MODELS = {"tiny-rn": ["model=tiny-rn", "model_overrides.text.layers=1"], "tiny-vit": tiny_vit_overrides()}


@pytest.mark.parametrize("model", sorted(MODELS))
def test_channels_last_trains_like_the_default_layout(model: str, tmp_path: Path):
    runs = {}
    for layout in ("false", "true"):
        config = load_config(None, parse_overrides([*MODELS[model], *RUN, f"channels_last={layout}",
                                                    f"output_dir={tmp_path / layout}"]))
        runs[layout] = train(config, Runtime())
    for (_, a), (_, b) in zip(runs["false"].losses, runs["true"].losses):
        # fp32 convolutions pick other kernels per layout (and per load: a CI run saw 1.35e-4 relative at step 3);
        # a wrong layout would differ by far more than 5e-4
        assert abs(a - b) <= 5e-4 * max(1.0, abs(a))
    assert len(runs["true"].losses) == 3


@pytest.mark.parametrize("channels", [8, 12, 16])  # 8 and 12 take the contiguous path, 16 the plain one
def test_batchnorm_matches_torch_in_both_layouts_and_keeps_the_input_layout(channels: int):
    torch.manual_seed(0)
    ours, ref = BatchNorm2d(channels), torch.nn.BatchNorm2d(channels)
    with torch.no_grad():
        for module in (ours, ref):
            module.weight.copy_(torch.linspace(0.5, 1.5, channels))
            module.bias.copy_(torch.linspace(-0.2, 0.2, channels))
    base = torch.randn(6, channels, 9, 9) * 3 + 1
    upstream = torch.randn_like(base)
    for layout in (torch.contiguous_format, torch.channels_last):
        for module in (ours, ref):
            module.reset_running_stats()
        x, x_ref = (base.contiguous(memory_format=layout).requires_grad_() for _ in range(2))
        y, y_ref = ours(x), ref(x_ref)
        assert y.is_contiguous(memory_format=layout)
        torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-5)
        (y * upstream).sum().backward()
        (y_ref * upstream).sum().backward()
        torch.testing.assert_close(x.grad, x_ref.grad, rtol=0, atol=1e-5)
        for a, b in [(ours.weight.grad, ref.weight.grad), (ours.bias.grad, ref.bias.grad),
                     (ours.running_mean, ref.running_mean), (ours.running_var, ref.running_var)]:
            torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
        ours.zero_grad()
        ref.zero_grad()
    ours.eval()
    ref.eval()
    x = base.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=1e-5)
    assert set(ours.state_dict()) == set(ref.state_dict())
