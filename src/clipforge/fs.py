"""Files at local paths, remote URLs (through fsspec) and webdataset-style ``pipe:`` commands: the one place
that talks to fsspec.

A *URL* here is one of:

- a local path (``data/00000.tar``) or a ``file://`` URL: read with the standard library, no fsspec needed;
- any fsspec URL (``s3://bucket/x.tar``, ``gs://...``, ``hf://datasets/org/name/x.tar``, ``memory://x.tar``):
  needs ``pip install 'clipforge[remote]'`` (fsspec) and the scheme's own package (``s3fs`` for ``s3://``,
  ``gcsfs`` for ``gs://``, ``huggingface_hub`` for ``hf://``); a missing one is an ``ImportError`` naming it;
- ``pipe:CMD``: the standard output of the shell command ``CMD`` (``pipe:aws s3 cp s3://b/x.tar -``), as in
  webdataset; a command that exits with a non-zero status raises :class:`PipeError` naming it and the status.

Brace ranges (``shard-{000000..000009}.tar``, zero padding kept) and lists (``{train,val}``) expand as
webdataset's ``braceexpand`` does (:func:`expand_braces`, :func:`list_urls`).
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import subprocess
import tempfile
from pathlib import Path
from typing import IO, Any
from urllib.parse import unquote, urlparse

PIPE = "pipe:"
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]+)(?:://|::)")  # s3://b/x; simplecache::s3://b/x
_RANGE = re.compile(r"\{(\d+)\.\.(\d+)\}")
_LIST = re.compile(r"\{([^{}]*,[^{}]*)\}")
# the package each common fsspec scheme needs besides fsspec itself (fsspec's own registry names the rest)
PACKAGES = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "hf": "huggingface_hub", "az": "adlfs",
            "abfs": "adlfs", "abfss": "adlfs", "http": "aiohttp", "https": "aiohttp", "sftp": "paramiko",
            "ssh": "paramiko"}
REMOTE_EXTRA = "pip install 'clipforge[remote]'"


class PipeError(OSError):
    """A ``pipe:`` command exited with a non-zero status (an ``OSError``, so shard readers skip and count it)."""


def scheme(url: str | os.PathLike[str]) -> str:
    """The URL's scheme (``s3``, ``memory``, ``file``, ``pipe``), or ``""`` for a plain local path."""
    text = os.fspath(url)
    if text.startswith(PIPE):
        return "pipe"
    match = _SCHEME.match(text)
    return match.group(1).lower() if match else ""


def is_remote(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is read through fsspec or a command: a URL with a scheme other than ``file://``, or
    ``pipe:``."""
    return scheme(path) not in ("", "file")


def local_path(url: str | os.PathLike[str]) -> str:
    """The local path a plain path or ``file://`` URL names (``file:///data/x.tar`` → ``/data/x.tar``).

    Raises:
        ValueError: ``url`` is remote.
    """
    text = os.fspath(url)
    kind = scheme(text)
    if kind == "":
        return text
    if kind != "file":
        raise ValueError(f"{text!r} is not a local path")
    parsed = urlparse(text)
    return unquote(parsed.netloc + parsed.path) if parsed.netloc not in ("", "localhost") else unquote(parsed.path)


def _fsspec() -> Any:
    try:
        import fsspec
    except ImportError:
        raise ImportError(f"remote URLs need fsspec: {REMOTE_EXTRA}") from None
    return fsspec


def filesystem(url: str | os.PathLike[str]) -> tuple[Any, str]:
    """The fsspec file system that serves ``url`` and the path within it (``fsspec.core.url_to_fs``).

    Raises:
        ImportError: fsspec, or the package the URL's scheme needs, is not installed (named, with the command
            that installs it).
        ValueError: a ``pipe:`` command (not a file system), or a scheme fsspec does not know.
    """
    text = os.fspath(url)
    kind = scheme(text)
    if kind == "pipe":
        raise ValueError(f"{text!r}: a pipe: command is read with open_url, it is not a file system")
    fsspec = _fsspec()
    try:
        return fsspec.core.url_to_fs(text)
    except ImportError as e:
        package = PACKAGES.get(kind)
        needs = f"the package {package}: pip install {package}" if package else f"another package ({e})"
        raise ImportError(f"{text}: {kind}:// URLs need {needs}") from None
    except ValueError as e:
        if "protocol not known" in str(e).lower():
            known = ", ".join(sorted(fsspec.available_protocols()))
            raise ValueError(f"{text}: fsspec knows no {kind}:// file system (known: {known})") from None
        raise


class PipeReader:
    """The standard output of a shell command, read as a binary file.

    Read to its end, the command's exit status is checked on :meth:`close`: a non-zero status raises
    :class:`PipeError` with the command, the status and the end of its standard error. Closed before the end
    (the reader stopped early), the command is ended and nothing is raised.
    """

    def __init__(self, command: str):
        self.command, self.eof = command, False
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed in close())
        self.process = subprocess.Popen(command, shell=True, stdout=subprocess.PIPE, stderr=self._stderr,
                                        stdin=subprocess.DEVNULL)
        self.closed = False

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes (all of the rest when ``size`` < 0)."""
        assert self.process.stdout is not None
        data = self.process.stdout.read(size)
        if size < 0 or (not data and size != 0):
            self.eof = True
        return data

    def readable(self) -> bool:
        """A pipe is readable."""
        return True

    def close(self) -> None:
        """Closes the pipe; raises :class:`PipeError` when the command, read to its end, failed."""
        if self.closed:
            return
        self.closed = True
        assert self.process.stdout is not None
        self.process.stdout.close()
        if not self.eof and self.process.poll() is None:
            self.process.kill()  # stopped early: the rest is not wanted
        try:
            status = self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            status = self.process.wait()
        self._stderr.seek(0)
        stderr = self._stderr.read()[-500:].decode("utf-8", "replace").strip()
        self._stderr.close()
        if self.eof and status != 0:
            said = f": {stderr}" if stderr else ""
            raise PipeError(f"pipe: command {self.command!r} exited with status {status}{said}")

    def __enter__(self) -> PipeReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_url(url: str | os.PathLike[str], mode: str = "rb") -> IO[Any]:
    """A file object for ``url`` (a local path, a ``file://`` or fsspec URL, or ``pipe:CMD`` for reading),
    to use as a context manager.

    Raises:
        ImportError: fsspec or the scheme's package is missing (named).
        FileNotFoundError: a local or remote file that does not exist (read modes).
        ValueError: ``pipe:`` opened for writing.
    """
    text = os.fspath(url)
    kind = scheme(text)
    if kind == "pipe":
        if mode not in ("r", "rb"):
            raise ValueError(f"{text!r}: pipe: commands are read-only (mode {mode!r})")
        return PipeReader(text[len(PIPE):])  # type: ignore[return-value]
    if kind in ("", "file"):
        return open(local_path(text), mode)
    fs, path = filesystem(text)
    return fs.open(path, mode)


