"""A small, dependency-free reader for webdataset tar shards.

A shard is a plain tar file; consecutive members sharing a *key* (the member path up to the first dot of
its file name) form one sample, and the rest of the name is the field: ``0001.jpg`` + ``0001.cls`` →
``{"__key__": "0001", "jpg": b"...", "cls": b"3"}``. This is webdataset's convention
(``webdataset.tariterators.base_plus_ext``), so shards written by ``webdataset``, ``img2dataset`` or
CLIP_benchmark's exporter read the same here.

The reader streams (one member in memory at a time), never raises on a damaged shard (an unreadable or
truncated tar is counted in :class:`ShardStats` and the next shard is opened) and leaves decoding to the
caller, so a bad image costs one sample, not the run.
"""

from __future__ import annotations

import glob
import os
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import clipforge.fs as fs

Sample = dict[str, object]


@dataclass
class ShardStats:
    """What reading a set of shards met: samples, shards read, shards that failed (with the reason), and
    damaged regions (unreadable member headers skipped over to the next valid one)."""

    samples: int = 0
    shards: int = 0
    bad_shards: list[tuple[str, str]] = field(default_factory=list)
    damaged_regions: int = 0


def expand_shards(spec: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]) -> list[str]:
    """Turns a shard spec into a sorted list of paths or URLs.

    Args:
        spec: A directory (every ``*.tar`` in it), a glob, a brace range (``data/{000..009}.tar``, zero
            padding kept), a single file, or a list of any of these. Each may be a remote URL (``s3://``,
            ``gs://``, ``hf://``, ``memory://``: any fsspec file system) or a ``pipe:CMD`` command
            (:mod:`clipforge.fs`); see :func:`expand_remote` for what is looked up there.

    Raises:
        FileNotFoundError: When the spec matches no file.
        ImportError: A remote URL whose file system package is not installed (named).
    """
    if not isinstance(spec, (str, os.PathLike)):
        return [p for s in spec for p in expand_shards(s)]
    text = os.fspath(spec)
    if fs.is_remote(text):
        return expand_remote(text)
    text = fs.local_path(text)
    if os.path.isdir(text):
        paths = sorted(glob.glob(os.path.join(text, "*.tar")))
    else:
        paths = []
        for pattern in fs.expand_braces(text):
            matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
            paths.extend(p for p in matches if os.path.isfile(p))
    if not paths:
        raise FileNotFoundError(f"no tar shards found for {text!r}")
    return paths


def expand_remote(text: str) -> list[str]:
    """The shard URLs a remote spec names, with as few requests as webdataset makes.

    A brace range is taken as written, one URL per item, unchecked (a missing shard is skipped and counted
    when read, like a damaged one); a glob is listed on its file system; a single URL is a folder (its
    ``*.tar``) or a file, looked up once. ``pipe:`` commands are only brace expanded.

    Raises:
        FileNotFoundError: The spec lists nothing.
        ImportError: The URL's file system package is not installed (named).
    """
    pieces = fs.expand_braces(text)
    if fs.scheme(text) != "pipe":
        fs.filesystem(pieces[0])  # the file system's package is there (no request made)
    if fs.scheme(text) == "pipe" or len(pieces) > 1:
        urls = [u for piece in pieces for u in (fs.list_urls(piece) if fs.has_magic(piece) else [piece])]
    elif fs.has_magic(text):
        urls = fs.list_urls(text)
    elif fs.isdir(text):
        urls = fs.list_urls(fs.join(text, "*.tar"))
    else:
        urls = [text] if fs.exists(text) else []
    if not urls:
        raise FileNotFoundError(f"no tar shards found for {text!r} ({fs.scheme(text)}:// lists nothing there)")
    return urls


def split_key(member_name: str) -> tuple[str, str]:
    """``"dir/0001.seg.jpg"`` → ``("dir/0001", "seg.jpg")`` (webdataset's key/field split, field lower-cased)."""
    directory, base = os.path.split(member_name)
    stem, dot, ext = base.partition(".")
    return (os.path.join(directory, stem) if directory else stem), (ext.lower() if dot else "")


MAX_MEMBER_BYTES = 256 * 1024 * 1024  # a tar member larger than this is never read into memory


def iter_tar_samples(shards: Iterable[str | os.PathLike[str]], stats: ShardStats | None = None,
                     fields: set[str] | None = None) -> Iterator[Sample]:
    """Streams samples (``{"__key__", "__url__", field: bytes, ...}``) from tar shards in order.

    See :func:`iter_shard` for how damage is handled.

    Args:
        shards: Paths of tar files (see :func:`expand_shards`).
        stats: Filled in while iterating, if given.
        fields: Only keep these fields (e.g. ``{"jpg", "cls"}``); all when ``None``.
    """
    stats = stats if stats is not None else ShardStats()
    for shard in shards:
        yield from iter_shard(shard, stats, fields)


