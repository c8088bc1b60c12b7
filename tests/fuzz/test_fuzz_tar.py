"""Fuzzing the tar reader (``clipforge.data.webdataset``): mutated shard bytes never raise from ``iter_shard`` /
``iter_tar_samples`` (damage is counted in ``ShardStats``), the counts agree with what was yielded, and a reader
resumed with ``skip=n`` continues exactly where one that gave ``n`` samples stopped, with the same counts.

Crashers found are kept under ``regressions/tar/`` (small files, replayed) or as ``@example``.
"""

from __future__ import annotations

import io
import tarfile
from itertools import islice
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from clipforge.data.webdataset import ShardStats, iter_shard, iter_tar_samples, write_tar_shard
from fuzz.conftest import regression_cases


def _seed_shard() -> bytes:
    """A small valid shard: four samples, one key repeated right after itself, one member with no extension."""
    buffer = io.BytesIO()
    samples = [{"__key__": "a", "jpg": b"\xff\xd8\xff" + bytes(300), "txt": "one"},
               {"__key__": "b", "png": bytes(700), "txt": "two", "json": '{"caption": "x"}'},
               {"__key__": "b", "png": bytes(20), "txt": "again"},
               {"__key__": "dir/c", "webp": bytes(1100), "cls": "3"}]
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for sample in samples:
            for ext, value in sample.items():
                if ext == "__key__":
                    continue
                data = value.encode() if isinstance(value, str) else value
                info = tarfile.TarInfo(f"{sample['__key__']}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        info = tarfile.TarInfo("noext")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
    return buffer.getvalue()


SEED = _seed_shard()
HEADERS = [i for i in range(0, len(SEED), 512) if SEED[i + 257:i + 262] == b"ustar"]


@st.composite
def mutated_shards(draw) -> bytes:
    """The seed shard with header fields flipped, blocks zeroed or dropped, bytes inserted, maybe cut short."""
    data = bytearray(SEED)
    for _ in range(draw(st.integers(0, 5))):
        kind = draw(st.sampled_from(["header", "size", "zero", "drop", "insert", "byte"]))
        header = draw(st.sampled_from(HEADERS))
        if kind == "header" and header + 512 <= len(data):  # anywhere in a header: name, mode, checksum, type
            data[header + draw(st.integers(0, 511))] = draw(st.integers(0, 255))
        elif kind == "size" and header + 136 <= len(data):  # the octal size field: absurd, or a lie
            data[header + 124:header + 136] = draw(st.sampled_from([b"77777777777\x00", b"00000000000\x00",
                                                                    b"00000001000\x00", b"zzzzzzzzzzz\x00"]))
        elif kind == "zero":
            data[header:header + 512] = bytes(min(512, len(data) - header))
        elif kind == "drop":
            del data[header:header + 512 * draw(st.integers(1, 3))]
        elif kind == "insert":
            at = draw(st.integers(0, len(data)))
            data[at:at] = draw(st.binary(min_size=1, max_size=600))
        elif data:
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        data = data[:draw(st.integers(0, len(data)))]
    return bytes(data)


def _read(path: Path, skip: int = 0, take: int | None = None) -> tuple[list[dict], ShardStats]:
    stats = ShardStats()
    samples = list(islice(iter_shard(path, stats, skip=skip), take))
    return samples, stats


def _check_shard(data: bytes, folder: Path) -> None:
    path = folder / "shard.tar"
    path.write_bytes(data)
    whole, stats = _read(path)
    assert stats.samples == len(whole) and stats.shards <= 1 and len(stats.bad_shards) <= 1
    assert stats.damaged_regions >= 0 and (stats.shards == 1 or stats.bad_shards)
    for sample in whole:
        assert isinstance(sample["__key__"], str) and sample["__url__"] == str(path)
        assert all(isinstance(v, bytes) for k, v in sample.items() if not k.startswith("__"))
    for n in range(len(whole) + 1):  # resumed after n samples: the rest of the stream, and no event counted twice
        head, before = _read(path, take=n)
        rest, after = _read(path, skip=n)
        assert head + rest == whole
        assert before.samples + after.samples == stats.samples and before.shards + after.shards == stats.shards
        assert before.damaged_regions + after.damaged_regions == stats.damaged_regions
        assert before.bad_shards + after.bad_shards == stats.bad_shards


@given(mutated_shards())
@example(b"")
@example(b"\x1f\x8b" + SEED[2:])  # a gzip signature over plain tar bytes
@example(b"BZh9" + SEED[4:])
@example(b"\xfd7zXZ\x00" + SEED[6:])
@example(SEED[:512 + 100])  # cut inside the first member's data
@example(SEED[:124] + b"77777777777\x00" + SEED[136:])  # a first member that claims 8 GiB
def test_mutated_shards_are_read_and_counted_without_raising(tmp_path_factory, data):
    _check_shard(data, tmp_path_factory.mktemp("tar"))


@given(st.lists(mutated_shards(), min_size=1, max_size=3))
def test_several_damaged_shards_stream_in_order(tmp_path_factory, shards):
    folder = tmp_path_factory.mktemp("tars")
    paths = []
    for i, data in enumerate(shards):
        paths.append(folder / f"{i}.tar")
        paths[-1].write_bytes(data)
    stats = ShardStats()
    samples = list(iter_tar_samples(paths, stats))
    assert stats.samples == len(samples) and stats.shards + len(stats.bad_shards) >= len(paths)
    assert [s["__url__"] for s in samples] == sorted((s["__url__"] for s in samples), key=lambda u: int(Path(u).stem))


def test_the_seed_shard_reads_as_written(tmp_path):
    path = tmp_path / "seed.tar"
    path.write_bytes(SEED)
    samples, stats = _read(path)
    assert [(s["__key__"], sorted(k for k in s if not k.startswith("__"))) for s in samples] == [
        ("a", ["jpg", "txt"]), ("b", ["json", "png", "txt"]), ("b", ["png", "txt"]), ("dir/c", ["cls", "webp"])]
    assert (stats.samples, stats.shards, stats.damaged_regions, stats.bad_shards) == (4, 1, 0, [])
    write_tar_shard(tmp_path / "again.tar", [{"__key__": "x", "txt": "y"}])  # the writer's shards read too
    assert _read(tmp_path / "again.tar")[0][0]["txt"] == b"y"


@pytest.mark.parametrize("case", regression_cases("tar"), ids=lambda p: p.name)
def test_saved_crashers_stay_fixed(case, tmp_path):
    _check_shard(case.read_bytes(), tmp_path)
