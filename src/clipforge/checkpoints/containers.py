"""Checks on the containers checkpoints come in, before anything in them is inflated, allocated or trusted.

A checkpoint file is outside input: its header may lie about sizes, offsets and shapes. Each reader checks what
the container declares against what the file holds, and refuses a lie with a ``CheckpointError`` naming the file
and the entry:

- safetensors (``safetensors_header``): the header is at most ``MAX_HEADER_BYTES`` (16 MiB; real checkpoints
  need kilobytes) and lies inside the file; it is a JSON object without duplicate keys; every tensor has a known
  dtype, a shape of non-negative integers and ``data_offsets`` whose extent is exactly shape × dtype size; the
  tensors tile the data section in order, without gaps or overlaps, up to the end of the file (what the
  safetensors library itself requires, checked here with a message that names the key).
- zip archives (TorchScript ``.pt``, ``.npz``; ``check_zip``): the members together may declare at most
  ``MAX_INFLATE_RATIO`` (100) times the archive's size on disk (with a floor of 64 MiB), so a zip bomb is refused
  from its directory, before one byte is inflated; a reader checks each member's declared size against the
  tensor it should hold before reading it (``check_member``).
"""

from __future__ import annotations

import json
import math
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clipforge.checkpoints.native import CheckpointError

MAX_HEADER_BYTES = 16 * 2**20
MAX_INFLATE_RATIO = 100
MIN_INFLATE_BYTES = 64 * 2**20

DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
               "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}


@dataclass(frozen=True)
class TensorEntry:
    """One tensor as a safetensors header declares it (offsets relative to the data section)."""

    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise CheckpointError(f"the key {key[:200]!r} appears twice")
        out[key] = value
    return out


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def safetensors_header(path: str | Path) -> tuple[dict[str, TensorEntry], dict[str, str]]:
    """The tensors and the ``__metadata__`` a safetensors file declares, every declaration checked.

    Reads only the header (at most ``MAX_HEADER_BYTES``), never the tensor data.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: the header is too large, truncated, not a JSON object, has a duplicate key, or declares
            a tensor whose dtype, shape or offsets do not fit (naming the file and the key).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        return _header(path)
    except CheckpointError as e:
        detail = str(e).removeprefix(f"{path}: ")
        raise CheckpointError(f"{path}: not a readable safetensors file: {detail}") from None


def _header(path: Path) -> tuple[dict[str, TensorEntry], dict[str, str]]:
    size = path.stat().st_size
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise CheckpointError(f"{path}: {size} bytes, shorter than its 8-byte header length")
        (n,) = struct.unpack("<Q", prefix)
        if n > MAX_HEADER_BYTES:
            raise CheckpointError(f"{path}: the safetensors header declares {n:,} bytes, more than the limit of "
                                  f"{MAX_HEADER_BYTES:,}")
        if 8 + n > size:
            raise CheckpointError(f"{path}: the safetensors header declares {n:,} bytes, beyond the end of the "
                                  f"file ({size:,} bytes)")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: safetensors header: {e}") from None
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise CheckpointError(f"{path}: the safetensors header is not valid JSON ({type(e).__name__}: "
                              f"{str(e)[:200]})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: the safetensors header is a JSON {type(header).__name__}, not an object")
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CheckpointError(f"{path}: the safetensors __metadata__ is not a mapping of strings to strings")
    entries = {key: _entry(path, key, value) for key, value in header.items()}
    data_size = size - 8 - n
    offset = 0
    for key, entry in sorted(entries.items(), key=lambda item: (item[1].begin, item[1].end)):
        if entry.begin != offset:
            what = "overlaps the tensor before it" if entry.begin < offset else "leaves a gap before it"
            raise CheckpointError(f"{path}: tensor {key[:200]!r} starts at byte {entry.begin:,} of the data and "
                                  f"{what} (which ends at {offset:,})")
        offset = entry.end
    if offset != data_size:
        raise CheckpointError(f"{path}: the tensors declare {offset:,} bytes of data; the file holds {data_size:,} "
                              "after its header" + (" (truncated?)" if offset > data_size else ""))
    return entries, metadata


def _entry(path: Path, key: str, value: Any) -> TensorEntry:
    """One header entry, checked: known dtype, non-negative shape, offsets whose extent matches the shape."""
    name = repr(key[:200])
    if not isinstance(value, dict) or set(value) != {"dtype", "shape", "data_offsets"}:
        raise CheckpointError(f"{path}: tensor {name}: expected exactly dtype, shape and data_offsets, got "
                              f"{sorted(value)[:5] if isinstance(value, dict) else type(value).__name__}")
    dtype, shape, offsets = value["dtype"], value["shape"], value["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPE_BYTES:
        raise CheckpointError(f"{path}: tensor {name}: unsupported dtype {str(dtype)[:40]!r}; known: "
                              f"{', '.join(DTYPE_BYTES)}")
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        raise CheckpointError(f"{path}: tensor {name}: the shape is not a list of non-negative integers")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(o) for o in offsets)
            and offsets[0] <= offsets[1]):
        raise CheckpointError(f"{path}: tensor {name}: data_offsets is not [begin, end] with 0 <= begin <= end")
    extent = math.prod(shape) * DTYPE_BYTES[dtype]
    if offsets[1] - offsets[0] != extent:
        raise CheckpointError(f"{path}: tensor {name}: data_offsets span {offsets[1] - offsets[0]:,} bytes; its "
                              f"shape {tuple(shape)[:8]} of {dtype} needs {extent:,}")
    return TensorEntry(dtype, tuple(shape), offsets[0], offsets[1])


def check_zip(archive: zipfile.ZipFile, path: str | Path) -> None:
    """Refuses an archive whose members declare more than ``MAX_INFLATE_RATIO`` × its size (a zip bomb).

    Reads only the central directory: nothing is inflated. Python's zip reader never returns more than a member's
    declared size, so the declared total bounds what reading the archive can cost.
    """
    size = Path(path).stat().st_size
    infos = archive.infolist()
    declared = sum(info.file_size for info in infos)
    limit = max(MAX_INFLATE_RATIO * size, MIN_INFLATE_BYTES)
    if declared > limit:
        largest = max(infos, key=lambda info: info.file_size)
        raise CheckpointError(f"{path}: the archive's members declare {declared:,} bytes uncompressed, more than "
                              f"{MAX_INFLATE_RATIO} × its {size:,} bytes on disk; largest {largest.filename[:200]!r} "
                              f"({largest.file_size:,} bytes)")


def check_member(archive: zipfile.ZipFile, name: str, expected: int, path: str | Path) -> None:
    """Refuses a member that is missing or whose declared size is not the ``expected`` bytes, before reading it."""
    try:
        info = archive.getinfo(name)
    except KeyError:
        raise CheckpointError(f"{path}: no member {name[:200]!r} in the archive") from None
    if info.file_size != expected:
        raise CheckpointError(f"{path}: member {name[:200]!r} declares {info.file_size:,} bytes; the tensor it "
                              f"holds needs {expected:,}")
