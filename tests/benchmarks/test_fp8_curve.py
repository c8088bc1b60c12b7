"""``benchmarks/fp8_curve.py``: both runs train on the same batches, the gap is fp8's loss minus bf16's, and the
float8 run really runs float8 layers (emulated on the CPU)."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from helpers.scripts import load_script
from helpers.tiny import tiny_vit_overrides

pytest.importorskip("torchao")


@pytest.fixture(scope="module")
def script() -> ModuleType:
    return load_script("benchmarks/fp8_curve.py", "fp8_curve")


def test_gap_is_fp8_minus_bf16(script: ModuleType) -> None:
    bf16 = {10: 4.0, 20: 3.0, 30: 2.0}
    fp8 = {10: 4.5, 20: 2.9, 30: 2.1}
    assert script.gap(bf16, fp8, tail=2) == {"final": 0.1, "mean_last": 0.0, "max_abs": 0.5, "tail_points": 2}


def test_two_short_runs(script: ModuleType, tmp_path: Path, one_thread: Any,
                        capsys: pytest.CaptureFixture[str]) -> None:
    report = script.main(["--device", "cpu", "--steps", "3", "--emulate", "--work", str(tmp_path), "--tail", "2",
                          *tiny_vit_overrides(), "batch_size=8", "data.train_size=64", "eval.size=8",
                          "eval.retrieval_size=4", "log_every=1", "schedule.warmup_steps=1"])
    out = capsys.readouterr().out  # the runs' step lines, then the report
    assert json.loads(out[out.index("\n{") + 1:]) == json.loads(json.dumps(report))
    bf16, fp8 = report["runs"]["bf16"]["losses"], report["runs"]["fp8"]["losses"]
    assert bf16.keys() == fp8.keys() == {1, 2, 3}
    assert bf16[1] != fp8[1] and abs(bf16[1] - fp8[1]) < 0.05 * bf16[1]  # float8's rounding, the same first batch
    assert report["gap"]["final"] == pytest.approx(fp8[3] - bf16[3], abs=1e-5)
