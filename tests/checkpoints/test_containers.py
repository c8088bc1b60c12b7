"""Container formats that lie: safetensors headers, TorchScript and .npz zips whose declarations do not match what
the file holds are refused with a ``CheckpointError`` naming the file and the entry, before anything is inflated."""

from __future__ import annotations

import collections
import io
import json
import pickle
import struct
import sys
import types
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from clipforge.checkpoints import CheckpointError, detect_format, load_any
from clipforge.checkpoints.big_vision import BigVisionFormatError, read_npz
from clipforge.checkpoints.containers import MAX_HEADER_BYTES, safetensors_header
from clipforge.checkpoints.native import read_safetensors
from clipforge.checkpoints.openai import read_torchscript

# ---------------------------------------------------------------------------------------------------------------
# A TorchScript-like archive written by hand, so its pickle can say anything: a ``__torch__`` module whose
# attributes are tensor views of storages under ``data/``, exactly the opcodes torch.jit.save emits.

_TORCH = types.ModuleType("__torch__")


class Module:
    """Pickled as ``__torch__.Module`` with its attribute dict, as a scripted module is."""


Module.__module__, Module.__qualname__ = "__torch__", "Module"
_TORCH.Module = Module  # type: ignore[attr-defined]
sys.modules.setdefault("__torch__", _TORCH)


class Storage:
    def __init__(self, key: str, numel: int, dtype: str = "FloatStorage"):
        self.key, self.numel, self.dtype = key, numel, dtype


class View:
    def __init__(self, storage: Storage, offset: Any, size: Any, stride: Any):
        self.args = (storage, offset, size, stride, False, collections.OrderedDict())

    def __reduce__(self) -> tuple[Any, ...]:
        return torch._utils._rebuild_tensor_v2, self.args


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj: Any) -> Any:
        return ("storage", obj.dtype, obj.key, "cpu", obj.numel) if isinstance(obj, Storage) else None


def torchscript_zip(path: Path, tensors: dict[str, View], data: dict[str, bytes],
                    compression: int = zipfile.ZIP_STORED) -> Path:
    """Writes an archive whose root module holds ``tensors`` and whose ``data/<key>`` members hold ``data``."""
    root = Module()
    root.__dict__.update(tensors)
    buf = io.BytesIO()
    _Pickler(buf, protocol=2).dump(root)
    with zipfile.ZipFile(path, "w", compression) as zf:
        zf.writestr("archive/data.pkl", buf.getvalue())
        zf.writestr("archive/constants.pkl", pickle.dumps(()))
        for key, raw in data.items():
            zf.writestr(f"archive/data/{key}", raw)
    return path


SIX = torch.arange(6, dtype=torch.float32).numpy().tobytes()


def test_a_hand_written_archive_reads_like_torchscript(tmp_path: Path) -> None:
    s = Storage("0", 6)
    state = read_torchscript(torchscript_zip(tmp_path / "a.pt", {"w": View(s, 0, (2, 3), (3, 1)),
                                                                  "b": View(s, 2, (4,), (1,))}, {"0": SIX}))
    assert torch.equal(state["w"], torch.arange(6.0).view(2, 3)) and torch.equal(state["b"], torch.arange(2.0, 6))


@pytest.mark.parametrize(("offset", "size", "stride", "message"), [
    (5, (2, 3), (3, 1), "reaches element 10; the storage holds 6"),
    (0, (3, 3), (3, 1), "reaches element 8"),
    (0, (2,), (7,), "reaches element 7"),
    (7, (0,), (1,), "the storage holds 6"),
    (-1, (2,), (1,), "not a valid tensor view"),
    (0, (2,), (1, 1), "not a valid tensor view"),
    (0, (2, -1), (1, 1), "not a valid tensor view"),
    ("0", (2,), (1,), "not a valid tensor view"),
    (0, 2, 1, "not a valid tensor view"),
    (0, (0, 2**70), (1, 1), "not a valid tensor view"),
    (0, (2**40, 2**40), (0, 0), "not a valid view"),
])
def test_an_out_of_bounds_view_names_the_file_and_the_storage(tmp_path: Path, offset: Any, size: Any, stride: Any,
                                                              message: str) -> None:
    path = torchscript_zip(tmp_path / "a.pt", {"w": View(Storage("0", 6), offset, size, stride)}, {"0": SIX})
    with pytest.raises(CheckpointError, match=rf"a.pt: storage data/0: .*{message}"):
        read_torchscript(path)


