"""A fine-tune that combines the recipes, killed with SIGKILL after a checkpoint and resumed with ``--resume latest``,
ends bit for bit where an uninterrupted one does, and logs the same ``eval.sets`` values.

Each run is ``clipforge train`` in its own process (``python -m clipforge.cli.main``), from a tiny saved checkpoint:
layer-wise decay on both towers, partial unlocking with ``at_step`` inside the run, distillation from the starting
checkpoint and a zero-shot ``eval.sets`` entry on an image folder (the synthetic world's colour task), with patch
dropout; and the LoRA variant (adapter dropout 0.1). Both dropouts draw from the global torch RNG, which the
checkpoint restores: the DataLoader must not draw from it (it has its own generator). Also: a preset teacher is the
same teacher after a resume in the same process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from clipforge.checkpoints.native import save_pretrained
from clipforge.models.factory import build_model
from clipforge.train import Runtime, load_config, parse_overrides, train
from clipforge.train.checkpoint import load_checkpoint, resolve_checkpoint
from clipforge.train.flyp import write_synthetic_class_folders
from clipforge.train.metrics import read_metrics

ARCH = ["model_overrides.embed_dim=16", "model_overrides.vision.image_size=32", "model_overrides.vision.patch_size=8",
        "model_overrides.vision.width=16", "model_overrides.vision.layers=2", "model_overrides.vision.heads=2",
        "model_overrides.text.width=16", "model_overrides.text.heads=2", "model_overrides.text.layers=2",
        "model_overrides.text.context_length=16"]
STEPS, EVAL_EVERY, AT_STEP = 60, 10, 30
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _start(root: Path) -> Path:
    """The 'pretrained' model the fine-tune starts from (and distils from): seeded random weights, saved."""
    torch.manual_seed(7)
    return save_pretrained(build_model(load_config(None, parse_overrides(ARCH)).model_config()), root / "start")


def _folder(root: Path) -> Path:
    """The synthetic world's colour task (10 classes, 30 test images) as class folders, with its templates."""
    write_synthetic_class_folders(root / "colours", size=30, task="colour", image_size=32)
    return root / "colours"


def _config(root: Path, recipe: str) -> Path:
    """The run's YAML: every fine-tuning recipe of ``recipe`` (``decay_unlock`` or ``lora``) plus distillation from
    the start and a zero-shot set every ``EVAL_EVERY`` steps."""
    start, folder = _start(root), _folder(root)
    config = {
        "model": str(start), "steps": STEPS, "batch_size": 8, "seed": 3, "log_every": 5, "checkpoint_every": 5,
        "keep_checkpoints": 2, "plots": False,
        "schedule": {"warmup_steps": 3},
        "data": {"train_size": 300},
        "optim": {"lr": 5e-3, "weight_decay": 0.1, "image_layer_decay": 0.7, "text_layer_decay": 0.8},
        "distill": {"teacher": str(start), "weight": 0.5},
        "eval": {"every": EVAL_EVERY, "size": 4, "retrieval_size": 0,
                 "sets": [{"name": "colours", "task": "zeroshot", "data": str(folder / "test"),
                           "templates": str(folder / "templates.txt")}]},
    }
    if recipe == "decay_unlock":
        config["unlock"] = {"image_blocks": 1, "text_blocks": 0, "at_step": AT_STEP}
        config["model_overrides"] = {"vision": {"patch_dropout": 0.25}}  # random ops in the student's forward
    else:
        config["lora"] = {"rank": 4, "alpha": 8.0, "dropout": 0.1, "targets": ["attn", "mlp"]}
    path = root / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    load_config(path)  # a bad field fails here, not in a subprocess
    return path


def _launch(config: Path, run_dir: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "clipforge.cli.main", "train", "--config", str(config),
                             f"output_dir={run_dir}", "--device", "cpu", *extra], env=ENV, cwd=run_dir.parent,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _kill_after_first_checkpoint(process: subprocess.Popen, run_dir: Path) -> dict:
    """SIGKILLs ``process`` as soon as its run dir names a checkpoint; returns the checkpoint it resumes from."""
    latest = run_dir / "checkpoints/latest"
    deadline = time.monotonic() + 120
    try:
        while not latest.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
        out, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == -signal.SIGKILL, f"the run was not killed mid-way (rc {process.returncode}): {out}"
    assert not (run_dir / "final").exists()
    return load_checkpoint(resolve_checkpoint("latest", latest.parent))


