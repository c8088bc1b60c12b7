"""torchrun as users run it: an elastic restart after a worker is killed, and two 'nodes' meeting by c10d rendezvous.

Both launch the real console entry point (``python -m clipforge.cli.main train``) under ``torchrun`` on the CPU with
gloo. The killed job is restarted by torchrun (``--max-restarts``), resumes from ``latest`` and ends with the weights
of an uninterrupted run, wherever the kill landed (between steps or in the middle of a save).
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

import clipforge
from clipforge.train import Runtime, load_config, parse_overrides, train
from helpers.tiny import tiny_vit_overrides

pytestmark = pytest.mark.distributed

RUN = [*tiny_vit_overrides(), "data.train_size=400", "eval.size=8", "eval.retrieval_size=4",
       "schedule.warmup_steps=1", "log_every=1", "batch_size=8", "plots=false"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _reference(tmp_path: Path, overrides: list[str]) -> dict[str, torch.Tensor]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(load_config(None, parse_overrides([*overrides, f"output_dir={tmp_path / 'reference'}"])), Runtime())
    finally:
        torch.set_num_threads(threads)
    return clipforge.load(str(tmp_path / "reference" / "final"))[0].state_dict()


def _max_difference(run_dir: Path, reference: dict[str, torch.Tensor]) -> float:
    weights = clipforge.load(str(run_dir / "final"))[0].state_dict()
    return max((weights[k] - reference[k]).abs().max().item() for k in reference)


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (read from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


@pytest.mark.slow  # ~40 s a case; the SLURM test below is the default run's torchrun smoke test
@pytest.mark.parametrize("parallel", ["fsdp", "ddp"])
def test_torchrun_restarts_a_killed_worker_and_finishes_like_an_uninterrupted_run(parallel: str, tmp_path: Path,
                                                                                   free_port: int):
    overrides = [*RUN, "steps=40", "checkpoint_every=4", f"parallel={parallel}"]
    reference = _reference(tmp_path, overrides)
    run_dir = tmp_path / "run"
    command = [*TORCHRUN, "--nproc-per-node=2", "--max-restarts=1", "--rdzv-backend=c10d",
               f"--rdzv-endpoint=127.0.0.1:{free_port}", "-m", "clipforge.cli.main", "train", *overrides,
               f"output_dir={run_dir}", "--resume", "latest"]
    log = (tmp_path / "torchrun.log").open("w")
    job = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=_env())
    latest, killed, deadline = run_dir / "checkpoints" / "latest", None, time.monotonic() + 180
    while job.poll() is None and time.monotonic() < deadline:  # kill a worker once the first checkpoint exists
        if killed is None and latest.is_file():
            workers = _children(job.pid)
            if len(workers) == 2:
                killed = workers[1]
                os.kill(killed, signal.SIGKILL)
        time.sleep(0.02)
    if job.poll() is None:
        job.kill()
    log.close()
    output = (tmp_path / "torchrun.log").read_text(errors="replace")
    assert job.wait() == 0, output[-3000:]
    assert killed is not None, "the run ended before a worker could be killed"
    assert "resumed from" in output, output[-3000:]  # the restarted workers continued from a checkpoint
    assert _max_difference(run_dir, reference) <= 1e-5


@pytest.mark.slow
def test_two_nodes_meet_by_c10d_rendezvous_and_train_like_one_process(tmp_path: Path, free_port: int):
    overrides = [*RUN, "steps=3", "parallel=fsdp"]
    reference = _reference(tmp_path, overrides)
    run_dir = tmp_path / "run"
    nodes = [subprocess.Popen([*TORCHRUN, "--nnodes=2", "--nproc-per-node=1", "--rdzv-backend=c10d",
                               f"--rdzv-endpoint=127.0.0.1:{free_port}", "--rdzv-id=clipforge-test", "-m",
                               "clipforge.cli.main", "train", *overrides, f"output_dir={run_dir}"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=_env(), text=True)
             for _ in range(2)]
    outputs = [node.communicate(timeout=240)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    assert "fsdp rank 1" in "".join(outputs)  # one world of two ranks, one per node
    assert _max_difference(run_dir, reference) <= 1e-5


def test_the_slurm_script_starts_torchrun_and_trains(tmp_path: Path, free_port: int):
    """examples/slurm/train.sbatch on one 'node' of two workers, with ``srun`` and ``scontrol`` stood in for."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text('#!/bin/bash\nwhile [[ "$1" == --* ]]; do shift; done\nexec "$@"\n')
    (bin_dir / "scontrol").write_text("#!/bin/bash\necho 127.0.0.1\n")
    for tool in ("srun", "scontrol"):
        (bin_dir / tool).chmod(0o755)
    script = Path(__file__).parents[2] / "examples" / "slurm" / "train.sbatch"
    env = {**_env(), "PATH": f"{bin_dir}:{Path(sys.executable).parent}:{os.environ['PATH']}", "SLURM_NNODES": "1",
           "SLURM_JOB_NODELIST": "node-[1]", "SLURM_JOB_ID": "42", "GPUS_PER_NODE": "2",
           "RDZV_PORT": str(free_port), "MAX_RESTARTS": "0"}
    config = Path(__file__).parents[2] / "configs" / "tiny_synthetic.yaml"
    done = subprocess.run(["bash", str(script), str(config), *RUN, "steps=2", "parallel=fsdp",
                           f"output_dir={tmp_path / 'run'}"], env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "fsdp rank 1" in done.stderr
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()
