"""Hostile data end to end (``tests/helpers/hostile.py``): over a thousand bad samples of dozens of kinds never
end ``data stats``, ``train``, ``eval zeroshot`` or ``classify``, never print a traceback, and are counted exactly
by the reasons ``clipforge.data.decode`` documents."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from clipforge.cli import classify as classify_cli
from clipforge.cli import eval as eval_cli
from clipforge.cli.main import main
from clipforge.eval import EvalModel
from clipforge.eval.datasets import CsvDataset, ImageFolder
from clipforge.train.metrics import read_metrics
from helpers.fakes import FakeCLIP, fake_processor, fake_transform
from helpers.hostile import IMAGE_KINDS, Expected, write_hostile
from helpers.shards import TINY

ROOT = Path(__file__).parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> tuple[Path, Expected]:
    out = tmp_path_factory.mktemp("hostile")
    return out, write_hostile(out)


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    run = subprocess.run([sys.executable, "-m", "clipforge.cli.main", *args], env=ENV, cwd=cwd, capture_output=True,
                         text=True, timeout=150)
    assert "Traceback" not in run.stdout + run.stderr, run.stderr[-3000:]
    assert run.returncode == 0, run.stderr[-3000:]
    return run


def test_the_generator_writes_over_a_thousand_bad_samples_of_over_thirty_kinds(hostile, tmp_path):
    out, expected = hostile
    assert sum(expected.shards["skipped"].values()) >= 1000 and len(expected.kinds) >= 30
    assert len(set(expected.shards["skipped"])) >= 9 and expected.shards["damaged_regions"] > 0
    run = subprocess.run([sys.executable, str(ROOT / "tests/helpers/hostile.py"), str(tmp_path / "again")],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert json.loads((tmp_path / "again/expected.json").read_text()) == json.loads((out / "expected.json").read_text())
    for name in ("shards/00000.tar", "table/pairs.csv", f"table/img/{next(iter(IMAGE_KINDS))}_0.jpg"):
        assert (tmp_path / "again" / name).read_bytes() == (out / name).read_bytes()  # seeded: the same bytes


def test_data_stats_counts_every_reason_exactly(hostile):
    out, expected = hostile
    stats = json.loads(_run(["data", "stats", str(out / "shards")], out).stdout)
    want = expected.shards
    assert stats["skipped"] == want["skipped"]
    assert (stats["samples"], stats["usable"], stats["damaged_regions"]) == (want["samples"], want["usable"],
                                                                            want["damaged_regions"])
    assert len(stats["bad_shards"]) == want["bad_shards"] and stats["shards"] == want["shards"]


def test_training_on_hostile_shards_uses_every_good_sample_and_counts_every_bad_one(hostile):
    out, expected = hostile
    steps = expected.shards["usable"] // 8  # 2 readers × 4 shards: one epoch exactly
    args = [*TINY, "data.kind=shards", f"data.urls={out / 'shards'}", "data.num_workers=2", "data.interleave=2",
            f"steps={steps}", "batch_size=8", f"log_every={steps}", "checkpoint_every=0",
            f"output_dir={out / 'run_shards'}"]
    run = _run(["train", *args], out)
    assert "damaged shard" in run.stderr
    last = [r for r in read_metrics(out / "run_shards/metrics.jsonl") if "loss" in r][-1]
    assert last["data/used"] == expected.shards["usable"]
    counted = {k.removeprefix("data/skipped/"): v for k, v in last.items() if k.startswith("data/skipped/")}
    assert counted == {**expected.shards["skipped"], "tar_holes": expected.shards["damaged_regions"],
                       "shard_errors": expected.shards["bad_shards"]}
    assert last["data/skipped"] == sum(expected.shards["skipped"].values())


def test_training_on_the_hostile_table_skips_and_replaces_bad_rows(hostile):
    out, expected = hostile
    args = [*TINY, "data.kind=csv", f"data.path={out / 'table/pairs.csv'}", "steps=6", "batch_size=8",
            "log_every=6", "checkpoint_every=0", f"output_dir={out / 'run_table'}"]
    _run(["train", *args], out)
    last = [r for r in read_metrics(out / "run_table/metrics.jsonl") if "loss" in r][-1]
    assert last["data/used"] == 48 and last["data/skipped"] > 0
    reasons = {k.removeprefix("data/skipped/") for k in last if k.startswith("data/skipped/")}
    assert reasons <= set(expected.table_train_reasons)


@pytest.fixture
def fake_model(monkeypatch):
    model = EvalModel(FakeCLIP(), fake_transform, fake_processor)
    for module in (classify_cli, eval_cli):
        monkeypatch.setattr(module, "load_eval_model", lambda *_: (model, "fake", "random"))
    return model


def test_eval_counts_every_skip_of_the_hostile_table_and_folders(hostile, fake_model, tmp_path, capsys):
    out, expected = hostile
    table = CsvDataset(out / "table/pairs.csv", label_col="label")
    assert sum(1 for _ in table) == expected.table_rows - sum(expected.table_eval.values())
    assert table.skip_counts() == expected.table_eval
    folder = ImageFolder(out / "classes")
    assert sum(1 for _ in folder) == expected.folder_images - sum(expected.folder_skipped.values())
    assert folder.skip_counts() == expected.folder_skipped
    (tmp_path / "t.txt").write_text("a photo of a {}.\n")
    for data, skips in ((out / "table/pairs.csv", expected.table_eval), (out / "classes", expected.folder_skipped)):
        result = tmp_path / "result.json"
        argv = ["eval", "zeroshot", "--model", "fake", "--data", str(data), "--no-progress", "--no-classifier-cache",
                "--cache-dir", str(tmp_path), "--templates", str(tmp_path / "t.txt"), "--output", str(result)]
        assert main(argv) == 0
        record = json.loads(result.read_text())
        assert record["data"]["n_skipped"] == sum(skips.values())
        assert "Traceback" not in capsys.readouterr().err


def test_classify_skips_each_hostile_image_with_its_reason_or_fails_in_one_line(hostile, fake_model, capsys):
    out, expected = hostile
    assert main(["classify", str(out / "classes"), "--labels", "red,green,blue", "--model", "fake"]) == 0
    printed = capsys.readouterr().out
    reasons = Counter(line.split("skipped: ")[1].split(":")[0] for line in printed.splitlines() if "skipped: " in line)
    assert reasons == expected.folder_skipped
    for name, (_, ext, reason) in IMAGE_KINDS.items():
        path = next((out / "classes").glob(f"*/{name}_0.{ext}"))
        status = main(["classify", str(path), "--labels", "a,b", "--model", "fake"])
        captured = capsys.readouterr()
        assert "Traceback" not in captured.err
        if reason is None:
            assert status == 0 and "skipped" not in captured.out, name
        else:
            assert status == 2, name
            prefix = f"clipforge classify: error: cannot read {path}: {reason}"
            assert captured.err.startswith(prefix) and captured.err[len(prefix)] in ":\n", name
            assert len(captured.err.strip().splitlines()) == 1, name
