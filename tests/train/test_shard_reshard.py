"""Tar shards resumed on another number of readers (ranks × workers): the interrupted epoch is finished, each of
its samples read exactly once over the runs; from the next epoch on, the usual shard assignment."""

from __future__ import annotations

import copy
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from clipforge.data.shards import MixedStream, epoch_share, reshard
from clipforge.data.webdataset import ShardStats, expand_shards, iter_tar_samples
from clipforge.data.writer import write_shards
from clipforge.train import Runtime, load_config
from clipforge.train.data import TrainData
from clipforge.transforms import TrainTransform
from helpers.shards import no_text

SEED = 0


def write(folder: Path, shards: int = 8, per_shard: int = 10, short: tuple[int, ...] = ()) -> list[str]:
    """``shards`` shards of ``per_shard`` samples (the project's writer); shards in ``short`` keep only half
    (the writer skips inputs with a blank caption). Returns every sample's key, as ``url#key``."""
    def load(i: int) -> tuple[Image.Image, str, dict[str, Any]]:
        blank = i // per_shard in short and i % per_shard >= per_shard // 2
        return Image.new("RGB", (16, 16), (i % 256, 7 * i % 256, 99)), "" if blank else f"caption {i}", {}

    write_shards(load, shards * per_shard, folder, per_shard, progress=False)
    return [key(s) for s in iter_tar_samples(expand_shards(folder))]


def key(sample: dict[str, Any]) -> str:
    return f"{sample['__url__']}#{sample['__key__']}"


