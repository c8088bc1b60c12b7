"""The training loop end to end on the synthetic world: learning, run-dir contents, exact resume after SIGKILL."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

import clipforge
from clipforge.cli.train import quickstart_command
from clipforge.train import Runtime, load_config, parse_overrides, train
from clipforge.train.checkpoint import load_checkpoint, resolve_checkpoint
from clipforge.train.metrics import read_metrics

ROOT = Path(__file__).parents[2]
TINY = ["model_overrides.embed_dim=32", "model_overrides.vision.image_size=32", "model_overrides.vision.patch_size=8",
        "model_overrides.vision.width=32", "model_overrides.vision.layers=1", "model_overrides.vision.heads=2",
        "model_overrides.text.width=32", "model_overrides.text.heads=2", "model_overrides.text.layers=1",
        "model_overrides.text.context_length=16", "data.train_size=2000", "eval.size=20", "eval.retrieval_size=8",
        "schedule.warmup_steps=2", "log_every=1"]


def _launch(tmp_path: Path, args: list[str]) -> subprocess.Popen:
    """``clipforge train ...`` in a fresh process (through the train verbs' own module entry point)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "clipforge.cli.train", *args], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_quickstart_path_learns(tmp_path, one_thread, capsys):
    """The quickstart's own config and code path, shortened: the loss falls well below log(batch size)."""
    import argparse

    overrides = ["steps=60", "batch_size=32", "eval.size=50", "eval.retrieval_size=20", "eval.every=0",
                 "schedule.warmup_steps=5", "log_every=5", "data.num_workers=0", f"output_dir={tmp_path / 'run'}"]
    args = argparse.Namespace(config=str(ROOT / "configs/quickstart.yaml"), model=None, overrides=overrides,
                              device="cpu", threads=1)
    assert quickstart_command(args) == 0
    out = capsys.readouterr().out
    assert "zero-shot top-1" in out and "shape" in out and "image → caption R@1" in out
    records = read_metrics(tmp_path / "run/metrics.jsonl")
    losses = [r["loss"] for r in records if "loss" in r]
    assert losses[0] > 0.8 * math.log(32)  # starts near chance
    assert losses[-1] < 0.75 * math.log(32), losses
    for name in ("config.yaml", "loss.png", "zeroshot.png", "similarity.png", "checkpoints/latest"):
        assert (tmp_path / "run" / name).is_file(), name


def test_clippo_quickstart_trains_with_text_pairs_and_reports_every_language(tmp_path, one_thread, capsys):
    """``clipforge quickstart --model clippo-tiny``, shortened and with the paper's text pairs turned on: a table
    with one column per caption language."""
    import argparse

    overrides = ["text_pairs.fraction=0.25", "steps=4", "batch_size=8", "schedule.warmup_steps=2", "eval.size=16",
                 "eval.retrieval_size=8",
                 "log_every=2",
                 "data.num_workers=0", "plots=false", f"output_dir={tmp_path / 'run'}"]
    args = argparse.Namespace(config=None, model="clippo-tiny", overrides=overrides, device="cpu", threads=1)
    assert quickstart_command(args) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if "zero-shot top-1" in line).split()
    assert header[-3:] == ["en", "ru", "ja"]
    saved = yaml.safe_load((tmp_path / "run/config.yaml").read_text())
    assert saved["model"] == "clippo-tiny" and saved["text_pairs"]["fraction"] == 0.25


