"""A tar member over ``MAX_MEMBER_BYTES`` is never read into memory: its sample is skipped as ``too_large``."""

from __future__ import annotations

import random

import pytest

from clipforge.data import webdataset
from clipforge.data.decode import BadSample, DecodeLimits, decode_pair
from clipforge.data.webdataset import ShardStats, iter_shard, write_tar_shard
from helpers.shards import good


def test_an_oversized_member_is_not_read_and_counts_as_too_large(tmp_path, monkeypatch):
    samples = [good(f"{i:03d}", i) for i in range(3)]
    samples[1]["txt"] = "x" * 5000  # over the (patched) member limit
    write_tar_shard(tmp_path / "a.tar", samples)
    monkeypatch.setattr(webdataset, "MAX_MEMBER_BYTES", 4096)
    read = list(iter_shard(tmp_path / "a.tar", ShardStats()))
    assert [s["__key__"] for s in read] == ["000", "001", "002"]  # sample boundaries unchanged
    assert "txt" not in read[1] and read[1]["__oversized__"] == {"txt": 5000}
    with pytest.raises(BadSample) as bad:
        decode_pair(read[1], DecodeLimits(), None, random.Random(0))
    assert bad.value.reason == "too_large" and "001" in str(bad.value)
    image, caption = decode_pair(read[0], DecodeLimits(), None, random.Random(0))
    assert caption == "caption of 000" and image.size == (48, 40)
