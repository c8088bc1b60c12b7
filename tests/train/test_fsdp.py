"""FSDP2 on the CPU (gloo): 2 and 4 ranks train exactly like one process; checkpoints reshard 4 → 2 → 1.

Each spawned world runs every case in the same processes (one group start per world). The reference is a single
process with ``parallel: ddp`` on the same global batch: the step losses, and the final weights rank 0 exports from
the gathered shards, agree within 1e-5 (fp32). The 4-rank case is in the slow tier (the resharding test trains on
4 ranks in the default run).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

import clipforge
from clipforge.models.factory import build_model
from clipforge.train import Runtime, load_config, parse_overrides, train
from clipforge.train.distributed import init_runtime, shutdown

pytestmark = pytest.mark.distributed

TOWER = ["model_overrides.vision.image_size=32", "model_overrides.vision.patch_size=8",
         "model_overrides.vision.width=32", "model_overrides.vision.layers=2", "model_overrides.vision.heads=2"]
CLIP_RUN = ["model=tiny-vit", "model_overrides.embed_dim=32", *TOWER, "model_overrides.text.width=32",
            "model_overrides.text.heads=2", "model_overrides.text.layers=2", "model_overrides.text.context_length=16"]
CLIPPO_RUN = ["model=clippo-tiny", "model_overrides.embed_dim=32", *TOWER, "model_overrides.render.image_size=32"]
COMMON = ["data.train_size=400", "eval.size=8", "eval.retrieval_size=4", "schedule.warmup_steps=1", "log_every=1",
          "batch_size=8", "plots=false", "data.augment=true", "optim.grad_clip=0.5"]
CASES = {"clip": CLIP_RUN, "clip-gradcache": [*CLIP_RUN, "accum_steps=2"], "clippo": CLIPPO_RUN,
         "clippo-gradcache": [*CLIPPO_RUN, "accum_steps=2"],
         "clip-lit-checkpointing": [*CLIP_RUN, "lock=image", "grad_checkpointing=true", "local_loss=true"],
         "clip-ema-smoothing": [*CLIP_RUN, "ema.decay=0.5", "label_smoothing=0.1"]}
RESHARD = [*CLIP_RUN, *COMMON, "steps=6", "checkpoint_every=2", "keep_checkpoints=5", "parallel=fsdp"]


def _config(overrides: list[str], out: Path):
    return load_config(None, parse_overrides([*overrides, f"output_dir={out}"]))


def _join(rank: int, world_size: int, port: int) -> Runtime:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    return init_runtime("cpu")


def _cases_worker(rank: int, world_size: int, port: int, out: str) -> None:
    runtime = _join(rank, world_size, port)
    try:
        losses = {}
        for name, overrides in CASES.items():
            config = _config([*overrides, *COMMON, "steps=3", "parallel=fsdp"], Path(out) / f"{name}-{world_size}")
            losses[name] = train(config, runtime).losses
        if runtime.is_main:
            torch.save(losses, Path(out) / f"losses-{world_size}.pt")
    finally:
        shutdown(runtime)


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return clipforge.load(str(run_dir / "final"))[0].state_dict()


def _max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


@pytest.fixture(scope="module")
def single_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, list]]:
    """The one-process ``parallel: ddp`` reference of every case."""
    out = tmp_path_factory.mktemp("single")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        losses = {name: train(_config([*overrides, *COMMON, "steps=3"], out / name), Runtime()).losses
                  for name, overrides in CASES.items()}
    finally:
        torch.set_num_threads(threads)
    return out, losses


@pytest.mark.parametrize("world_size", [2, pytest.param(4, marks=pytest.mark.slow)])
def test_fsdp_ranks_equal_one_process(world_size: int, single_runs: tuple[Path, dict[str, list]], tmp_path: Path,
                                      free_port: int):
    mp.spawn(_cases_worker, args=(world_size, free_port, str(tmp_path)), nprocs=world_size, join=True)
    sharded = torch.load(tmp_path / f"losses-{world_size}.pt")
    single_dir, single = single_runs
    for name in CASES:
        assert [s for s, _ in sharded[name]] == [s for s, _ in single[name]] == [1, 2, 3], name
        for (_, a), (_, b) in zip(sharded[name], single[name]):
            assert abs(a - b) <= 1e-5, (name, a, b)
        difference = _max_difference(_weights(tmp_path / f"{name}-{world_size}"), _weights(single_dir / name))
        assert difference <= 1e-5, (name, difference)
        # The weights moved: three steps changed them far beyond the tolerance.
        torch.manual_seed(0)
        fresh = build_model(_config([*CASES[name], *COMMON], tmp_path / "unused").model_config()).state_dict()
        assert _max_difference(_weights(single_dir / name), fresh) > 1e-3


def _reshard_worker(rank: int, world_size: int, port: int, out: str, resume: str | None) -> None:
    runtime = _join(rank, world_size, port)
    try:
        if world_size == 4:  # each rank holds about a quarter of the parameters, gradients and Adam state
            from clipforge.train.fsdp import memory_report, shard_model

            model = clipforge.create_model("tiny-vit", embed_dim=32)
            shard_model(model, runtime, None)
            report = memory_report(model)
            torch.save(report, Path(out) / f"memory-{rank}.pt")
        train(_config(RESHARD, Path(out) / "run"), runtime, resume=resume)
    finally:
        shutdown(runtime)


def _another_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rewind(checkpoints: Path, step: int) -> None:
    """Drops the checkpoints after ``step`` and points ``latest`` at it: the run was 'stopped' there."""
    for folder in checkpoints.glob("step_*"):
        if folder.is_dir() and int(folder.name.split("_")[1]) > step:
            shutil.rmtree(folder)
            folder.with_name(folder.name + ".json").unlink()
    (checkpoints / "latest").write_text(f"step_{step:08d}\n")
    shutil.rmtree(checkpoints.parent / "final")


def test_resume_reshards_from_four_ranks_to_two_to_one(tmp_path: Path, free_port: int):
    reference = train(_config([*RESHARD, "parallel=ddp", "checkpoint_every=0"], tmp_path / "reference"), Runtime())
    checkpoints = tmp_path / "run" / "checkpoints"

    mp.spawn(_reshard_worker, args=(4, free_port, str(tmp_path), None), nprocs=4, join=True)
    reports = [torch.load(tmp_path / f"memory-{r}.pt", weights_only=False) for r in range(4)]
    for report in reports:
        share = report.parameters / report.total_parameters
        assert 0.22 <= share <= 0.28, share
        assert report.optimizer == 2 * report.parameters  # fp32 moments of the shard
    assert sum(r.parameters for r in reports) >= reports[0].total_parameters
    four = _weights(tmp_path / "run")
    assert _max_difference(four, _weights(tmp_path / "reference")) <= 1e-5

    _rewind(checkpoints, 2)
    mp.spawn(_reshard_worker, args=(2, _another_port(), str(tmp_path), "latest"), nprocs=2, join=True)
    assert _max_difference(_weights(tmp_path / "run"), four) <= 1e-5
    _rewind(checkpoints, 4)
    result = train(_config(RESHARD, tmp_path / "run"), Runtime(), resume="latest")
    assert [s for s, _ in result.losses] == [5, 6]
    for (step, a), (_, b) in zip(result.losses, reference.losses[4:]):
        assert abs(a - b) <= 1e-5, step
    assert _max_difference(_weights(tmp_path / "run"), _weights(tmp_path / "reference")) <= 1e-5


def _compile_worker(rank: int, port: int, out: str) -> None:
    runtime = _join(rank, 2, port)
    try:
        train(_config([*CLIP_RUN, *COMMON, "steps=3", "parallel=fsdp", "compile=true"], Path(out) / "compiled"),
              runtime)
    finally:
        shutdown(runtime)


@pytest.mark.slow
def test_fsdp_composes_with_torch_compile(single_runs: tuple[Path, dict[str, list]], tmp_path: Path, free_port: int):
    mp.spawn(_compile_worker, args=(free_port, str(tmp_path)), nprocs=2, join=True)
    single_dir, _ = single_runs
    assert _max_difference(_weights(tmp_path / "compiled"), _weights(single_dir / "clip")) <= 1e-5
