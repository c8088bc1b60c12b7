"""The sample boundary: whatever one sample raises (not only ``BadSample``) is counted, as ``error`` with its
class, and skipped; training, ``data stats``, evaluation and the shard writer go on."""

from __future__ import annotations

import pytest

from clipforge.data.decode import BadSample, as_bad_sample
from clipforge.data.folders import ClassFolder
from clipforge.data.shards import ShardSource, inspect_shards
from clipforge.data.tables import TablePairs
from clipforge.data.writer import write_shards
from clipforge.eval.datasets import ImageFolder
from clipforge.train import Runtime, load_config
from clipforge.train.data import TrainData
from clipforge.transforms import TrainTransform
from helpers.images import encode, noise
from helpers.shards import no_text, write_good_shards
from helpers.tables import write_table

ERRORS = [NotImplementedError("no"), TypeError("bad"), RecursionError("deep"), MemoryError(), KeyError("k")]


def _data(overrides: dict, batch_size: int = 4) -> TrainData:
    config = load_config(None, {**overrides, "batch_size": batch_size})
    return TrainData(config.data, TrainTransform(32, (0.5,) * 3, (0.25,) * 3), no_text, batch_size, 0, Runtime(),
                     image_size=32)


def test_as_bad_sample_names_the_class_and_cuts_the_message():
    bad = BadSample("corrupt", "x")
    assert as_bad_sample(bad) is bad
    error = as_bad_sample(ValueError("v" * 10_000))
    assert error.reason == "error" and str(error).startswith("error: ValueError: vvv") and len(str(error)) < 400


@pytest.mark.parametrize("error", ERRORS, ids=lambda e: type(e).__name__)
def test_table_training_counts_an_exception_of_one_row_and_fills_the_batch(tmp_path, monkeypatch, error):
    path = write_table(tmp_path)
    original = TablePairs.__getitem__

    def flaky(self, i):
        if i == 0:
            raise error
        return original(self, i)

    monkeypatch.setattr(TablePairs, "__getitem__", flaky)
    data = _data({"data.kind": "csv", "data.path": str(path), "data.image_key": "img", "data.caption_key": "text"})
    for _, _, info in data.loader(0, 6):
        assert info["size"] == 4
        data.consume(info)
    assert data.skipped["error"] >= 1 and data.used == 24


@pytest.mark.parametrize("error", ERRORS, ids=lambda e: type(e).__name__)
def test_shard_training_and_stats_count_an_exception_of_one_sample(tmp_path, monkeypatch, error):
    write_good_shards(tmp_path, 2, 4)
    original = ShardSource.decode
    calls = {"n": 0}

    def flaky(self, data):
        calls["n"] += 1
        if calls["n"] == 3:
            raise error
        return original(self, data)

    monkeypatch.setattr(ShardSource, "decode", flaky)
    data = _data({"data.kind": "shards", "data.urls": str(tmp_path), "data.interleave": 1})
    keys = []
    for _, _, info in data.loader(0, 2):
        data.consume(info)
        keys += info["keys"]
    assert data.skipped == {"error": 1} and data.used == 8 and len(set(keys[:7])) == 7  # epoch 0: 7 of 8 usable

    import clipforge.data.shards as shards

    def failing_pair(sample, *args, **kwargs):
        if sample["__key__"].endswith("002"):
            raise error
        return (None, "")

    monkeypatch.setattr(shards, "decode_pair", failing_pair)
    stats = inspect_shards(str(tmp_path))
    assert stats["skipped"] == {"error": 2} and stats["usable"] == 6


def test_eval_records_an_exception_of_one_image_as_a_skip(tmp_path, monkeypatch):
    for colour in ("red", "blue"):
        (tmp_path / colour).mkdir()
        for i in range(2):
            (tmp_path / colour / f"{i}.png").write_bytes(encode(noise(16, 16, seed=i), "PNG"))
    original = ClassFolder.__getitem__

    def flaky(self, i):
        if i == 1:
            raise NotImplementedError("a plugin gave up")
        return original(self, i)

    monkeypatch.setattr(ClassFolder, "__getitem__", flaky)
    dataset = ImageFolder(tmp_path)
    assert len(list(dataset)) == 3 and dataset.skip_counts() == {"error": 1}
    assert dataset.skipped[0][1] == "error: NotImplementedError: a plugin gave up"


def test_the_shard_writer_counts_an_exception_of_one_input(tmp_path):
    def load(i: int):
        if i == 1:
            raise KeyError("gone")
        return encode(noise(16, 16, seed=i)), f"caption {i}", {}

    stats = write_shards(load, 4, tmp_path / "out", shard_size=10, progress=False)
    assert stats["samples"] == 3 and stats["skipped"] == {"error": 1}
