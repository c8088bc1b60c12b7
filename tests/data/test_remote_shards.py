"""Tar shards read from fsspec URLs (memory://, file://) and pipe: commands: the same samples, the same training
losses and resume positions as local paths; a missing shard or failing command skipped and counted; missing
file system packages named."""

from __future__ import annotations

import json
import re
import sys
import uuid
from pathlib import Path

import pytest

from clipforge.cli.main import main
from clipforge.config import ConfigError
from clipforge.data import build_source, check_source
from clipforge.data.webdataset import ShardStats, expand_shards, iter_tar_samples
from clipforge.train import Runtime, load_config, parse_overrides, train
from clipforge.train.data import TrainData
from clipforge.train.metrics import read_metrics
from clipforge.transforms import TrainTransform
from helpers.shards import TINY, no_text

fsspec = pytest.importorskip("fsspec")

SHARDS, PER_SHARD = 4, 8


@pytest.fixture(scope="module")
def local(tmp_path_factory) -> Path:
    """4 shards of 8 synthetic-world samples, written by ``clipforge data shards``."""
    out = tmp_path_factory.mktemp("remote") / "shards"
    assert main(["data", "shards", "synthetic", str(out), "--count", str(SHARDS * PER_SHARD), "--shard-size",
                 str(PER_SHARD), "--image-size", "32", "--quiet"]) == 0
    assert json.loads((out / "stats.json").read_text())["samples"] == SHARDS * PER_SHARD
    return out


@pytest.fixture
def memory(local):
    """The shards copied into fsspec's memory file system under a fresh folder; its ``memory://`` URL."""
    memory_fs, root = fsspec.filesystem("memory"), f"/shards-{uuid.uuid4().hex[:8]}"
    for path in sorted(local.glob("*.tar")):
        memory_fs.pipe_file(f"{root}/{path.name}", path.read_bytes())
    yield f"memory://{root.lstrip('/')}"
    memory_fs.rm(root, recursive=True)


def samples(urls: list[str]) -> tuple[list[tuple], ShardStats]:
    stats = ShardStats()
    return [(s["__key__"], s["jpg"], s["txt"]) for s in iter_tar_samples(urls, stats)], stats


