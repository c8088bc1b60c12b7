"""Resuming never runs code from a checkpoint, ``latest`` never leads out of its folder, and damaged run state
(a truncated or altered checkpoint, a torn log line, a killed save's temporary file) never blocks a resume."""

from __future__ import annotations

import os
import pickle
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from clipforge.config import parse_overrides
from clipforge.train import Runtime, load_config, train
from clipforge.train.checkpoint import (
    CheckpointLoadError,
    load_checkpoint,
    resolve_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)

TINY = ["model_overrides.embed_dim=16", "model_overrides.vision.image_size=32", "model_overrides.vision.patch_size=16",
        "model_overrides.vision.width=16", "model_overrides.vision.layers=1", "model_overrides.vision.heads=2",
        "model_overrides.text.width=16", "model_overrides.text.heads=2", "model_overrides.text.layers=1",
        "model_overrides.text.context_length=8", "data.train_size=64", "eval.size=8", "eval.retrieval_size=4",
        "schedule.warmup_steps=1", "batch_size=4", "log_every=1", "plots=false"]


class _Payload:
    """Unpickling this writes a marker file: what an attacker's checkpoint would do, harmlessly."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "code ran"))


def test_a_crafted_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "step_00000001.pt"
    torch.save({"step": 1, "model": {}, "evil": _Payload(marker)}, path)
    with pytest.raises(CheckpointLoadError, match="could run code"):
        load_checkpoint(path)
    assert not marker.exists()
    # The same bytes as a plain pickle (not torch's zip layout) are refused too.
    raw = tmp_path / "raw.pt"
    raw.write_bytes(pickle.dumps({"step": 1, "model": {}, "evil": _Payload(marker)}))
    with pytest.raises(CheckpointLoadError):
        load_checkpoint(raw)
    assert not marker.exists()


def test_resume_from_a_crafted_checkpoint_is_a_clear_cli_error(tmp_path):
    run = tmp_path / "run"
    marker = tmp_path / "pwned"
    (run / "checkpoints").mkdir(parents=True)
    torch.save({"step": 1, "model": {}, "evil": _Payload(marker)}, run / "checkpoints/step_00000001.pt")
    (run / "checkpoints/latest").write_text("step_00000001.pt\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "clipforge.cli.main", "train", *TINY, "steps=2",
                           f"output_dir={run}", "--resume", "latest"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "could run code" in proc.stderr and "Traceback" not in proc.stderr
    assert not marker.exists()


@pytest.mark.parametrize("pointer", ["../outside.pt", "/etc/passwd", "sub/step_00000001.pt", "step_1.pt.evil",
                                     "link_step"])
def test_latest_is_confined_to_its_folder(tmp_path, pointer):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    torch.save({"step": 1, "model": {}}, tmp_path / "outside.pt")
    if pointer == "link_step":  # a step file that is a link out of the folder
        pointer = "step_00000009.pt"
        (folder / pointer).symlink_to(tmp_path / "outside.pt")
    (folder / "latest").write_text(pointer + "\n")
    with pytest.raises(CheckpointLoadError, match="must name a step_<N>.pt file"):
        resolve_checkpoint("latest", folder)


def test_latest_naming_a_missing_file_says_so(tmp_path):
    (tmp_path / "latest").write_text("step_00000003.pt\n")
    with pytest.raises(FileNotFoundError, match="step_00000003.pt"):
        resolve_checkpoint("latest", tmp_path)


def test_rng_states_round_trip_through_a_safe_checkpoint(tmp_path):
    device = torch.device("cpu")
    random.seed(1)
    np.random.seed(2)
    np.random.normal()  # leaves a cached Gaussian in NumPy's state
    torch.manual_seed(3)
    path = save_checkpoint(tmp_path, 1, {"step": 1, "model": {}, "rng": [rng_state(device)]})
    expected = (random.random(), np.random.normal(), torch.rand(1))
    set_rng_state(load_checkpoint(path)["rng"][0], device)
    assert (random.random(), np.random.normal(), torch.rand(1)) == expected


def test_real_training_checkpoints_load_safely_and_resume(tmp_path, one_thread):
    """What the loop writes loads with ``weights_only`` and resumes to the same weights as the uninterrupted run."""
    config = load_config(None, parse_overrides([*TINY, "steps=4", "checkpoint_every=2", f"output_dir={tmp_path}"]))
    full = load_checkpoint(train(config, Runtime()).checkpoint)["model"]
    folder = tmp_path / "checkpoints"
    for leftover in ("step_00000004.pt", "step_00000004.json"):  # as if the run had stopped after step 2
        (folder / leftover).unlink()
    (folder / "latest").write_text("step_00000002.pt\n")
    resumed = load_checkpoint(train(config, Runtime(), resume="latest").checkpoint)["model"]
    for name in full:
        torch.testing.assert_close(full[name], resumed[name], rtol=0, atol=1e-6)


def test_a_damaged_latest_falls_back_to_the_newest_intact_checkpoint(tmp_path):
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, {"step": step, "model": {}}, keep=3)
    third = tmp_path / "step_00000003.pt"
    third.write_bytes(third.read_bytes()[:100])  # truncated
    with pytest.warns(UserWarning, match="truncated.*step_00000002.pt"):
        assert resolve_checkpoint("latest", tmp_path).name == "step_00000002.pt"
    second = tmp_path / "step_00000002.pt"
    data = bytearray(second.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one byte altered
    second.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="step_00000001.pt"):
        assert resolve_checkpoint("latest", tmp_path).name == "step_00000001.pt"
    (tmp_path / "step_00000001.pt").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="no other intact checkpoint"):
        resolve_checkpoint("latest", tmp_path)


def test_a_torn_last_metrics_line_is_dropped_and_other_damage_is_named(tmp_path):
    from clipforge.train.metrics import read_metrics

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n{"step": 3, "lo')
    with pytest.warns(UserWarning, match="line 3 is torn"):
        assert [r["step"] for r in read_metrics(path)] == [1, 2]
    path.write_text('{"step": 1}\nnot json\n{"step": 3}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl: line 2"):
        read_metrics(path)


def test_resume_survives_a_torn_log_a_truncated_latest_and_stale_temp_files(tmp_path, one_thread):
    """A run killed mid-save and mid-log: resuming uses the previous checkpoint, drops the torn line, removes the
    killed save's temporary file, and ends with the uninterrupted run's weights."""
    config = load_config(None, parse_overrides([*TINY, "steps=6", "checkpoint_every=2", "keep_checkpoints=3",
                                                f"output_dir={tmp_path}"]))
    full = load_checkpoint(train(config, Runtime()).checkpoint)["model"]
    latest = tmp_path / "checkpoints/step_00000006.pt"
    latest.write_bytes(latest.read_bytes()[: latest.stat().st_size // 2])
    stale = tmp_path / "checkpoints/.step_00000006.pt.abc123.tmp"
    stale.write_bytes(b"\0" * 1000)
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write('{"step": 7, "loss": 1.2')
    with pytest.warns(UserWarning, match="resuming from step_00000004.pt"):
        resumed = load_checkpoint(train(config, Runtime(), resume="latest").checkpoint)["model"]
    assert not stale.exists()
    for name in full:
        torch.testing.assert_close(full[name], resumed[name], rtol=0, atol=1e-6)
    from clipforge.train.metrics import read_metrics

    steps = [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl") if "loss" in r]
    assert steps == sorted(steps) and steps[-1] == 6 and len(steps) == len(set(steps))
