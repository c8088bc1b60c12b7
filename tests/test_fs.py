"""clipforge.fs: local paths, fsspec URLs and pipe: commands behind one set of helpers; missing packages named."""

from __future__ import annotations

import sys
import time
import uuid

import pytest

from clipforge import fs

fsspec = pytest.importorskip("fsspec")


@pytest.fixture
def memory_root():
    """A fresh folder of fsspec's (process-wide) memory file system, removed afterwards."""
    root = f"memory://test-fs-{uuid.uuid4().hex[:8]}"
    yield root
    memory = fsspec.filesystem("memory")
    if memory.exists(root[len("memory://"):]):
        memory.rm(root[len("memory://"):], recursive=True)


@pytest.mark.parametrize(("path", "remote", "kind"), [
    ("data/00000.tar", False, ""), ("/abs/x.tar", False, ""), ("C:\\data\\x.tar", False, ""),
    ("file:///data/x.tar", False, "file"), ("s3://bucket/x.tar", True, "s3"), ("gs://b/x", True, "gs"),
    ("hf://datasets/org/name/x.tar", True, "hf"), ("memory://x.tar", True, "memory"),
    ("pipe:cat x.tar", True, "pipe"), ("simplecache::s3://b/x", True, "simplecache"),
])
def test_is_remote_and_scheme(path, remote, kind):
    assert fs.is_remote(path) is remote
    assert fs.scheme(path) == kind


def test_local_path_of_file_urls():
    assert fs.local_path("file:///data/a%20b.tar") == "/data/a b.tar"
    assert fs.local_path("rel/x.tar") == "rel/x.tar"
    with pytest.raises(ValueError, match="not a local path"):
        fs.local_path("s3://b/x")


def test_brace_expansion_as_webdataset():
    assert fs.expand_braces("s3://b/shard-{000000..000002}.tar") == [
        "s3://b/shard-000000.tar", "s3://b/shard-000001.tar", "s3://b/shard-000002.tar"]
    assert fs.expand_braces("{train,val}/{8..10}.tar") == ["train/8.tar", "train/9.tar", "train/10.tar",
                                                          "val/8.tar", "val/9.tar", "val/10.tar"]
    assert fs.expand_braces("plain.tar") == ["plain.tar"]


def test_memory_urls_write_read_list_exist(memory_root):
    assert not fs.exists(f"{memory_root}/a/0.bin")
    fs.makedirs(f"{memory_root}/a")
    for i in range(3):
        fs.write_bytes(f"{memory_root}/a/{i}.bin", bytes([i]) * 4)
    fs.write_bytes(f"{memory_root}/a/other.txt", b"x")
    assert fs.read_bytes(f"{memory_root}/a/1.bin") == b"\x01" * 4
    assert fs.exists(f"{memory_root}/a/2.bin") and fs.isdir(f"{memory_root}/a")
    listed = fs.list_urls(f"{memory_root}/a/*.bin")
    assert [u.rsplit("/", 1)[1] for u in listed] == ["0.bin", "1.bin", "2.bin"]
    assert all(u.startswith("memory://") and fs.read_bytes(u) for u in listed)  # listed URLs keep their scheme
    assert fs.list_urls(f"{memory_root}/a/{{0..1}}.bin") == [f"{memory_root}/a/0.bin", f"{memory_root}/a/1.bin"]
    with fs.open_url(f"{memory_root}/a/0.bin") as f:
        assert f.read() == b"\x00" * 4
    with pytest.raises(FileNotFoundError):
        fs.read_bytes(f"{memory_root}/a/missing.bin")


def test_local_and_file_urls_need_no_fsspec(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "fsspec", None)  # import fsspec now fails
    target = tmp_path / "deep/er/x.bin"
    fs.write_bytes(target, b"one")
    fs.write_bytes(f"file://{target}", b"two")  # replaced whole, nothing left beside it
    assert fs.read_bytes(target) == b"two" and sorted(p.name for p in target.parent.iterdir()) == ["x.bin"]
    fs.makedirs(tmp_path / "made/here")
    assert fs.exists(f"file://{tmp_path}/made/here") and fs.isdir(tmp_path / "made")
    assert fs.list_urls(f"{tmp_path}/deep/er/*.bin") == [str(target)]
    assert fs.join(tmp_path, "a", "b") == str(tmp_path / "a" / "b")
    assert fs.join("s3://bucket/run/", "checkpoints", "step_1") == "s3://bucket/run/checkpoints/step_1"
    with pytest.raises(ImportError, match=r"pip install 'clipforge\[remote\]'"):
        fs.read_bytes("memory://x.bin")


def test_pipe_gives_the_commands_output(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"payload" * 1000)
    assert fs.read_bytes(f"pipe:cat {tmp_path / 'a.bin'}") == b"payload" * 1000
    assert fs.list_urls(f"pipe:cat {tmp_path}/{{0..1}}.tar") == [f"pipe:cat {tmp_path}/0.tar",
                                                                 f"pipe:cat {tmp_path}/1.tar"]


def test_a_failing_pipe_names_the_command_and_its_status(tmp_path):
    missing = tmp_path / "missing.tar"
    with pytest.raises(fs.PipeError, match=rf"'cat {missing}' exited with status 1: cat: .*No such file"):
        fs.read_bytes(f"pipe:cat {missing}")
    with pytest.raises(fs.PipeError, match="'exit 3' exited with status 3"):
        fs.read_bytes("pipe:exit 3")
    with pytest.raises(ValueError, match="read-only"):
        fs.open_url("pipe:cat x", "wb")


def test_a_pipe_closed_early_ends_its_command_quietly():
    reader = fs.open_url("pipe:yes")  # endless output
    with reader as f:
        assert f.read(4) == b"y\ny\n"
    deadline = time.monotonic() + 10
    while reader.process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert reader.process.returncode is not None  # ended, and no error raised for it


def test_missing_file_system_packages_are_named(monkeypatch):
    registry = sys.modules["fsspec.registry"]._registry
    for scheme, module in [("s3", "s3fs"), ("gs", "gcsfs")]:
        monkeypatch.setitem(sys.modules, module, None)  # as if not installed, even where it is
        monkeypatch.delitem(registry, scheme, raising=False)
        with pytest.raises(ImportError, match=rf"{scheme}:// URLs need the package {module}: pip install {module}"):
            fs.filesystem(f"{scheme}://bucket/x.tar")
        with pytest.raises(ImportError, match=module):
            fs.open_url(f"{scheme}://bucket/x.tar")
    with pytest.raises(ValueError, match="fsspec knows no nosuch:// file system"):
        fs.exists("nosuch://x")