def iter_shard(shard: str | os.PathLike[str], stats: ShardStats | None = None, fields: set[str] | None = None,
               skip: int = 0) -> Iterator[Sample]:
    """Streams the samples of one tar shard, surviving damage.

    A member whose header is unreadable (bad checksum, garbage) is skipped block by block to the next valid
    header (``tarfile``'s ``ignore_zeros``), and the hole is noticed because the next header does not start
    where the previous member ended: the sample in progress and the one after the hole are flagged
    ``"__broken__": True`` and ``stats.damaged_regions`` counts the hole. A shard that cannot be opened or
    ends mid-member is recorded in ``stats.bad_shards``; samples read before the damage are kept (the
    one cut short flagged broken). Members that are not regular files (folders, links), without a field
    (no dot) and hidden files (``._*``, macOS resource forks) are ignored.

    A member over ``MAX_MEMBER_BYTES`` is not read: its size goes into the sample's ``"__oversized__"`` entry
    (``{field: bytes}``), which decoding counts as ``too_large``, so one huge member costs no memory.

    A sample ends where the key changes or a field repeats (``a.jpg a.txt a.jpg`` is two samples ``a``), decided
    on member names alone, so the samples are the same whether their bytes are read or skipped.

    Args:
        shard: Path of a tar file, or a remote URL or ``pipe:`` command (:func:`clipforge.fs.open_url`): one
            that is missing, or a command that fails, is a bad shard like a damaged file.
        stats: Filled in while iterating, if given.
        fields: Only keep these fields; all when ``None``.
        skip: Pass over the first ``skip`` samples without reading their bytes (resuming mid-shard). What a
            reader that gave those samples had already counted (the shard, holes and errors met up to the
            first member of sample ``skip``) is not counted again, so a resumed stream's counts equal an
            uninterrupted one's.
    """
    stats = stats if stats is not None else ShardStats()
    url = os.fspath(shard)
    current: Sample | None = None
    names: set[str] = set()  # the fields of ``current`` by name, kept or not (``fields``, ``skip``)
    index, after_hole, expected, members = -1, False, 0, 0

    def counted() -> bool:  # whether an event met now was counted by the reader that gave the first ``skip``
        return skip > 0 and index < skip

    try:
        with fs.open_url(url) as stream, tarfile.open(fileobj=stream, mode="r|*", ignore_zeros=True) as tar:
            stats.shards += skip == 0
            for member in tar:
                members += 1
                hole = member.offset != expected
                expected = member.offset_data + -(-member.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
                if hole:
                    stats.damaged_regions += not counted()
                    if current is not None:
                        current["__broken__"] = True
                    after_hole = True
                key, ext = split_key(member.name)
                if not member.isfile() or not ext or Path(member.name).name.startswith("._"):
                    continue
                if current is None or current["__key__"] != key or ext in names:
                    if current is not None and index >= skip:
                        stats.samples += 1
                        yield current
                    index += 1
                    current, names = {"__key__": key, "__url__": url}, set()
                names.add(ext)
                if after_hole:
                    current["__broken__"], after_hole = True, False
                if index >= skip and (fields is None or ext in fields):
                    if member.size > MAX_MEMBER_BYTES:  # never held in memory: the sample is too_large
                        current.setdefault("__oversized__", {})[ext] = member.size
                        continue
                    handle = tar.extractfile(member)
                    data = handle.read() if handle is not None else b""  # a member cut short raises: absent
                    current[ext] = data
        if not members:
            raise tarfile.ReadError("no valid tar member")
    except (tarfile.TarError, OSError, EOFError) as e:
        if not counted():
            stats.bad_shards.append((url, f"{type(e).__name__}: {e}"))
        if current is not None:
            current["__broken__"] = True
    if current is not None and index >= skip:
        stats.samples += 1
        yield current


def write_tar_shard(path: str | os.PathLike[str], samples: Iterable[dict[str, bytes | str]]) -> int:
    """Writes samples (``{"__key__": "0001", "jpg": bytes, "cls": "3"}``) to one tar; returns their number."""
    import io

    n = 0
    with tarfile.open(path, "w") as tar:
        for sample in samples:
            key = str(sample["__key__"])
            for ext, value in sample.items():
                if ext.startswith("__"):
                    continue
                data = value.encode("utf-8") if isinstance(value, str) else bytes(value)
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            n += 1
    return n
