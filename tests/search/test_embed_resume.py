"""``clipforge embed`` as separate processes: killed with SIGKILL mid-run and restarted it ends with the files of an
uninterrupted run; two torchrun ranks write the rows of one process; the worker count changes no row."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clipforge.search.collection import part_name
from conftest import write_photos

# The verb as a command line, whether or not cli/main.py lists it yet.
RUNNER = """import sys
import clipforge.cli.main as entry
if "clipforge.cli.embed" not in entry.VERB_MODULES:
    entry.VERB_MODULES.append("clipforge.cli.embed")
sys.exit(entry.main(sys.argv[1:]))
"""
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def runner(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("runner") / "clipforge_cli.py"
    path.write_text(RUNNER)
    return path


@pytest.fixture(scope="module")
def many_photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """240 small JPEGs with captions: 12 parts of 20, enough work that a kill lands mid-run."""
    folder = tmp_path_factory.mktemp("many")
    for start in range(0, 240, 60):
        write_photos(folder, 60, captions=True, first=start)
    return folder


def command(runner: Path, model: Path, data: Path, out: Path, workers: int) -> list[str]:
    return [sys.executable, str(runner), "embed", "--model", str(model), "--data", str(data), "--output", str(out),
            "--part-size", "20", "--batch-size", "3", "--texts", "--workers", str(workers), "--device", "cpu",
            "--no-progress"]


def files(out: Path) -> dict[str, bytes]:
    """Every file of a collection but its timings (stats.json; the ``seconds`` of part markers)."""
    found = {}
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        name = str(path.relative_to(out))
        if name == "stats.json":
            continue
        data = path.read_bytes()
        if name.startswith("parts/"):
            marker = json.loads(data)
            marker.pop("seconds")
            data = json.dumps(marker, sort_keys=True).encode()
        found[name] = data
    return found


def kill_after_markers(argv: list[str], out: Path, markers: int) -> int:
    """Starts ``argv``, SIGKILLs it as soon as ``out`` holds ``markers`` part markers; returns how many it holds."""
    process = subprocess.Popen(argv, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while process.poll() is None and time.monotonic() < deadline:
            if len(list((out / "parts").glob("part_*.json"))) >= markers:
                break
            time.sleep(0.002)
        assert process.poll() is None, "the run finished before it could be killed"
        process.send_signal(signal.SIGKILL)
        process.wait()
    finally:
        if process.poll() is None:
            process.kill()
    return len(list((out / "parts").glob("part_*.json")))


def test_kill_9_then_the_same_command_ends_with_the_uninterrupted_files(tmp_path, runner, tiny_model_dir,
                                                                         many_photos):
    reference = tmp_path / "reference"
    subprocess.run(command(runner, tiny_model_dir, many_photos, reference, workers=2), env=ENV, check=True)
    out = tmp_path / "resumed"
    first = kill_after_markers(command(runner, tiny_model_dir, many_photos, out, workers=0), out, 1)
    assert 1 <= first < 12
    assert not json.loads((out / "embed.json").read_text())["complete"]
    second = kill_after_markers(command(runner, tiny_model_dir, many_photos, out, workers=1), out, first + 1)
    assert first < second < 12  # the rerun skipped what was done and was killed again part-way
    done = subprocess.run(command(runner, tiny_model_dir, many_photos, out, workers=1), env=ENV, check=True,
                          capture_output=True, text=True)
    assert "embedded 240 of 240 inputs" in done.stdout and f"{240 - 20 * second} this run" in done.stdout
    expected, got = files(reference), files(out)
    assert sorted(got) == sorted(expected)  # no leftover temporary file, no missing part
    assert [name for name in expected if got[name] != expected[name]] == []  # byte for byte


@pytest.mark.distributed
def test_two_torchrun_ranks_write_the_rows_of_one_process(tmp_path, runner, tiny_model_dir, many_photos):
    data = tmp_path / "data"
    data.mkdir()
    for path in sorted(many_photos.iterdir())[:100]:  # 50 images and their captions: 3 parts
        (data / path.name).write_bytes(path.read_bytes())
    single, double = tmp_path / "one", tmp_path / "two"
    subprocess.run(command(runner, tiny_model_dir, data, single, workers=0), env=ENV, check=True)
    launched = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                               *command(runner, tiny_model_dir, data, double, workers=1)[1:]],
                              env=ENV, capture_output=True, text=True, timeout=300)
    assert launched.returncode == 0, launched.stderr[-2000:]
    assert launched.stdout.count("embedded 50 of 50 inputs") == 1  # rank 0 reports, once
    assert files(double) == files(single)
    stats = json.loads((double / "stats.json").read_text())
    assert stats["world_size"] == 2 and stats["embedded"] == 50 and stats["parts"] == 3
    assert all((double / part_name(kind, k)).is_file() for kind in ("image", "text", "metadata") for k in range(3))
