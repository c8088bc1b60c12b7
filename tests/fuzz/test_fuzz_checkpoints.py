"""Fuzzing the checkpoint readers: mutated safetensors files, TorchScript archives and ``.npz`` files.

Whatever the bytes, ``read_safetensors``, ``detect_format`` and ``load_any`` either read the file or raise a
documented error: ``CheckpointError`` (the file cannot be read or does not fit a model), ``ConfigError`` (the
config it carries is invalid or too large), ``BigVisionFormatError`` (an unreadable ``.npz``) or
``FileNotFoundError``; never another exception, never a long wait or a large allocation. Saved cases under
``regressions/checkpoints/`` replay on every run: each file goes through ``detect_format`` and ``load_any`` and
must be refused with a documented error.
"""

from __future__ import annotations

import functools
import io
import json
import struct
import tempfile
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st
from safetensors.torch import save

from clipforge.checkpoints import CheckpointError, detect_format, load_any
from clipforge.checkpoints.big_vision import BigVisionFormatError, read_npz
from clipforge.checkpoints.native import read_safetensors
from clipforge.checkpoints.openai import read_torchscript
from clipforge.config import ConfigError
from conftest import regression_cases

DOCUMENTED = (CheckpointError, ConfigError, BigVisionFormatError, FileNotFoundError)
TENSORS = {"token_embedding.weight": torch.arange(12, dtype=torch.float32).view(3, 4),
           "b": torch.ones(2, dtype=torch.float16), "c": torch.zeros(0, 3), "d": torch.tensor(7, dtype=torch.int64)}


def readers(path: Path) -> list[Callable[[], Any]]:
    """Every reader a file of this kind reaches: direct, through detection, and through ``load_any``."""
    direct = {".safetensors": read_safetensors, ".pt": read_torchscript, ".npz": read_npz}
    calls: list[Callable[[], Any]] = [lambda: detect_format(path), lambda: load_any(path)]
    if path.suffix in direct:
        calls.insert(0, lambda: direct[path.suffix](path))
    return calls


def only_documented_errors(content: bytes, suffix: str) -> None:
    """Writes ``content`` to a file and runs every reader over it: each succeeds or raises a documented error."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"model{suffix}"
        path.write_bytes(content)
        for read in readers(path):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    read()
            except DOCUMENTED:
                pass


def mutations(base: bytes) -> st.SearchStrategy[bytes]:
    """``base`` with bytes flipped, cut, inserted or overwritten at random places."""
    def flip(b: bytes, at: int, value: int) -> bytes:
        return b[:at % len(b)] + bytes([value]) + b[at % len(b) + 1:]

    def cut(b: bytes, at: int) -> bytes:
        return b[:at % (len(b) + 1)]

    def insert(b: bytes, at: int, extra: bytes) -> bytes:
        return b[:at % (len(b) + 1)] + extra + b[at % (len(b) + 1):]

    index = st.integers(min_value=0, max_value=2**16)
    return st.one_of(
        st.builds(flip, st.just(base), index, st.integers(0, 255)),
        st.builds(cut, st.just(base), index),
        st.builds(insert, st.just(base), index, st.binary(min_size=1, max_size=16)),
        st.builds(lambda b, flips: functools.reduce(lambda acc, f: flip(acc, *f), flips, b), st.just(base),
                  st.lists(st.tuples(index, st.integers(0, 255)), min_size=2, max_size=8)),
    )


# ---------------------------------------------------------------------------------------------------------------
# safetensors


SAFETENSORS = save(TENSORS, metadata={"format": "pt"})


def _header(content: bytes) -> dict[str, Any]:
    (n,) = struct.unpack("<Q", content[:8])
    return json.loads(content[8:8 + n])


def with_header(header: Any, data: bytes) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


header_values = st.none() | st.booleans() | st.integers(min_value=-(2**65), max_value=2**65) | st.floats() | st.text(
    max_size=8) | st.sampled_from(["F32", "F16", "I64", "BOOL", "F4", "BF16"]) | st.lists(
    st.integers(min_value=-5, max_value=2**40), max_size=4)


@st.composite
def lying_headers(draw: st.DrawFn) -> bytes:
    """The valid file's header with some fields replaced, a key repeated, or data cut or extended."""
    header = _header(SAFETENSORS)
    n = struct.unpack("<Q", SAFETENSORS[:8])[0]
    data = SAFETENSORS[8 + n:]
    for _ in range(draw(st.integers(1, 3))):
        key = draw(st.sampled_from(sorted(header)))
        if isinstance(header[key], dict) and key != "__metadata__" and draw(st.booleans()):
            field = draw(st.sampled_from(["dtype", "shape", "data_offsets", "extra"]))
            header[key] = {**header[key], field: draw(header_values)}
        else:
            header[key] = draw(header_values | st.dictionaries(st.text(max_size=4), header_values, max_size=3))
    content = with_header(header, data + draw(st.binary(max_size=8)))
    if draw(st.booleans()):  # a duplicate key, spliced into the JSON text
        text = content[8:].split(b"}", 1)
        content = content[:8] + text[0] + b'}, "b": {"dtype": "F16", "shape": [2], "data_offsets": [0, 4]' + (
            b"}" + text[1] if len(text) > 1 else b"")
        content = struct.pack("<Q", struct.unpack("<Q", content[:8])[0] + 64) + content[8:]
    return content


