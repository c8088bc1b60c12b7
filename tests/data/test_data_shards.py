"""Streaming tar shards: damage survived and counted, epoch sharding without duplicates, resampling, weights, resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

from clipforge.data.decode import DecodeLimits
from clipforge.data.shards import inspect_shards, open_stream, parse_sources
from clipforge.data.webdataset import ShardStats, expand_shards, iter_shard, iter_tar_samples, write_tar_shard
from clipforge.train import Runtime, load_config
from clipforge.train.data import TrainData
from clipforge.train.metrics import read_metrics
from clipforge.transforms import EvalTransform, TrainTransform
from helpers.shards import TINY, no_text, write_damaged_shards, write_good_shards

ROOT = Path(__file__).parents[2]


@pytest.fixture(autouse=True)
def deadline():
    """Every test here must finish in 120 s: a hang fails the test instead of stalling CI."""
    def expire(*_):
        raise TimeoutError("test took longer than 120 s (a hang?)")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(120)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def transforms(size: int = 32):
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    return TrainTransform(size, mean, std), EvalTransform(size, mean, std)


def train_data(urls, *, batch_size: int, workers: int = 0, rank: int = 0, world_size: int = 1, seed: int = 0,
               **fields) -> TrainData:
    overrides = {"data.kind": "shards", "data.urls": urls, "data.num_workers": workers, "batch_size": batch_size,
                 "seed": seed, **{f"data.{k}": v for k, v in fields.items()}}
    config = load_config(None, overrides)
    train_tf, _ = transforms()
    return TrainData(config.data, train_tf, no_text, batch_size, seed, Runtime(rank=rank, world_size=world_size),
                     image_size=32)


def consumed_keys(data: TrainData, start: int, stop: int) -> list[list[str]]:
    """The sample keys of each batch of steps ``start .. stop - 1``, consumed as the loop does."""
    batches = []
    for _, _, info in data.loader(start, stop):
        data.consume(info)
        batches.append(info["keys"])
    return batches


def test_sources_from_braces_lists_and_double_colons(tmp_path):
    a = write_good_shards(tmp_path / "a", 3, 1)
    b = write_good_shards(tmp_path / "b", 2, 1)
    assert parse_sources(f"{tmp_path}/a/{{00000..00002}}.tar::{tmp_path}/b/{{00000..00001}}.tar") == [a, b]
    assert parse_sources([str(tmp_path / "a"), [b[1], b[0]]]) == [a, [b[1], b[0]]]
    assert parse_sources(f"{tmp_path}/a/*.tar") == [a]
    with pytest.raises(FileNotFoundError):
        parse_sources(f"{tmp_path}/c/{{0..3}}.tar")
    config = load_config(None, {"data.kind": "shards", "data.urls": [str(tmp_path / "a"), str(tmp_path / "b")],
                                "data.weights": [3, 1]})
    assert config.data.weights == (3.0, 1.0) and config.data.sources() == [a, b]


@pytest.mark.parametrize(("overrides", "message"), [
    ({"data.weights": [1, 2]}, "2 weight(s) for 1 source(s)"),
    ({"data.weights": [0]}, "weights must be positive"),
    ({"data.decode.max_pixels": 0}, "data.decode"),
    ({"data.decode.alpha": "black"}, "data.decode.alpha: expected one of"),
    ({"data.interleave": 0}, "interleave"),
])
def test_bad_shard_configs_fail_before_any_work(tmp_path, overrides, message):
    from clipforge.config import ConfigError

    write_good_shards(tmp_path, 2, 1)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(None, {"data.kind": "shards", "data.urls": str(tmp_path), **overrides})


def test_missing_shards_are_found_by_check_source_not_by_the_config(tmp_path):
    """A config is data: globs expand in ``check_source`` (and in ``TrainData``, before any work)."""
    from clipforge.config import ConfigError
    from clipforge.data import check_source

    config = load_config(None, {"data.kind": "shards", "data.urls": "nowhere/{0..3}.tar::nor/here.tar",
                                "data.weights": [1, 2]})  # two sources, counted without looking for files
    with pytest.raises(ConfigError, match="data.urls: no tar shards found for 'nowhere/{0..3}.tar'"):
        check_source(config.data)
    with pytest.raises(ConfigError, match="data.urls: no tar shards found"):
        train_data("nowhere/{0..3}.tar", batch_size=2)


def test_epoch_mode_gives_ranks_and_workers_disjoint_shards(tmp_path):
    """2 ranks × 2 workers over 8 shards of 5: every key exactly once per epoch, the next epoch reshuffled."""
    write_good_shards(tmp_path, 8, 5)
    seen, per_rank = Counter(), {}
    for rank in (0, 1):
        data = train_data(str(tmp_path), batch_size=4, workers=2, rank=rank, world_size=2, interleave=2)
        batches = consumed_keys(data, 0, 20)  # 2 epochs: 40 samples / (2 per rank per step) = 20 steps per epoch
        per_rank[rank] = batches
        seen.update(k for batch in batches[:10] for k in batch)
        assert all(len(b) == 2 for b in batches)
    assert len(seen) == 40 and set(seen.values()) == {1}  # epoch 0: the full set, no repeats
    workers = [{k.split("#")[0] for b in per_rank[r][w:10:2] for k in b} for r in (0, 1) for w in (0, 1)]
    assert all(not (x & y) for i, x in enumerate(workers) for y in workers[i + 1:])  # shards never shared
    second = Counter(k for r in (0, 1) for batch in per_rank[r][10:] for k in batch)
    assert len(second) == 40 and set(second.values()) == {1}
    assert [b for b in per_rank[0][10:]] != [b for b in per_rank[0][:10]]  # a new shard order each epoch


def test_epoch_mode_needs_a_shard_per_reader(tmp_path):
    write_good_shards(tmp_path, 3, 2)
    with pytest.raises(ValueError, match="fewer than the 4 readers"):
        train_data(str(tmp_path), batch_size=4, workers=2, world_size=2)


def test_resume_continues_with_exactly_the_next_unseen_samples(tmp_path):
    """Stopped after 5 steps (an odd step: worker roles must rotate) and resumed: the same keys, captions, crops."""
    write_good_shards(tmp_path, 6, 7)
    config = {"batch_size": 4, "workers": 2, "interleave": 2}
    reference = train_data(str(tmp_path), **config)
    expected = [(images, info["keys"]) for images, _, info in reference.loader(0, 14)]

    first = train_data(str(tmp_path), **config)
    assert [k for k in consumed_keys(first, 0, 5)] == [k for _, k in expected[:5]]
    saved = torch.load(_roundtrip(first.state(5), tmp_path), weights_only=False)  # as a checkpoint holds it
    resumed = train_data(str(tmp_path), **config)
    resumed.restore(saved)
    got = [(images, info["keys"]) for images, _, info in resumed.loader(5, 14)]
    assert [k for _, k in got] == [k for _, k in expected[5:]]
    for (a, _), (b, _) in zip(got, expected[5:]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    per_worker = [[k for _, ks in expected[w::2] for k in ks] for w in (0, 1)]  # worker w makes steps w, w + 2, ...
    assert len(set(per_worker[0][:21]) | set(per_worker[1][:21])) == 42  # each reads its 3 shards: one epoch


def _roundtrip(state: dict, tmp_path: Path) -> Path:
    path = tmp_path / "data_state.pt"
    torch.save(state, path)
    return path


def test_resampled_mode_draws_with_replacement_and_reseeds_on_resume(tmp_path):
    write_good_shards(tmp_path, 3, 4)
    data = train_data(str(tmp_path), batch_size=6, resampled=True, interleave=1)
    keys = [k for b in consumed_keys(data, 0, 10) for k in b]
    assert len(keys) == 60 and len(set(keys)) == 12  # every sample drawn, many more than once
    again = [k for b in consumed_keys(train_data(str(tmp_path), batch_size=6, resampled=True, interleave=1), 0, 10)
             for k in b]
    assert again == keys  # seeded
    resumed = train_data(str(tmp_path), batch_size=6, resampled=True, interleave=1)
    assert [k for b in consumed_keys(resumed, 5, 10) for k in b] != keys[30:]  # a fresh stream after a resume
    assert train_data(str(tmp_path), batch_size=6, resampled=True).config.resampled  # 3 shards, 1 reader: allowed


def test_source_weights_set_the_sampling_ratio(tmp_path):
    a = write_good_shards(tmp_path / "a", 2, 10, prefix="a")
    b = write_good_shards(tmp_path / "b", 2, 10, prefix="b")
    stream = open_stream([a, b], [3.0, 1.0], slot=0, slots=1, seed=0, resampled=False, interleave=2,
                         stats=ShardStats())
    sources = [sample["__key__"][0] for _, sample in (next(stream) for _ in range(4000))]
    fraction = sources.count("a") / len(sources)
    assert abs(fraction - 0.75) < 0.03  # 3σ = 0.02
    position = stream.state()
    epochs = [source["epoch"] for source in position["sources"]]  # equal sizes: a passes ~3× as often as b
    assert abs(epochs[0] / epochs[1] - 3) < 0.5 and position["emitted"] == 4000


def test_damaged_shards_are_counted_exactly_by_the_reader(tmp_path):
    expected = write_damaged_shards(tmp_path)
    assert sum(v for k, v in expected.items() if k not in ("tar_holes", "shard_errors")) >= 50
    stats = inspect_shards(str(tmp_path), DecodeLimits(max_pixels=100_000))
    assert stats["usable"] == 64
    assert stats["skipped"] == {k: v for k, v in expected.items() if k not in ("tar_holes", "shard_errors")}
    assert stats["damaged_regions"] == expected["tar_holes"] and len(stats["bad_shards"]) == 1
    samples = list(iter_shard(tmp_path / "00007.tar"))
    assert samples[-1]["__broken__"] and "json" not in samples[-1] and {"webp", "txt"} <= set(samples[-1])


def test_training_on_damaged_shards_reports_exact_counts_and_never_hangs(tmp_path):
    """A real run (2 DataLoader workers) over ≥ 50 bad members: finishes, and its metrics count every skip."""
    expected = write_damaged_shards(tmp_path / "shards")
    args = [*TINY, "data.kind=shards", f"data.urls={tmp_path / 'shards'}", "data.num_workers=2", "data.interleave=2",
            "data.decode.max_pixels=100000", "steps=8", "batch_size=8", "log_every=4", f"output_dir={tmp_path / 'run'}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "clipforge.cli.train", "train", *args], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=100)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "damaged shard" in run.stderr  # the truncated shard is reported as it is met
    last = [r for r in read_metrics(tmp_path / "run/metrics.jsonl") if "loss" in r][-1]
    assert last["data/used"] == 64  # 8 steps × 8 = every good sample exactly once (each worker: its 4 shards)
    counted = {k.removeprefix("data/skipped/"): v for k, v in last.items() if k.startswith("data/skipped/")}
    assert counted == dict(expected)
    assert last["data/skipped"] == sum(v for k, v in expected.items() if k not in ("tar_holes", "shard_errors"))
    state = torch.load(tmp_path / "run/checkpoints/step_00000008.pt", weights_only=False)["data"]
    assert state["kind"] == "shards" and set(state["ranks"][0]["positions"]) == {0, 1}


def test_a_position_saved_for_other_readers_continues_the_interrupted_epoch(tmp_path, capsys):
    write_good_shards(tmp_path, 4, 3)
    first = train_data(str(tmp_path), batch_size=2, workers=2)
    seen = [k for batch in consumed_keys(first, 0, 3) for k in batch]
    other = train_data(str(tmp_path), batch_size=2, workers=1)
    other.restore(first.state(3))
    assert "by 1 rank(s) × 2 worker(s); this run reads shards by 1 × 1: source 0: the rest of epoch 0 (" in \
        capsys.readouterr().err
    assert other.used == 6  # the counts carry over
    rest = [k for batch in consumed_keys(other, 3, 6) for k in batch]
    every = [f"{s['__url__']}#{s['__key__']}" for s in iter_tar_samples(expand_shards(tmp_path))]
    assert Counter(seen + rest) == Counter(every)  # epoch 0 finished: each sample once over both runs
    assert other.positions[0]["sources"][0]["epoch"] == 0


def test_a_source_with_nothing_usable_fails_fast_instead_of_spinning(tmp_path, monkeypatch):
    (tmp_path / "dead").mkdir()
    for i in range(2):
        (tmp_path / f"dead/{i}.tar").write_bytes(b"")  # unreadable: every epoch of this source is empty
    with pytest.raises(RuntimeError, match="shards in a row gave no sample"):
        consumed_keys(train_data(str(tmp_path / "dead"), batch_size=2), 0, 1)
    (tmp_path / "junk").mkdir()
    for i in range(2):
        write_tar_shard(tmp_path / f"junk/{i}.tar", [{"__key__": f"{i}{k}", "jpg": b"", "txt": "x"} for k in range(3)])
    monkeypatch.setattr("clipforge.train.data.MAX_BAD_IN_A_ROW", 50)
    with pytest.raises(RuntimeError, match=r"50 shard samples in a row unusable: \{'empty': 50\}"):
        consumed_keys(train_data(str(tmp_path / "junk"), batch_size=2), 0, 1)


def test_cli_data_weights_flag_sets_the_source_weights(tmp_path, capsys):
    from clipforge.cli.main import main

    write_good_shards(tmp_path / "a", 2, 1)
    write_good_shards(tmp_path / "b", 2, 1)
    urls = f"data.urls={tmp_path}/a/{{00000..00001}}.tar::{tmp_path}/b/{{00000..00001}}.tar"
    assert main(["train", "data.kind=shards", urls, "--data-weights", "3"]) == 2
    assert "data.weights: 1 weight(s) for 2 source(s)" in capsys.readouterr().err


@pytest.mark.parametrize("stop", [3, 5])
def test_resume_is_exact_on_shards_with_repeated_keys_and_holes(tmp_path, stop):
    """Keys that repeat (``k.jpg k.txt k.jpg k.txt``) stay two samples when a resumed reader skips over them
    unread, and holes, bad samples and a cut-short shard met before the stop are not counted again."""
    from helpers.shards import write_repeating_key_shards

    write_repeating_key_shards(tmp_path, shards=6, per_shard=9)
    config = {"batch_size": 4, "workers": 2, "interleave": 2}
    reference = train_data(str(tmp_path), **config)
    expected = consumed_keys(reference, 0, 12)
    assert sum(len(b) for b in expected) == 48 == 6 * 8  # one epoch: 6 shards × 8 usable samples (one is bad)
    assert len({k for b in expected for k in b}) == 6 * 5  # repeated keys are separate samples of the stream
    assert reference.skipped["tar_holes"] == 6 and reference.skipped["shard_errors"] == 1

    first = train_data(str(tmp_path), **config)
    assert consumed_keys(first, 0, stop) == expected[:stop]
    saved = torch.load(_roundtrip(first.state(stop), tmp_path), weights_only=False)
    assert any(taken for p in saved["ranks"][0]["positions"].values() for _, taken in p["sources"][0]["open"])
    resumed = train_data(str(tmp_path), **config)
    resumed.restore(saved)
    assert consumed_keys(resumed, stop, 12) == expected[stop:]
    assert (resumed.used, resumed.skipped) == (reference.used, reference.skipped)
    assert resumed.metrics() == reference.metrics()


def test_a_skipping_reader_gives_the_samples_and_counts_of_a_reading_one(tmp_path):
    """``iter_shard(skip=n)`` continues a reader that gave ``n`` samples: together they give the samples and the
    counts (samples, shards, holes, errors) of one uninterrupted reader, for every ``n``."""
    from itertools import islice

    from helpers.shards import write_repeating_key_shards

    write_repeating_key_shards(tmp_path, shards=2, per_shard=9)
    for path in sorted(tmp_path.glob("*.tar")):
        whole_stats = ShardStats()
        whole = list(iter_shard(path, whole_stats))
        assert len(whole) == 9 and whole_stats.damaged_regions == 1
        for n in range(len(whole) + 1):
            before, after = ShardStats(), ShardStats()
            head = list(islice(iter_shard(path, before), n))  # the interrupted reader, stopped after n samples
            rest = list(iter_shard(path, after, skip=n))
            assert [(s["__key__"], sorted(s)) for s in rest] == [(s["__key__"], sorted(s)) for s in whole[n:]]
            assert head + rest == whole
            assert (before.samples + after.samples, before.shards + after.shards) == (9, 1)
            assert before.damaged_regions + after.damaged_regions == whole_stats.damaged_regions, n
            assert before.bad_shards + after.bad_shards == whole_stats.bad_shards, n