def _eval_set_records(run_dir: Path) -> dict[int, dict[str, float]]:
    return {r["step"]: {k: v for k, v in r.items() if k.startswith("colours/")}
            for r in read_metrics(run_dir / "metrics.jsonl") if any(k.startswith("colours/") for k in r)}


@pytest.mark.parametrize("recipe", ["decay_unlock", "lora"])
def test_a_finetune_resumed_after_kill_9_ends_where_an_uninterrupted_one_does(tmp_path: Path, recipe: str) -> None:
    config = _config(tmp_path, recipe)
    reference = _launch(config, tmp_path / "reference")
    killed = _launch(config, tmp_path / "resumed")
    saved = _kill_after_first_checkpoint(killed, tmp_path / "resumed")
    step_at_kill = saved["step"]
    assert 0 < step_at_kill < STEPS
    start = load_file(tmp_path / "start/model.safetensors")
    frozen = "visual.transformer.blocks.0.attn.qkv.weight"  # frozen until at_step (decay_unlock), a base weight (lora)
    assert torch.equal(saved["model"][frozen], start[frozen])
    if recipe == "decay_unlock":
        assert step_at_kill < AT_STEP, "the resumed run should cross unlock.at_step"
    else:
        assert any(k.endswith("lora_B") for k in saved["model"])
    resumed = _launch(config, tmp_path / "resumed", "--resume", "latest")
    out, _ = resumed.communicate(timeout=240)
    assert resumed.returncode == 0, out
    assert "resumed from" in out and f"at step {step_at_kill}" in out
    out, _ = reference.communicate(timeout=240)
    assert reference.returncode == 0, out

    a = load_file(tmp_path / "reference/final/model.safetensors")
    b = load_file(tmp_path / "resumed/final/model.safetensors")
    assert a.keys() == b.keys()
    assert [k for k in a if not torch.equal(a[k], b[k])] == [], "the resumed run took other steps"
    assert not torch.equal(a[frozen], start[frozen])  # unlocked at step 30 (lora: the merged adapters' update)

    expected, got = _eval_set_records(tmp_path / "reference"), _eval_set_records(tmp_path / "resumed")
    assert sorted(expected) == list(range(EVAL_EVERY, STEPS + 1, EVAL_EVERY))
    assert len({tuple(values.items()) for values in expected.values()}) > 1  # the values move: equality tells
    assert sorted(got) == sorted(expected)
    after = [s for s in expected if s > step_at_kill]
    assert after and all(expected[s] == got[s] for s in after), (expected, got)
    assert all(expected[s] == got[s] for s in expected)  # the records up to the kill are the killed run's own


def test_a_preset_teacher_is_the_same_teacher_after_a_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             one_thread: None) -> None:
    """Regression: a preset teacher (random weights) was drawn from the global RNG as it stood when ``prepare`` ran,
    so a run resumed after other work in the process distilled from another teacher than the uninterrupted run."""
    import clipforge.train.loop as loop

    small = ["model=tiny-vit", "model_overrides.embed_dim=16", "model_overrides.vision.width=32",
             "model_overrides.vision.layers=1", "model_overrides.text.width=32", "model_overrides.text.layers=1"]
    args = [*small, "distill.teacher=tiny-vit", "steps=4", "checkpoint_every=2", "batch_size=8", "log_every=1",
            "data.train_size=100", "eval.size=4", "eval.retrieval_size=0", "schedule.warmup_steps=1", "plots=false"]
    reference = train(load_config(None, parse_overrides([*args, f"output_dir={tmp_path / 'reference'}"])), Runtime())
    config = load_config(None, parse_overrides([*args, f"output_dir={tmp_path / 'resumed'}"]))
    calls, forward_backward = [], loop.forward_backward

    def dies_at_the_third_step(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # after the step-2 checkpoint
        return forward_backward(*a, **k)

    monkeypatch.setattr(loop, "forward_backward", dies_at_the_third_step)
    with pytest.raises(KeyboardInterrupt):
        train(config, Runtime())
    monkeypatch.setattr(loop, "forward_backward", forward_backward)
    torch.rand(100)  # other work in this process moves the global RNG
    resumed = train(config, Runtime(), resume="latest")
    assert [s for s, _ in resumed.losses] == [3, 4]
    assert [v for _, v in resumed.losses] == [v for _, v in reference.losses[2:]]
    a = load_file(tmp_path / "reference/final/model.safetensors")
    b = load_file(tmp_path / "resumed/final/model.safetensors")
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