def test_the_unmutated_safetensors_file_reads() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.safetensors"
        path.write_bytes(SAFETENSORS)
        assert all(torch.equal(read_safetensors(path)[k], v) for k, v in TENSORS.items())
        assert detect_format(path) == "open_clip"


@given(mutations(SAFETENSORS))
@example(SAFETENSORS[:7])
@example(struct.pack("<Q", 2**63) + SAFETENSORS[8:])
@example(struct.pack("<Q", 100_000_000) + SAFETENSORS[8:])
def test_mutated_safetensors_bytes(content: bytes) -> None:
    only_documented_errors(content, ".safetensors")


@given(lying_headers())
def test_lying_safetensors_headers(content: bytes) -> None:
    only_documented_errors(content, ".safetensors")


# ---------------------------------------------------------------------------------------------------------------
# TorchScript archives (OpenAI's .pt)


@functools.cache
def torchscript_archive() -> bytes:
    """A real ``torch.jit.save``d module with several tensors (built once per run)."""
    module = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(module), buf)
    return buf.getvalue()


def rewrite_members(base: bytes, change: Callable[[str, bytes], bytes | None],
                    compression: int = zipfile.ZIP_STORED) -> bytes:
    """``base`` (a zip) with each member's bytes passed through ``change`` (``None`` drops the member)."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(base)) as src, zipfile.ZipFile(out, "w", compression) as dst:
        for info in src.infolist():
            raw = change(info.filename, src.read(info))
            if raw is not None:
                dst.writestr(info.filename, raw)
    return out.getvalue()


@st.composite
def mutated_members(draw: st.DrawFn) -> bytes:
    """The archive with one member's content mutated (its pickle, a storage, the constants) or dropped."""
    base = torchscript_archive()
    with zipfile.ZipFile(io.BytesIO(base)) as zf:
        names = zf.namelist()
        target = draw(st.sampled_from(names))
        original = zf.read(target)
    replacement = draw(st.none() | (mutations(original) if original else st.binary(max_size=16)))
    compression = draw(st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED]))
    return rewrite_members(base, lambda name, raw: replacement if name == target else raw, compression)


def test_the_unmutated_archive_reads() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.pt"
        path.write_bytes(torchscript_archive())
        assert detect_format(path) == "openai"
        assert sorted(read_torchscript(path)) == ["0.bias", "0.weight", "1.bias", "1.weight"]


@given(mutated_members())
def test_mutated_torchscript_members(content: bytes) -> None:
    only_documented_errors(content, ".pt")


@given(st.builds(lambda f: f(), st.just(torchscript_archive)).flatmap(mutations))
def test_mutated_torchscript_bytes(content: bytes) -> None:
    only_documented_errors(content, ".pt")


# ---------------------------------------------------------------------------------------------------------------
# .npz (big_vision)


def npz_bytes() -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **{"params/img/embedding/kernel": np.ones((2, 2, 3, 4), np.float32), "b": np.arange(3)})
    return buf.getvalue()


NPZ = npz_bytes()


@given(mutations(NPZ))
def test_mutated_npz_bytes(content: bytes) -> None:
    only_documented_errors(content, ".npz")


@given(st.sampled_from(["params/img/embedding/kernel.npy", "b.npy"]).flatmap(
    lambda name: st.tuples(st.just(name), mutations(zipfile.ZipFile(io.BytesIO(NPZ)).read(name)[:256]))))
def test_mutated_npy_headers(case: tuple[str, bytes]) -> None:
    name, head = case
    content = rewrite_members(NPZ, lambda member, raw: head + raw[256:] if member == name else raw)
    only_documented_errors(content, ".npz")


# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", regression_cases("checkpoints"), ids=lambda p: p.name)
def test_regression_cases_are_refused(case: Path) -> None:
    """Detection may name the format (the container looks right); reading it is a documented error."""
    only_documented_errors(case.read_bytes(), case.suffix)
    for read in readers(case)[::2]:  # the direct reader and load_any
        with pytest.raises(DOCUMENTED), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            read()