def test_run_dir_checkpoints_and_locking(tmp_path, one_thread):
    config = load_config(None, parse_overrides([*TINY, "steps=6", "batch_size=8", "checkpoint_every=2",
                                                "keep_checkpoints=2", "lock=image", "plots=false",
                                                f"output_dir={tmp_path}"]))
    before = {k: v.clone() for k, v in _fresh_model_state(config).items()}
    result = train(config, Runtime())
    assert result.step == 6 and len(result.losses) == 6
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*.pt")) == ["step_00000004.pt",
                                                                                     "step_00000006.pt"]
    assert resolve_checkpoint("latest", tmp_path / "checkpoints").name == "step_00000006.pt"
    assert not list((tmp_path / "checkpoints").glob("*.tmp"))
    state = load_checkpoint(result.checkpoint)
    assert state["step"] == 6 and state["config"]["lock"] == "image" and len(state["rng"]) == 1
    assert set(state["rng"][0]) >= {"python", "numpy", "torch"}
    for name, value in state["model"].items():  # the locked image tower did not move; the text tower did
        if name.startswith("visual."):
            torch.testing.assert_close(value, before[name], rtol=0, atol=0)
    assert not torch.equal(state["model"]["text.proj"], before["text.proj"])
    assert load_config(tmp_path / "config.yaml") == config
    exported, _, _ = clipforge.load(tmp_path / "final")  # the final model, as a loadable model directory
    for name, value in exported.state_dict().items():
        torch.testing.assert_close(value, state["model"][name], rtol=0, atol=0)


def _fresh_model_state(config) -> dict[str, torch.Tensor]:
    torch.manual_seed(config.seed)
    return clipforge.create_model(config.model, **config.model_overrides).state_dict()


def test_gradcache_and_grad_checkpointing_train_the_same(tmp_path, one_thread):
    """Accumulation by gradient caching (and activation checkpointing) follows the same trajectory."""
    runs = {}
    for name, extra in {"plain": [], "cached": ["accum_steps=4", "grad_checkpointing=true"]}.items():
        config = load_config(None, parse_overrides([*TINY, "steps=3", "batch_size=16", "plots=false",
                                                    f"output_dir={tmp_path / name}", *extra]))
        runs[name] = train(config, Runtime())
    for (_, a), (_, b) in zip(runs["plain"].losses, runs["cached"].losses):
        assert abs(a - b) < 1e-4


def test_resume_after_sigkill_matches_an_uninterrupted_run(tmp_path):
    args = ["train", *TINY, "steps=40", "batch_size=8", "checkpoint_every=4", "log_every=4", "plots=false"]
    reference = _launch(tmp_path, [*args, f"output_dir={tmp_path / 'reference'}"])
    killed = _launch(tmp_path, [*args, f"output_dir={tmp_path / 'resumed'}"])
    latest = tmp_path / "resumed/checkpoints/latest"
    deadline = time.monotonic() + 60
    while not latest.exists() and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert killed.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    step_at_kill = load_checkpoint(resolve_checkpoint("latest", latest.parent))["step"]
    assert 0 < step_at_kill < 40
    resumed = _launch(tmp_path, [*args, f"output_dir={tmp_path / 'resumed'}", "--resume", "latest"])
    out, _ = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, out
    assert "resumed from" in out and f"at step {step_at_kill}" in out
    out, _ = reference.communicate(timeout=120)
    assert reference.returncode == 0, out

    a = load_checkpoint(tmp_path / "reference/checkpoints/step_00000040.pt")
    b = load_checkpoint(tmp_path / "resumed/checkpoints/step_00000040.pt")
    for name, value in a["model"].items():
        assert (value - b["model"][name]).abs().max().item() <= 1e-6, name
    steps = [r["step"] for r in read_metrics(tmp_path / "resumed/metrics.jsonl") if "loss" in r]
    assert steps == list(range(4, 41, 4))  # the interrupted run's extra records were dropped
    ref = [r["loss"] for r in read_metrics(tmp_path / "reference/metrics.jsonl") if "loss" in r]
    res = [r["loss"] for r in read_metrics(tmp_path / "resumed/metrics.jsonl") if "loss" in r]
    assert ref == pytest.approx(res, abs=1e-6)


def test_torch_compile_trains_the_same_steps(tmp_path, one_thread):
    """``compile=true`` (inductor on the CPU here) gives the eager run's losses step for step."""
    losses = {}
    for compiled in (False, True):
        config = load_config(None, parse_overrides([*TINY, "steps=4", "batch_size=8", "plots=false",
                                                    f"compile={str(compiled).lower()}",
                                                    f"output_dir={tmp_path / str(compiled)}"]))
        losses[compiled] = [loss for _, loss in train(config, Runtime()).losses]
    assert losses[True] == pytest.approx(losses[False], abs=1e-5)
