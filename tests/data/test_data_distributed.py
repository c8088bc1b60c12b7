"""Two CPU processes (gloo) on tar shards: disjoint shards per rank, counts summed over ranks, positions saved."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from clipforge.train import load_config, parse_overrides, train
from clipforge.train.checkpoint import load_checkpoint
from clipforge.train.distributed import init_runtime, shutdown
from clipforge.train.metrics import read_metrics
from helpers.shards import TINY, write_damaged_shards

pytestmark = pytest.mark.distributed


def _worker(rank: int, port: int, shards: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    runtime = init_runtime("cpu")
    try:
        args = [*TINY, "data.kind=shards", f"data.urls={shards}", "data.interleave=1",
                "data.decode.max_pixels=100000", "steps=8", "batch_size=16", "log_every=8", f"output_dir={out}"]
        train(load_config(None, parse_overrides(args)), runtime)
    finally:
        shutdown(runtime)



def test_two_ranks_read_disjoint_shards_and_report_summed_counts(tmp_path: Path, free_port: int):
    expected = write_damaged_shards(tmp_path / "shards")  # 8 shards, 8 good samples each, each ends good
    mp.spawn(_worker, args=(free_port, str(tmp_path / "shards"), str(tmp_path / "run")), nprocs=2, join=True)
    last = [r for r in read_metrics(tmp_path / "run/metrics.jsonl") if "loss" in r][-1]
    assert last["data/used"] == 128  # 8 steps × 16: each rank read its 4 shards (32 good samples) twice
    counted = {k.removeprefix("data/skipped/"): v for k, v in last.items() if k.startswith("data/skipped/")}
    assert counted == {reason: 2 * n for reason, n in expected.items()}  # both epochs, both ranks, summed
    ranks = load_checkpoint(tmp_path / "run/checkpoints/step_00000008.pt")["data"]["ranks"]
    assert [r["used"] for r in ranks] == [64, 64]
    shards = [{path for path, _ in r["positions"][0]["sources"][0]["open"]} for r in ranks]
    assert all(r["positions"][0]["sources"][0]["epoch"] == 1 for r in ranks) and not shards[0] & shards[1]