def train_data(urls, batch_size: int = 4, workers: int = 0) -> TrainData:
    config = load_config(None, {"data.kind": "shards", "data.urls": urls, "data.num_workers": workers,
                                "data.interleave": 2, "batch_size": batch_size})
    transform = TrainTransform(32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    return TrainData(config.data, transform, no_text, batch_size, 0, Runtime(), image_size=32)


def consumed(data: TrainData, start: int, stop: int) -> list[list[str]]:
    """The sample keys (without their shard's URL) of each batch of steps ``start .. stop - 1``."""
    batches = []
    for _, _, info in data.loader(start, stop):
        data.consume(info)
        batches.append([k.rsplit("#", 1)[1] for k in info["keys"]])
    return batches


def test_memory_file_and_pipe_urls_read_the_same_samples(local, memory):
    reference, _ = samples(expand_shards(str(local)))
    assert len(reference) == SHARDS * PER_SHARD
    specs = {"memory folder": memory, "memory glob": f"{memory}/*.tar",
             "memory braces": f"{memory}/{{00000..00003}}.tar", "file://": f"file://{local}/{{00000..00003}}.tar",
             "pipe:cat": f"pipe:cat {local}/{{00000..00003}}.tar"}
    for name, spec in specs.items():
        urls = expand_shards(spec)
        assert len(urls) == SHARDS, name
        got, stats = samples(urls)
        assert got == reference, name
        assert (stats.shards, stats.bad_shards) == (SHARDS, []), name
    config = load_config(None, {"data.kind": "shards", "data.urls": f"{memory}/*.tar::pipe:cat {local}/00000.tar"})
    source = build_source(config.data)
    assert [len(s) for s in source.sources] == [SHARDS, 1]
    assert sum(1 for _ in source) == SHARDS * PER_SHARD + PER_SHARD


def test_a_missing_remote_shard_and_a_failing_pipe_are_skipped_and_counted(local, memory, capsys):
    """Brace ranges are not looked up: shard 00004 does not exist, and is met (and counted) when read."""
    for spec in (f"{memory}/{{00000..00004}}.tar", f"pipe:cat {local}/{{00000..00004}}.tar"):
        data = train_data(spec, batch_size=4)
        batches = consumed(data, 0, SHARDS * PER_SHARD // 4)  # one epoch
        assert len({k for b in batches for k in b}) == SHARDS * PER_SHARD  # every good sample, once
        assert data.used == SHARDS * PER_SHARD and data.skipped == {"shard_errors": 1}, spec
        err = capsys.readouterr().err
        assert "damaged shard" in err and "00004.tar" in err
        if spec.startswith("pipe:"):
            assert f"PipeError: pipe: command 'cat {local}/00004.tar' exited with status 1" in err
        else:
            assert "FileNotFoundError" in err


def test_resume_on_remote_shards_continues_with_the_next_samples(local, memory):
    """The resume position (open shards, samples taken) is the same for a memory:// URL, a pipe: command
    (re-run and skipped through on resume) and a local path, read by 2 DataLoader workers."""
    reference = consumed(train_data(str(local), workers=2), 0, 6)
    for spec in (memory, f"pipe:cat {local}/{{00000..00003}}.tar"):
        first = train_data(spec, workers=2)  # DataLoader workers: forked readers, each running its commands
        assert consumed(first, 0, 3) == reference[:3], spec
        state = first.state(3)
        assert any(taken for _, taken in state["ranks"][0]["positions"][0]["sources"][0]["open"])  # mid-shard
        resumed = train_data(spec, workers=2)
        resumed.restore(state)
        assert consumed(resumed, 3, 6) == reference[3:], spec


def test_a_remote_pattern_that_lists_nothing_is_a_clear_error(memory):
    for spec in (f"{memory}/nothing-*.tar", f"{memory}/no-folder", "memory://nowhere-at-all/x.tar"):
        config = load_config(None, {"data.kind": "shards", "data.urls": spec})
        with pytest.raises(ConfigError, match=rf"data.urls: no tar shards found for '{re.escape(spec)}' \(memory://"):
            check_source(config.data)


def test_s3_without_s3fs_names_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "s3fs", None)  # as if not installed, even where it is
    monkeypatch.delitem(sys.modules["fsspec.registry"]._registry, "s3", raising=False)
    config = load_config(None, {"data.kind": "shards", "data.urls": "s3://bucket/shards/{00000..00009}.tar"})
    with pytest.raises(ImportError, match=r"s3:// URLs need the package s3fs: pip install s3fs"):
        build_source(config.data)
    with pytest.raises(ImportError, match="s3fs"):
        check_source(load_config(None, {"data.kind": "shards", "data.urls": "s3://bucket/shards"}).data)


def test_training_from_pipe_cat_gives_the_losses_of_local_shards(local, tmp_path, one_thread):
    losses = {}
    specs = {"local": f"{local}/{{00000..00003}}.tar", "pipe": f"pipe:cat {local}/{{00000..00003}}.tar"}
    for name, spec in specs.items():
        args = [*TINY, "data.kind=shards", f"data.urls={spec}", "data.interleave=2", "steps=4", "batch_size=8",
                "log_every=1", "checkpoint_every=0", f"output_dir={tmp_path / name}"]
        train(load_config(None, parse_overrides(args)), Runtime())
        records = [r for r in read_metrics(tmp_path / name / "metrics.jsonl") if "loss" in r]
        assert [r["data/used"] for r in records] == [8, 16, 24, 32] and records[-1]["data/skipped"] == 0
        losses[name] = [r["loss"] for r in records]
    assert losses["pipe"] == losses["local"]