def test_a_member_that_does_not_hold_its_tensor_is_refused_before_reading(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    path = torchscript_zip(tmp_path / "a.pt", {"w": View(Storage("0", 10**12), 0, (2,), (1,))}, {"0": SIX})
    with pytest.raises(CheckpointError, match=r"member 'archive/data/0' declares 24 bytes; the tensor it holds "
                                              r"needs 4,000,000,000,000"):
        read_torchscript(path)
    path = torchscript_zip(tmp_path / "b.pt", {"w": View(Storage("0", 6), 0, (2,), (1,))}, {"0": SIX[:20]})
    with pytest.raises(CheckpointError, match="declares 20 bytes; the tensor it holds needs 24"):
        read_torchscript(path)
    path = torchscript_zip(tmp_path / "c.pt", {"w": View(Storage("1", 6), 0, (2,), (1,))}, {"0": SIX})
    with pytest.raises(CheckpointError, match="no member 'archive/data/1'"):
        read_torchscript(path)


def test_a_zip_bomb_is_refused_from_its_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = torchscript_zip(tmp_path / "bomb.pt", {"w": View(Storage("0", 50 * 2**20), 0, (2,), (1,))}, {},
                           compression=zipfile.ZIP_DEFLATED)
    with zipfile.ZipFile(path, "a", zipfile.ZIP_DEFLATED, compresslevel=1) as zf, zf.open("archive/data/0", "w") as f:
        for _ in range(200):  # 200 MiB of zeros: about 200 KB on disk
            f.write(bytes(2**20))
    assert path.stat().st_size < 2**20
    assert detect_format(path) == "openai"

    def never(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a member was inflated")

    monkeypatch.setattr(zipfile.ZipFile, "open", never)
    with pytest.raises(CheckpointError, match=r"bomb.pt: the archive's members declare 209,7\d\d,\d\d\d bytes "
                                              r"uncompressed, more than 100 × its .* largest 'archive/data/0'"):
        load_any(path)


@pytest.mark.parametrize("damage", [lambda b: b[:len(b) // 2], lambda b: b.replace(b"storage", b"stowage"),
                                    lambda b: b.replace(b"torch._utils", b"builtins.xyz"),
                                    lambda b: b[:40] + b"\xff" + b[41:]])
def test_a_damaged_pickle_is_a_checkpoint_error(tmp_path: Path, damage: Any) -> None:
    path = torchscript_zip(tmp_path / "a.pt", {"w": View(Storage("0", 6), 0, (2,), (1,))}, {"0": SIX})
    with zipfile.ZipFile(path) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    members["archive/data.pkl"] = damage(members["archive/data.pkl"])
    with zipfile.ZipFile(path, "w") as zf:
        for name, raw in members.items():
            zf.writestr(name, raw)
    with pytest.raises(CheckpointError, match="a.pt: "):
        read_torchscript(path)


# ---------------------------------------------------------------------------------------------------------------
# safetensors


def safetensors_bytes(header: Any, data: bytes = b"", raw_header: bytes | None = None) -> bytes:
    text = raw_header if raw_header is not None else json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


def f32(shape: list[int], begin: int, end: int) -> dict[str, Any]:
    return {"dtype": "F32", "shape": shape, "data_offsets": [begin, end]}


LIES = [
    ("duplicate key", safetensors_bytes(None, bytes(8), b'{"w": ' + json.dumps(f32([2], 0, 8)).encode()
                                        + b', "w": ' + json.dumps(f32([2], 0, 8)).encode() + b"}"),
     "the key 'w' appears twice"),
    ("offsets beyond the file", safetensors_bytes({"w": f32([250], 0, 1000)}, bytes(8)),
     "the tensors declare 1,000 bytes of data; the file holds 8 after its header"),
    ("extent not the shape's", safetensors_bytes({"w": f32([2, 2], 0, 8)}, bytes(8)),
     "tensor 'w': data_offsets span 8 bytes; its shape \\(2, 2\\) of F32 needs 16"),
    ("overlap", safetensors_bytes({"a": f32([2], 0, 8), "b": f32([2], 4, 12)}, bytes(12)),
     "tensor 'b' starts at byte 4 of the data and overlaps the tensor before it"),
    ("gap", safetensors_bytes({"a": f32([1], 0, 4), "b": f32([1], 8, 12)}, bytes(12)),
     "tensor 'b' starts at byte 8 of the data and leaves a gap"),
    ("reversed offsets", safetensors_bytes({"a": f32([0], 8, 0)}, bytes(8)), "0 <= begin <= end"),
    ("negative dimension", safetensors_bytes({"a": f32([-2], 0, 8)}, bytes(8)), "non-negative integers"),
    ("float dimension", safetensors_bytes({"a": f32([2.0], 0, 8)}, bytes(8)), "non-negative integers"),
    ("unknown dtype", safetensors_bytes({"a": {"dtype": "F128", "shape": [1], "data_offsets": [0, 16]}}, bytes(16)),
     "unsupported dtype 'F128'"),
    ("extra field", safetensors_bytes({"a": {**f32([1], 0, 4), "x": 1}}, bytes(4)), "expected exactly dtype"),
    ("huge declared header", struct.pack("<Q", 2**60) + b"{}", "declares 1,152,921,504,606,846,976 bytes, more than"),
    ("header beyond the file", struct.pack("<Q", 100) + b"{}", "beyond the end of the file"),
    ("shorter than 8 bytes", b"\x01\x00", "shorter than its 8-byte header length"),
    ("not JSON", safetensors_bytes(None, raw_header=b"{not json"), "not valid JSON"),
    ("not UTF-8", safetensors_bytes(None, raw_header=b'{"\xff": 1}'), "not valid JSON"),
    ("deeply nested", safetensors_bytes(None, raw_header=b"[" * 100_000), "not valid JSON"),
    ("a list", safetensors_bytes([1, 2]), "a JSON list, not an object"),
    ("metadata not strings", safetensors_bytes({"__metadata__": {"a": 1}}), "__metadata__ is not a mapping"),
]


@pytest.mark.parametrize(("kind", "content", "message"), LIES, ids=[lie[0] for lie in LIES])
def test_a_lying_safetensors_header_names_the_file_and_the_key(tmp_path: Path, kind: str, content: bytes,
                                                               message: str) -> None:
    path = tmp_path / "open_clip_model.safetensors"
    path.write_bytes(content)
    for read in (read_safetensors, detect_format, load_any):
        with pytest.raises(CheckpointError, match=f"open_clip_model.safetensors: not a readable safetensors file: "
                                                  f".*{message}"):
            read(path)


def test_megabytes_of_metadata_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    save_file({"w": torch.zeros(2)}, str(path), metadata={"junk": "x" * (MAX_HEADER_BYTES + 1)})
    with pytest.raises(CheckpointError, match=f"bytes, more than the limit of {MAX_HEADER_BYTES:,}"):
        read_safetensors(path)
    save_file({"w": torch.zeros(2)}, str(path), metadata={"junk": "x" * 1000})
    entries, metadata = safetensors_header(path)
    assert entries["w"].shape == (2,) and metadata["junk"] == "x" * 1000
    assert torch.equal(read_safetensors(path)["w"], torch.zeros(2))


def test_every_dtype_and_empty_tensors_pass_the_header_check(tmp_path: Path) -> None:
    tensors = {str(dtype): torch.zeros(3, 2, dtype=dtype) for dtype in (
        torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32, torch.int16,
        torch.int8, torch.uint8, torch.bool)} | {"empty": torch.zeros(0, 4), "scalar": torch.tensor(1.0)}
    save_file(tensors, str(tmp_path / "t.safetensors"))
    loaded = read_safetensors(tmp_path / "t.safetensors")
    assert all(torch.equal(loaded[k], v) for k, v in tensors.items())


# ---------------------------------------------------------------------------------------------------------------
# .npz


def test_a_lying_npz_is_refused_before_numpy_allocates(tmp_path: Path) -> None:
    path = tmp_path / "x.npz"
    np.savez(path, a=np.zeros(4, dtype=np.float32))
    with zipfile.ZipFile(path) as zf:
        member = zf.read("a.npy")
    header = member[:member.index(b"}") + 1].replace(b"(4,)", b"(10000000000000,)")
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("a.npy", header.ljust(len(header) + (64 - len(header) % 64) - 1) + b"\n" + bytes(16))
    with pytest.raises(BigVisionFormatError, match=r"x.npz: member 'a.npy' declares an array of shape "
                                                   r"\(10000000000000,\) \(40,000,000,000,000 bytes\)"):
        read_npz(path)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf, zf.open("a.npy", "w") as f:
        for _ in range(200):
            f.write(bytes(2**20))
    with pytest.raises(BigVisionFormatError, match="x.npz: the archive's members declare"):
        read_npz(path)