def data(folder: Path, *, rank: int = 0, world_size: int = 1, workers: int = 0, batch_size: int = 4,
         interleave: int = 2) -> TrainData:
    overrides = {"data.kind": "shards", "data.urls": str(folder), "data.num_workers": workers,
                 "data.interleave": interleave, "batch_size": batch_size, "seed": SEED}
    config = load_config(None, overrides)
    transform = TrainTransform(16, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    return TrainData(config.data, transform, no_text, batch_size, SEED, Runtime(rank=rank, world_size=world_size),
                     image_size=16)


def checkpoint(ranks: list[TrainData], workers: int) -> dict[str, Any]:
    """The data entry ``TrainData.state`` gathers from these ranks, through JSON (positions must survive it)."""
    saved = {"step": 0, "kind": "shards", "world_size": len(ranks), "num_workers": workers,
             "ranks": [{"used": d.used, "skipped": dict(d.skipped), "positions": copy.deepcopy(d.positions)}
                       for d in ranks]}
    return json.loads(json.dumps(saved))


def streams(ranks: list[TrainData]) -> list[MixedStream]:
    """Every reader of these ranks, in slot order, continuing from the ranks' positions."""
    out = []
    for d in ranks:
        workers = max(d.config.num_workers, 1)
        for w in range(workers):
            out.append(d.batches.source.stream(slot=d.runtime.rank * workers + w, slots=len(ranks) * workers,
                                               seed=SEED, stats=ShardStats(), state=d.positions.get(w)))
    return out


def take(stream: MixedStream, count: int | None = None, epoch: int | None = None) -> list[tuple[int, str]]:
    """``(epoch, key)`` of the next ``count`` samples, or of those left in ``epoch`` (the stream is spent after)."""
    out: list[tuple[int, str]] = []
    while count is None or len(out) < count:
        _, sample = next(stream)
        now = stream.streams[0].position["epoch"]
        if epoch is not None and now > epoch:
            break
        out.append((now, key(sample)))
    return out


def stopped(ranks: list[TrainData], counts: list[int]) -> tuple[list[tuple[int, str]], dict[str, Any]]:
    """Each reader of ``ranks`` takes ``counts[slot]`` samples: what they took, and the checkpoint they leave."""
    taken = []
    for (slot, stream), count in zip(enumerate(streams(ranks)), counts, strict=True):
        if count:  # a reader that took nothing has no position, as in a checkpoint
            taken += take(stream, count)
            d = ranks[slot // max(ranks[0].config.num_workers, 1)]
            d.positions[slot % max(d.config.num_workers, 1)] = stream.state()
    return taken, checkpoint(ranks, ranks[0].config.num_workers)


def resumed(folder: Path, saved: dict[str, Any], world_size: int, workers: int, **fields) -> list[TrainData]:
    ranks = [data(folder, rank=r, world_size=world_size, workers=workers, **fields) for r in range(world_size)]
    for d in ranks:
        d.restore(saved)
    return ranks


def test_two_ranks_resumed_on_one_read_the_rest_of_the_epoch_then_whole_epochs(tmp_path, capsys):
    """Through the loader: 2 ranks × 1 worker stop after 7 steps; 1 rank × 1 worker reads the 52 samples left of
    epoch 0 (each of the 80 keys once over both runs), then epoch 1 whole."""
    keys = write(tmp_path)
    first = [data(tmp_path, rank=r, world_size=2) for r in (0, 1)]
    part1 = []
    for d in first:
        for _, _, info in d.loader(0, 7):
            d.consume(info)
            part1 += info["keys"]
    saved = checkpoint(first, 0)
    (second,) = resumed(tmp_path, saved, 1, 0)
    err = capsys.readouterr().err
    assert "read by 2 rank(s) × 0 worker(s); this run reads shards by 1 × 0: source 0: the rest of epoch 0 (" in err
    assert second.used == 28 and "read again" not in err and err.count("\n") == 1
    part2, positions = [], []
    for _, _, info in second.loader(7, 40):  # 13 steps of 4: the rest of epoch 0; then 20 steps: epoch 1
        second.consume(info)
        part2 += info["keys"]
        positions.append(info["position"]["sources"][0])
    assert len(part1) == 28 and Counter(part1 + part2[:52]) == Counter(keys)
    assert positions[12]["epoch"] == 0 and "share" in positions[12]
    assert positions[13]["epoch"] == 1 and "share" not in positions[13]  # the explicit share was for epoch 0 only
    assert Counter(part2[52:]) == Counter(keys)  # the usual rule from epoch 1 on: every sample once


@pytest.mark.parametrize(("world_size", "workers"), [(1, 1), (4, 0), (2, 1), (1, 3), (3, 1), (4, 2)])
def test_the_rest_of_the_epoch_is_dealt_out_to_any_number_of_new_readers(tmp_path, world_size, workers):
    keys = write(tmp_path)
    part1, saved = stopped([data(tmp_path, rank=r, world_size=2, workers=2) for r in (0, 1)], [5, 9, 14, 0])
    new = resumed(tmp_path, saved, world_size, workers)
    part2 = [k for stream in streams(new) for _, k in take(stream, epoch=0)]
    assert len(part2) == 80 - 28 and Counter([k for _, k in part1] + part2) == Counter(keys)
    for d in new:
        for position in d.positions.values():
            assert json.loads(json.dumps(position)) == position  # JSON-ready
            (source,) = position["sources"]
            assert source["epoch"] == 0 and source["opened"] == len(source["open"]) <= len(source["share"])


def test_samples_readers_ahead_had_read_in_the_next_epoch_are_read_again_and_counted(tmp_path, capsys):
    """Reader 0's shards are half as long: it is 3 samples into epoch 1 when the run stops; those 3 are read
    again in the resumed run's epoch 1, which the warning says."""
    names = [str(tmp_path / f"{s:05d}.tar") for s in range(8)]
    short = tuple(names.index(path) for path in epoch_share(names, 0, SEED, 0, 0, 2))
    keys = write(tmp_path, short=short)
    assert len(keys) == 60
    part1, saved = stopped([data(tmp_path, rank=r, world_size=2) for r in (0, 1)], [23, 23])
    ahead = [k for e, k in part1 if e == 1]
    assert len(ahead) == 3
    (new,) = resumed(tmp_path, saved, 1, 0)
    err = capsys.readouterr().err
    assert re.search(r"source 0: the rest of epoch 0 \(\d+ shard\(s\), \d+ partly read\) is dealt out to the new "
                     r"readers, and 2 shard\(s\) that readers ahead had begun in later epochs are read again there "
                     r"\(0 finished, 2 partly read with 3 sample\(s\) taken\)", err), err
    (stream,) = streams([new])
    rest = take(stream, 17 + 60)
    assert Counter([k for e, k in part1 if e == 0] + [k for _, k in rest[:17]]) == Counter(keys)
    assert {e for e, _ in rest[:17]} == {0} and {e for e, _ in rest[17:]} == {1}
    assert Counter(k for _, k in rest[17:]) == Counter(keys)  # epoch 1 whole, the 3 read ahead among them
    assert set(ahead) <= {k for _, k in rest[17:]}


def test_four_readers_then_two_then_one_read_the_interrupted_epoch_exactly_once(tmp_path):
    keys = write(tmp_path)
    part1, saved = stopped([data(tmp_path, rank=r, world_size=4) for r in range(4)], [12, 3, 17, 8])
    middle = resumed(tmp_path, saved, 2, 0)
    assert all("share" in p["sources"][0] for d in middle for p in d.positions.values())
    part2, saved = stopped(middle, [9, 11])
    assert all(e == 0 for e, _ in part2)  # 40 samples were left: neither new reader ran out
    (last,) = resumed(tmp_path, saved, 1, 0, interleave=4)
    part3 = take(streams([last])[0], epoch=0)
    assert len(part3) == 80 - 40 - 20
    assert Counter(k for part in (part1, part2, part3) for _, k in part) == Counter(keys)


def test_unchanged_readers_resume_exactly_also_with_an_explicit_share(tmp_path, capsys):
    """A resharded reader saved and resumed by the same readers continues with exactly the next samples, drops its
    explicit share when the epoch ends; 0 and 1 workers count as the same readers (no warning, positions kept)."""
    keys = write(tmp_path)
    _, saved = stopped([data(tmp_path, rank=r, world_size=2) for r in (0, 1)], [10, 10])
    (new,) = resumed(tmp_path, saved, 1, 0)
    (stream,) = streams([new])
    take(stream, 13)
    new.positions[0] = stream.state()
    again = checkpoint([new], 0)
    reference = take(stream, 60 - 13 + 80)  # the rest of epoch 0, then epoch 1
    capsys.readouterr()
    for workers in (0, 1):
        (same,) = resumed(tmp_path, again, 1, workers)
        assert same.positions == {0: again["ranks"][0]["positions"]["0"]} and not capsys.readouterr().err
        (copy_,) = streams([same])
        assert take(copy_, len(reference)) == reference
        assert "share" not in copy_.streams[0].position and copy_.streams[0].position["epoch"] == 1
    assert Counter(k for e, k in reference if e == 1) == Counter(keys)


def test_a_position_with_another_number_of_sources_is_refused(tmp_path):
    write(tmp_path, shards=2, per_shard=2)
    position = {"emitted": 3, "sources": [{"epoch": 0, "opened": 1, "draws": 3, "open": [["x.tar", 3]]}] * 2}
    with pytest.raises(ValueError, match="reader 1 has 2 sources, the config 1"):
        reshard([None, position], [expand_shards(tmp_path)], SEED, 1)
