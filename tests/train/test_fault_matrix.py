"""The training fault matrix: a run killed at any moment (inside a checkpoint write included), or stopped by a
full disk, resumes to exactly the uninterrupted run's weights (≤ 1e-6), or refuses clearly; never a traceback.

Each scenario runs ``clipforge train`` in fresh processes: one that dies (SIGKILL from outside at a seeded
moment, or from inside a checkpoint save through tests/helpers/faults.py, or a file-size limit standing in for a
full disk), then ``--resume latest`` until the run is done. Synthetic data, tar shards, and tar shards in which
consecutive samples share a key.
"""

from __future__ import annotations

import os
import random
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clipforge.data.webdataset import write_tar_shard
from clipforge.train.checkpoint import load_checkpoint
from helpers.shards import good, write_good_shards

HELPERS = Path(__file__).parents[1] / "helpers"
STEPS = 12
TINY = ["model_overrides.embed_dim=16", "model_overrides.vision.image_size=32", "model_overrides.vision.patch_size=16",
        "model_overrides.vision.width=16", "model_overrides.vision.layers=1", "model_overrides.vision.heads=2",
        "model_overrides.text.width=16", "model_overrides.text.heads=2", "model_overrides.text.layers=1",
        "model_overrides.text.context_length=8", "data.train_size=256", "eval.size=8", "eval.retrieval_size=4",
        "schedule.warmup_steps=1", "batch_size=4", "plots=false", f"steps={STEPS}", "checkpoint_every=2",
        "keep_checkpoints=3", "log_every=1"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
       "PYTHONPATH": os.pathsep.join([str(HELPERS.parent), os.environ.get("PYTHONPATH", "")])}


def _args(run: Path, data: list[str]) -> list[str]:
    return ["train", *TINY, *data, f"output_dir={run}"]


def _clipforge(args: list[str], cwd: Path, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "clipforge.cli.main", *args], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=240, **kwargs)


def _final(run: Path) -> dict:
    return load_checkpoint(run / f"checkpoints/step_{STEPS:08d}.pt")["model"]


def _assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert (a[name] - b[name]).abs().max().item() <= 1e-6, name


def _resume_to_the_end(run: Path, data: list[str], cwd: Path) -> None:
    done = _clipforge([*_args(run, data), "--resume", "latest"], cwd)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-2000:]


def _shards_with_repeated_keys(folder: Path) -> None:
    """Four shards in which some consecutive samples share a key (and one key comes back later in its shard)."""
    folder.mkdir(parents=True)
    for s in range(4):
        samples = [good(f"{s:03d}{i // 2 if i < 8 else i:03d}", s * 100 + i) for i in range(20)]
        samples.append(good(f"{s:03d}000", s * 100 + 99))
        write_tar_shard(folder / f"{s:05d}.tar", samples)


# The default run covers tar shards; the synthetic source and shards with repeated keys run in the slow tier.
@pytest.fixture(scope="module", params=[pytest.param("synthetic", marks=pytest.mark.slow), "shards",
                                        pytest.param("shards_repeated_keys", marks=pytest.mark.slow)])
def setting(request, tmp_path_factory):
    """The data overrides and the uninterrupted run's final weights, per data kind."""
    root = tmp_path_factory.mktemp(request.param)
    data = []
    if request.param.startswith("shards"):
        if request.param == "shards":
            write_good_shards(root / "shards", shards=4, per_shard=20)
        else:
            _shards_with_repeated_keys(root / "shards")
        data = ["data.kind=shards", f"data.urls={root / 'shards'}"]
    reference = _clipforge(_args(root / "reference", data), root)
    assert reference.returncode == 0, reference.stderr[-2000:]
    return data, _final(root / "reference"), root


@pytest.mark.parametrize("fault", ["mid_write", "before_record", "before_latest"])
def test_death_inside_a_checkpoint_save(setting, fault, tmp_path):
    data, reference, _ = setting
    run = tmp_path / "run"
    died = subprocess.run([sys.executable, str(HELPERS / "faults.py"), fault, "3", "--", *_args(run, data)],
                          cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=240)
    assert died.returncode == -signal.SIGKILL, died.stderr[-2000:]
    _resume_to_the_end(run, data, tmp_path)
    assert not list((run / "checkpoints").glob(".*.tmp"))  # the killed save's leftovers were removed
    _assert_same_weights(reference, _final(run))


@pytest.mark.parametrize("seed", [0, 1])
def test_sigkill_at_a_seeded_moment_then_resume(setting, seed, tmp_path):
    """Killed from outside after a seeded number of logged steps (anywhere in a step, a save or a log write)."""
    data, reference, _ = setting
    run = tmp_path / "run"
    wait_for = random.Random(seed).randint(3, STEPS - 2)  # logged steps before the kill
    proc = subprocess.Popen([sys.executable, "-m", "clipforge.cli.main", *_args(run, data)], cwd=tmp_path, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics, deadline = run / "metrics.jsonl", time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if metrics.is_file() and metrics.read_text().count("\n") >= wait_for:
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    _resume_to_the_end(run, data, tmp_path)
    _assert_same_weights(reference, _final(run))


def test_a_full_disk_is_a_clear_refusal_and_resume_finishes(setting, tmp_path):
    """A file-size limit below one checkpoint's size stands in for a full disk: the save fails with a one-line
    error naming the checkpoint, nothing half-written is left, and a resume with room finishes the run exactly."""
    data, reference, root = setting
    size = (root / f"reference/checkpoints/step_{STEPS:08d}.pt").stat().st_size
    run = tmp_path / "run"

    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (size // 2, size // 2))

    full = _clipforge(_args(run, data), tmp_path, preexec_fn=limit_file_size)
    assert full.returncode == 2, full.stderr[-2000:]
    assert "Traceback" not in full.stderr and len(full.stderr.strip().splitlines()[-1:]) == 1
    assert "could not write the step-2 checkpoint" in full.stderr and "File too large" in full.stderr
    assert not list((run / "checkpoints").glob(".*.tmp")) and not (run / "checkpoints/latest").exists()
    _resume_to_the_end(run, data, tmp_path)
    _assert_same_weights(reference, _final(run))
