"""A checkpoint folder on the local disk or behind an fsspec URL (``s3://``, ``gs://``, ``hf://``, ``memory://``).

``Location`` is the little the sharded checkpoints (``clipforge.train.dcp``) need from storage: list, size, remove,
and write a small file whole. Local files are written beside and renamed into place, fsynced
(``clipforge.train.checkpoint._atomic_write``); a remote object is one upload (``clipforge.fs.write_bytes``), which
object stores make atomic. fsspec and the scheme's package are needed only for a URL (``pip install
'clipforge[remote]'`` and, for instance, ``s3fs``), and a missing one is named.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import clipforge.fs as fs
from clipforge.train.checkpoint import _atomic_write


class Location:
    """A file or folder named by a local path or a URL.

    Args:
        where: A path, or a URL that fsspec serves.
    """

    def __init__(self, where: str | Path):
        self.text = str(where).rstrip("/") if fs.is_remote(str(where)) else str(where)
        self.remote = fs.is_remote(self.text)

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"Location({self.text!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Location) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)

    @property
    def name(self) -> str:
        return self.text.rsplit("/", 1)[-1]

    @property
    def path(self) -> Path:
        """The local path (``ValueError`` for a URL)."""
        if self.remote:
            raise ValueError(f"{self.text} is a URL, not a local path")
        return Path(fs.local_path(self.text))

    def child(self, name: str) -> Location:
        return Location(fs.join(self.text, name))

    def sibling(self, name: str) -> Location:
        return Location(self.text[:len(self.text) - len(self.name)] + name)

    def is_dir(self) -> bool:
        return fs.isdir(self.text)

    def is_file(self) -> bool:
        return fs.exists(self.text) and not fs.isdir(self.text)

    def mkdir(self) -> None:
        fs.makedirs(self.text)

    def remove(self) -> None:
        """Deletes the file or folder (and what it holds); nothing when absent."""
        if not self.remote:
            if self.path.is_dir():
                shutil.rmtree(self.path, ignore_errors=True)
            else:
                self.path.unlink(missing_ok=True)
            return
        system, path = fs.filesystem(self.text)
        if system.exists(path):
            system.rm(path, recursive=True)

    def read_bytes(self) -> bytes:
        return fs.read_bytes(self.text)

    def write_bytes(self, data: bytes) -> None:
        """Writes the whole file at once: a reader sees the old content or the new, never half."""
        if self.remote:
            fs.write_bytes(self.text, data)
        else:
            _atomic_write(self.path, lambda f: f.write(data))

    def children(self) -> list[Location]:
        """What the folder holds, sorted by name (empty when it does not exist)."""
        if not self.remote:
            return [Location(p) for p in sorted(self.path.iterdir())] if self.path.is_dir() else []
        system, path = fs.filesystem(self.text)
        if not system.exists(path):
            return []
        return sorted((self.child(entry.rstrip("/").rsplit("/", 1)[-1]) for entry in system.ls(path, detail=False)),
                      key=lambda location: location.name)

    def file_sizes(self) -> dict[str, int]:
        """The folder's files (not sub-folders) by name, with their sizes in bytes."""
        if not self.remote:
            return {p.name: p.stat().st_size for p in sorted(self.path.iterdir()) if p.is_file()}
        system, path = fs.filesystem(self.text)
        return {entry["name"].rstrip("/").rsplit("/", 1)[-1]: int(entry["size"] or 0)
                for entry in system.ls(path, detail=True) if entry["type"] == "file"}
