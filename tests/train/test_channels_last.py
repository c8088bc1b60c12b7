"""``channels_last``: the same training in the channels-last memory order, for a ResNet and a ViT tower."""

from __future__ import annotations

from pathlib import Path

import pytest

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
