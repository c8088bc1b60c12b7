"""The weight average: its recursion over the steps, the final model, exact resume, sharded checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import clipforge
from clipforge.config import ConfigError
from clipforge.train import Runtime, load_config, parse_overrides, train
from clipforge.train.checkpoint import load_checkpoint
from clipforge.train.dcp import load_sharded
from helpers.tiny import tiny_vit_overrides

RUN = [*tiny_vit_overrides(), "data.train_size=200", "data.num_workers=0", "eval.size=8", "eval.retrieval_size=4",
       "schedule.warmup_steps=1", "log_every=1", "steps=4", "batch_size=8", "plots=false", "checkpoint_every=1",
       "keep_checkpoints=10", "ema.decay=0.5", "ema.start_step=1"]


def _train(out: Path, *extra: str, resume: str | None = None):
    return train(load_config(None, parse_overrides([*RUN, *extra, f"output_dir={out}"])), Runtime(), resume=resume)


def test_the_average_follows_its_recursion_and_is_the_final_model(tmp_path: Path):
    _train(tmp_path / "run")
    states = [load_checkpoint(tmp_path / f"run/checkpoints/step_{s:08d}.pt") for s in range(1, 5)]
    expected = dict(states[0]["model"])  # until start_step the average is a copy of the weights
    for name in expected:
        assert torch.equal(states[0]["ema"][name], states[0]["model"][name])
    for state in states[1:]:  # then ema ← 0.5 · ema + 0.5 · w after every step
        expected = {name: 0.5 * value + 0.5 * state["model"][name] for name, value in expected.items()}
        for name, value in expected.items():
            assert torch.allclose(state["ema"][name], value, atol=1e-6), name
    final = clipforge.load(str(tmp_path / "run/final"))[0].state_dict()
    weights = states[-1]["model"]
    assert all(torch.allclose(final[k], expected[k], atol=1e-6) for k in expected)
    assert max((final[k] - weights[k]).abs().max().item() for k in expected) > 1e-4  # not the last weights


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_a_resumed_run_continues_the_average_exactly(parallel: str, tmp_path: Path):
    _train(tmp_path / "whole", f"parallel={parallel}")
    suffix = ".pt" if parallel == "ddp" else ""
    _train(tmp_path / "resumed", f"parallel={parallel}",
           resume=str(tmp_path / f"whole/checkpoints/step_00000002{suffix}"))
    a = clipforge.load(str(tmp_path / "whole/final"))[0].state_dict()
    b = clipforge.load(str(tmp_path / "resumed/final"))[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    if parallel == "fsdp":  # the sharded checkpoint holds the average beside the model
        model = clipforge.load(str(tmp_path / "whole/final"))[0]
        average = {name: torch.zeros_like(p) for name, p in model.named_parameters()}
        tensors = {"ema": average}
        load_sharded(tmp_path / "whole/checkpoints/step_00000004", model, None, tensors)
        assert "ema" in tensors and all(torch.equal(average[k], a[k]) for k in average)


def test_ema_options_are_checked():
    with pytest.raises(ConfigError, match="ema.decay"):
        load_config(None, parse_overrides(["ema.decay=1.0"]))
