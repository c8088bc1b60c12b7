"""Tar shards of good samples and of every kind of bad sample, with the skips they should cause."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from clipforge.data.webdataset import expand_shards, write_tar_shard
from helpers.images import corrupt_png, jpeg, png_bomb

TINY = ["model_overrides.embed_dim=32", "model_overrides.vision.image_size=32", "model_overrides.vision.patch_size=8",
        "model_overrides.vision.width=32", "model_overrides.vision.layers=1", "model_overrides.vision.heads=2",
        "model_overrides.text.width=32", "model_overrides.text.heads=2", "model_overrides.text.layers=1",
        "model_overrides.text.context_length=16", "schedule.warmup_steps=1", "plots=false"]


def good(key: str, seed: int, fmt: str = "JPEG") -> dict:
    field = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}[fmt]
    return {"__key__": key, field: jpeg(seed, fmt=fmt), "txt": f"caption of {key}", "json": json.dumps({"key": key})}


def write_good_shards(folder: Path, shards: int, per_shard: int, prefix: str = "") -> list[str]:
    """``shards`` tars of ``per_shard`` good samples; keys ``{prefix}{shard:03d}{i:03d}``."""
    folder.mkdir(parents=True, exist_ok=True)
    for s in range(shards):
        write_tar_shard(folder / f"{s:05d}.tar",
                        [good(f"{prefix}{s:03d}{i:03d}", s * 1000 + i) for i in range(per_shard)])
    return expand_shards(folder)


def no_text(captions: list[str]) -> torch.Tensor:
    return torch.zeros(len(captions), 4, dtype=torch.long)


def _corrupt_header(path: Path, member: str) -> None:
    """Flips a byte of ``member``'s tar header name: its checksum no longer matches."""
    data = bytearray(path.read_bytes())
    offset = data.find(member.encode() + b"\x00")
    assert offset % 512 == 0
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate_inside(path: Path, member: str) -> None:
    """Cuts the file 5 bytes into ``member``'s data."""
    data = path.read_bytes()
    path.write_bytes(data[:data.find(member.encode() + b"\x00") + 512 + 5])


BAD_KINDS = ["truncated", "empty", "not_image", "no_caption", "bad_text", "bomb", "too_many_pixels", "bad_size",
             "no_image", "broken_member", "corrupt", "blank_caption"]


REASON = {"bomb": "too_large", "too_many_pixels": "too_large", "blank_caption": "no_caption"}


def bad_sample(kind: str, key: str, seed: int) -> dict:
    """A sample that is bad in the given way (``broken_member`` is made bad after writing)."""
    s = good(key, seed)
    if kind == "truncated":
        s["jpg"] = s["jpg"][: len(s["jpg"]) * 2 // 3]
    elif kind == "empty":
        s["jpg"] = b""
    elif kind == "not_image":
        s["jpg"] = bytes(np.random.default_rng(seed).integers(0, 256, 3000, dtype=np.uint8))
    elif kind == "no_caption":
        del s["txt"]
    elif kind == "bad_text":
        s["txt"] = b"caf\xe9 au lait \xff"
    elif kind == "bomb":
        del s["jpg"]
        s["png"] = png_bomb(100_000, 100_000)
    elif kind == "too_many_pixels":
        s["jpg"] = jpeg(seed, 400, 300)  # above the run's data.decode.max_pixels=100000
    elif kind == "bad_size":
        s["jpg"] = jpeg(seed, 200, 8)
    elif kind == "no_image":
        del s["jpg"]
    elif kind == "corrupt":
        del s["jpg"]
        s["png"] = corrupt_png()
    elif kind == "blank_caption":
        s["txt"] = " \n "
    return s


def write_damaged_shards(folder: Path, shards: int = 8, goods: int = 8) -> Counter:
    """Shards alternating good and bad samples (each begins and ends good); returns the expected skips."""
    folder.mkdir(parents=True, exist_ok=True)
    expected, n = Counter(), 0
    for s in range(shards):
        samples, broken = [], []
        for i in range(2 * goods - 1):
            key = f"{s:03d}{i:03d}"
            if i % 2 == 0:
                samples.append(good(key, n, ("JPEG", "PNG", "WEBP")[i % 3]))
            else:
                kind = BAD_KINDS[n % len(BAD_KINDS)]
                samples.append(bad_sample(kind, key, n))
                expected[REASON.get(kind, kind)] += 1
                if kind == "broken_member":
                    broken.append(f"{key}.jpg")
            n += 1
        path = folder / f"{s:05d}.tar"
        write_tar_shard(path, samples)
        for member in broken:
            _corrupt_header(path, member)
            expected["tar_holes"] += 1
    _truncate_inside(folder / f"{shards - 1:05d}.tar", f"{shards - 1:03d}{2 * goods - 2:03d}.json")
    expected["shard_errors"] += 1  # ... and its last sample is still whole enough (jpg + txt) to use
    return expected



def write_repeating_key_shards(folder: Path, shards: int = 6, per_shard: int = 9) -> None:
    """Shards whose keys repeat (consecutively: ``k.jpg k.txt k.jpg k.txt``; and apart: ``a … b … a``), with a
    bad sample, a damaged header (a hole) in each shard and the last shard cut short inside its last member.

    Every shard's first and last samples are good and whole; a reader must keep each repetition its own sample.
    """
    folder.mkdir(parents=True, exist_ok=True)
    for s in range(shards):
        samples = []
        for i in range(per_shard):
            key = f"r{s:02d}{i:03d}"
            if i % 3 == 2:
                key = samples[-1]["__key__"]  # the previous key again, right after it
            elif i == 7:
                key = samples[1]["__key__"]  # an earlier key again, further on
            sample = good(key, s * 100 + i)
            if i == 4:
                sample = bad_sample(("not_image", "bad_text", "empty")[s % 3], key, s * 100 + i)
            samples.append(sample)
        samples[3]["json"] = json.dumps({"key": samples[3]["__key__"], "hole": True})
        path = folder / f"{s:05d}.tar"
        write_tar_shard(path, samples)
        _corrupt_header(path, f"{samples[3]['__key__']}.json")  # a unique member name: samples 3 and 4 broken
    path = folder / f"{shards - 1:05d}.tar"
    data = path.read_bytes()
    path.write_bytes(data[:data.rfind(f"{samples[-1]['__key__']}.json".encode() + b"\x00") + 512 + 5])
