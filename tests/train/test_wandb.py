"""Weights & Biases logging (report_to: [tensorboard, wandb]) in offline mode: the logged scalars read back from
the offline run file, a resumed run continuing the same W&B run, and the missing package named."""

from __future__ import annotations

import importlib.util
import json
import struct
import sys
from pathlib import Path

import pytest

from clipforge.train import Runtime, load_config, parse_overrides, train
from clipforge.train.metrics import WANDB_ID_FILE, MetricsLog, read_metrics
from helpers.shards import TINY

wandb = pytest.importorskip("wandb")


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch):
    """Offline W&B, its settings and caches under ``tmp_path``: nothing leaves the machine or the test."""
    for name, value in {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_PROJECT": "clipforge-test",
                        "WANDB_CONFIG_DIR": tmp_path / "wandb-config", "WANDB_CACHE_DIR": tmp_path / "wandb-cache",
                        "WANDB_DATA_DIR": tmp_path / "wandb-data", "WANDB_DISABLE_CODE": "true"}.items():
        monkeypatch.setenv(name, str(value))
    monkeypatch.delenv("WANDB_RUN_ID", raising=False)
    monkeypatch.delenv("WANDB_RESUME", raising=False)


def wandb_records(path: Path):
    """The records of an offline ``run-<id>.wandb`` file: a LevelDB-style log (32 KiB blocks, each record a
    7-byte header ``crc32, length, type`` then its bytes; types 1 full, 2 first, 3 middle, 4 last) of
    ``wandb_internal_pb2.Record`` protobufs, after a 7-byte ``:W&B`` file header."""
    from wandb.proto import wandb_internal_pb2

    data, block, position, parts = path.read_bytes(), 32768, 7, b""
    assert data[:4] == b":W&B"
    while position + 7 <= len(data):
        if block - position % block < 7:  # the rest of a block too short for a header is padding
            position += block - position % block
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + 7])
        chunk, position = data[position + 7:position + 7 + length], position + 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(parts + chunk if kind == 4 else chunk)
            yield record
            parts = b""
        elif kind in (2, 3):
            parts += chunk


def offline_runs(run_dir: Path) -> dict[str, dict]:
    """Each offline run under ``run_dir/wandb``: its id → project, config and history rows (key → value).

    ``wandb.finish`` returns once the run's records are handled, while W&B's service may still hold some in its
    write buffer (a file without its run record was read once on a loaded CI machine); ``wandb.teardown`` stops
    the service, which closes every run file, so what is read here is what a later ``wandb sync`` would read.
    """
    wandb.teardown()
    runs = {}
    for path in sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb")):
        info: dict = {"history": []}
        for record in wandb_records(path):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                info["id"], info["project"] = record.run.run_id, record.run.project
                info["config"] = {u.key: json.loads(u.value_json) for u in record.run.config.update}
            elif kind == "history":
                row = {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in record.history.item}
                info["history"].append(row)
        assert "id" in info, f"{path}: no run record among {path.stat().st_size} bytes"
        runs.setdefault(info["id"], {"project": info["project"], "config": info["config"], "history": []})
        runs[info["id"]]["history"].extend(info["history"])
    return runs


ARGS = [*TINY, "steps=4", "batch_size=8", "log_every=1", "checkpoint_every=2", "keep_checkpoints=2",
        "data.train_size=64", "eval.size=8", "eval.retrieval_size=8", "eval.every=0", "report_to=[tensorboard, wandb]"]


def test_a_run_logs_its_scalars_to_an_offline_wandb_run_and_a_resume_continues_it(tmp_path, one_thread):
    run_dir = tmp_path / "run"
    config = load_config(None, parse_overrides([*ARGS, f"output_dir={run_dir}"]))
    assert config.report_to == ("tensorboard", "wandb")
    train(config, Runtime())
    run_id = (run_dir / WANDB_ID_FILE).read_text().strip()
    runs = offline_runs(run_dir)
    assert list(runs) == [run_id]
    run = runs[run_id]
    assert run["project"] == "clipforge-test" and run["config"]["steps"] == 4 and run["config"]["batch_size"] == 8
    jsonl = [r for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r]
    logged = [row for row in run["history"] if "loss" in row]
    assert [row["_step"] for row in logged] == [r["step"] for r in jsonl] == [1, 2, 3, 4]
    for row, record in zip(logged, jsonl):
        assert row["loss"] == pytest.approx(record["loss"]) and row["lr"] == pytest.approx(record["lr"])
        assert row["data/used"] == record["data/used"]
    if importlib.util.find_spec("tensorboard") is not None:  # optional: both loggers side by side
        assert any(p.name.startswith("events.out.tfevents") for p in (run_dir / "tensorboard").iterdir())

    train(config, Runtime(), resume=str(run_dir / "checkpoints/step_00000002.pt"))
    assert (run_dir / WANDB_ID_FILE).read_text().strip() == run_id  # the same W&B run, continued
    runs = offline_runs(run_dir)
    assert list(runs) == [run_id] and len(list(run_dir.glob("wandb/offline-run-*"))) == 2
    resumed = [row["_step"] for row in runs[run_id]["history"] if "loss" in row]
    assert resumed[:4] == [1, 2, 3, 4] and resumed[4:] == [3, 4]  # the resumed run's steps, in the same run


def test_a_new_run_in_the_same_folder_is_a_new_wandb_run(tmp_path):
    for _ in range(2):
        log = MetricsLog(tmp_path, report_to=("wandb",), config={"x": 1})
        log.log(1, {"loss": 1.5, "note": "text is not a scalar"})
        log.close()
    runs = offline_runs(tmp_path)
    assert len(runs) == 2 and all(r["history"][0]["loss"] == 1.5 and "note" not in r["history"][0]
                                  for r in runs.values())
    assert (tmp_path / WANDB_ID_FILE).read_text().strip() in runs


def test_only_rank_zero_logs(tmp_path):
    log = MetricsLog(tmp_path, enabled=False, report_to=("wandb",))
    log.log(1, {"loss": 1.0})
    log.close()
    assert not (tmp_path / "wandb").exists() and not (tmp_path / WANDB_ID_FILE).exists()


def test_missing_wandb_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed
    with pytest.raises(ImportError, match=r"wandb needs the wandb package: pip install 'clipforge\[wandb\]'"):
        MetricsLog(tmp_path, report_to=("tensorboard", "wandb"))
    assert not (tmp_path / "metrics.jsonl").exists()  # failed before touching the run
    MetricsLog(tmp_path, report_to=("tensorboard",)).close()  # without wandb asked for, no error