def expand_braces(text: str) -> list[str]:
    """Brace expansion as webdataset's ``braceexpand``: ``a{0..2}`` → ``a0 a1 a2`` (``{000..009}`` keeps the
    padding), ``{train,val}`` → ``train val``; several braces expand left to right."""
    ranges, lists = _RANGE.search(text), _LIST.search(text)
    match = min((m for m in (ranges, lists) if m is not None), key=lambda m: m.start(), default=None)
    if match is None:
        return [text]
    head, tail = text[: match.start()], text[match.end():]
    if match is ranges:
        lo, hi = match.group(1), match.group(2)
        width = len(lo) if lo.startswith("0") else 0
        items = [f"{i:0{width}d}" for i in range(int(lo), int(hi) + 1)]
    else:
        items = match.group(1).split(",")
    return [p for item in items for p in expand_braces(f"{head}{item}{tail}")]


def has_magic(text: str) -> bool:
    """Whether ``text`` holds glob characters (``*``, ``?``, ``[``)."""
    return glob.has_magic(text)


def list_urls(pattern: str | os.PathLike[str]) -> list[str]:
    """The URLs ``pattern`` names: braces expanded, then each glob listed (sorted) on its file system.

    A piece without glob characters is kept as written (not looked up); ``pipe:`` commands are only brace
    expanded. Remote matches keep their scheme (``s3://b/x-*.tar`` → ``s3://b/x-0.tar``, ...).

    Raises:
        ImportError: a remote glob whose file system package is missing.
    """
    urls: list[str] = []
    for piece in expand_braces(os.fspath(pattern)):
        kind = scheme(piece)
        if kind == "pipe" or not has_magic(piece):
            urls.append(piece)
        elif kind in ("", "file"):
            urls.extend(sorted(glob.glob(local_path(piece))))
        else:
            fs, path = filesystem(piece)
            urls.extend(sorted(_unstrip(fs, p) for p in fs.glob(path)))
    return urls


def _unstrip(fs: Any, path: str) -> str:
    """``path`` on ``fs`` as a full URL (``bucket/x.tar`` → ``s3://bucket/x.tar``)."""
    return fs.unstrip_protocol(path)


def join(url: str | os.PathLike[str], *parts: str) -> str:
    """``url`` with ``parts`` appended by ``/`` (``os.path.join`` for local paths)."""
    text = os.fspath(url)
    if not is_remote(text):
        return os.path.join(text, *parts)
    return "/".join([text.rstrip("/"), *(p.strip("/") for p in parts)])


def exists(url: str | os.PathLike[str]) -> bool:
    """Whether a file or folder is at ``url``."""
    if not is_remote(url):
        return os.path.exists(local_path(url))
    fs, path = filesystem(url)
    return bool(fs.exists(path))


def isdir(url: str | os.PathLike[str]) -> bool:
    """Whether ``url`` is a folder (on object stores: a prefix with objects under it)."""
    if not is_remote(url):
        return os.path.isdir(local_path(url))
    fs, path = filesystem(url)
    return bool(fs.isdir(path))


def makedirs(url: str | os.PathLike[str]) -> None:
    """Creates the folder ``url`` and its parents (no-op where it exists, and on object stores without folders)."""
    if not is_remote(url):
        Path(local_path(url)).mkdir(parents=True, exist_ok=True)
        return
    fs, path = filesystem(url)
    fs.makedirs(path, exist_ok=True)


def read_bytes(url: str | os.PathLike[str]) -> bytes:
    """The whole content of ``url`` (``pipe:`` too).

    Raises:
        FileNotFoundError: no such file.
    """
    with open_url(url, "rb") as f:
        return f.read()


def write_bytes(url: str | os.PathLike[str], data: bytes) -> None:
    """Writes ``data`` to ``url`` whole: a local file is written beside and renamed into place, so a reader
    never sees half of it; a remote object is one upload (``fs.pipe_file``), which object stores make atomic."""
    if not is_remote(url):
        path = Path(local_path(url))
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return
    if scheme(url) == "pipe":
        raise ValueError(f"{os.fspath(url)!r}: pipe: commands are read-only")
    fs, path_in = filesystem(url)
    parent = path_in.rsplit("/", 1)[0]
    if parent and parent != path_in:
        with contextlib.suppress(Exception):  # object stores have no folders; local-like ones need them
            fs.makedirs(parent, exist_ok=True)
    fs.pipe_file(path_in, data)

