"""CLI mistakes in ``eval``, ``classify``, ``convert`` and ``data`` (issue #17, class 9): each is refused before any
work with exit status 2 and one line on stderr that names the argument and what is allowed, never a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import clipforge
from clipforge.checkpoints import CheckpointError
from clipforge.checkpoints.native import save_pretrained
from clipforge.cli.eval import load_eval_model
from clipforge.cli.main import build_parser, main


def run_mistake(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Runs the CLI; checks exit status 2, one stderr line, no traceback; returns the line."""
    capsys.readouterr()
    try:
        status = main(argv)
    except SystemExit as e:  # argparse refuses while parsing
        status = e.code
    err = capsys.readouterr().err
    assert status == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    line = err.strip()
    assert line.startswith(f"clipforge {argv[0]}") and ": error: " in line, line
    return line


ZS = ["eval", "zeroshot", "--model", "tiny-vit", "--data", "DATA"]
RT = ["eval", "retrieval", "--model", "tiny-vit", "--data", "DATA"]
LP = ["eval", "linear-probe", "--model", "tiny-vit", "--data", "DATA", "--train-data", "DATA"]
CL = ["classify", "IMAGE", "--labels", "a,b", "--model", "tiny-vit"]
SH = ["data", "shards", "synthetic", "OUT"]

# (argv, the flag, what the message says is allowed)
ARGPARSE_MISTAKES = [
    ([*ZS, "--batch-size", "0"], "--batch-size", "a whole number ≥ 1, got 0"),
    ([*ZS, "--batch-size", "-3"], "--batch-size", "a whole number ≥ 1, got -3"),
    ([*ZS, "--batch-size", "many"], "--batch-size", "a whole number ≥ 1, got 'many'"),
    ([*RT, "--batch-size", "0"], "--batch-size", "a whole number ≥ 1"),
    ([*RT, "--chunk", "0"], "--chunk", "a whole number in 1..65536, got 0"),
    ([*RT, "--chunk", "10000000"], "--chunk", "a whole number in 1..65536"),
    ([*RT, "--recall-k", "0"], "--recall-k", "comma-separated whole numbers ≥ 1, got '0'"),
    ([*RT, "--recall-k", "1,,5"], "--recall-k", "comma-separated whole numbers ≥ 1"),
    ([*RT, "--recall-k", "top5"], "--recall-k", "comma-separated whole numbers ≥ 1"),
    ([*LP, "--val-fraction", "1.5"], "--val-fraction", "a number in (0, 1), got 1.5"),
    ([*LP, "--val-fraction", "0"], "--val-fraction", "a number in (0, 1)"),
    ([*LP, "--val-fraction", "nan"], "--val-fraction", "a number in (0, 1)"),
    ([*LP, "--C", "-1"], "--C", "a number > 0, got -1"),
    ([*LP, "--C", "0"], "--C", "a number > 0"),
    ([*LP, "--C", "inf"], "--C", "a number > 0"),
    ([*LP, "--k-shot", "0"], "--k-shot", "a whole number ≥ 1"),
    ([*LP, "--seed", "-1"], "--seed", "a whole number ≥ 0"),
    ([*LP, "--batch-size", "-1"], "--batch-size", "a whole number ≥ 1"),
    ([*CL, "--top-k", "0"], "--top-k", "a whole number ≥ 1, got 0"),
    ([*CL, "--batch-size", "0"], "--batch-size", "a whole number ≥ 1"),
    ([*SH, "--resize", "0"], "--resize", "a whole number ≥ 1, got 0"),
    ([*SH, "--resize", "-5"], "--resize", "a whole number ≥ 1"),
    ([*SH, "--shard-size", "0"], "--shard-size", "a whole number ≥ 1"),
    ([*SH, "--workers", "0"], "--workers", "a whole number in 1..256"),
    ([*SH, "--workers", "100000"], "--workers", "a whole number in 1..256"),
    ([*SH, "--count", "0"], "--count", "a whole number ≥ 1"),
    ([*SH, "--captions", "0"], "--captions", "a whole number in 1..100"),
    ([*SH, "--captions", "1000000"], "--captions", "a whole number in 1..100"),
    ([*SH, "--image-size", "8"], "--image-size", "a whole number in 16..1024"),
    ([*SH, "--max-pixels", "0"], "--max-pixels", "a whole number ≥ 1"),
    ([*SH, "--seed", "-1"], "--seed", "a whole number ≥ 0"),
    (["data", "stats", "SHARDS", "--max-pixels", "-5"], "--max-pixels", "a whole number ≥ 1"),
]


@pytest.mark.parametrize(("argv", "flag", "allowed"), ARGPARSE_MISTAKES,
                         ids=[" ".join(a[1:2] + a[-2:]) for a, _, _ in ARGPARSE_MISTAKES])
def test_out_of_range_flags_are_one_line_errors(argv: list[str], flag: str, allowed: str, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    argv = [str(tmp_path / a) if a in ("DATA", "IMAGE", "OUT", "SHARDS") else a for a in argv]
    line = run_mistake(argv, capsys)
    assert f"argument {flag}: expected {allowed}" in line, line
    assert not (tmp_path / "OUT").exists()  # refused before any work


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_pretrained(clipforge.create_model("tiny-vit"), tmp_path_factory.mktemp("m") / "model")


@pytest.mark.parametrize("existing", ["file", "folder"])
def test_convert_refuses_an_existing_destination(existing: str, tiny_dir: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    dst = tmp_path / "out.safetensors"
    if existing == "file":
        dst.write_bytes(b"precious")
    else:
        dst.mkdir()
        (dst / "notes.txt").write_text("precious")
    line = run_mistake(["convert", str(tiny_dir), str(dst), "--to", "open_clip"], capsys)
    assert f"DST {str(dst)!r} exists" in line and "--overwrite" in line
    assert (dst.read_bytes() if existing == "file" else (dst / "notes.txt").read_bytes()) == b"precious"


def test_convert_overwrite_replaces_and_never_onto_the_source(tiny_dir: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    dst = tmp_path / "out.safetensors"
    dst.write_bytes(b"old")
    assert main(["convert", str(tiny_dir), str(dst), "--to", "open_clip", "--overwrite"]) == 0
    assert dst.stat().st_size > 1000
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["convert", str(tiny_dir), str(empty), "--to", "clipforge"]) == 0  # an empty folder is new
    for dst_path in (tiny_dir, tiny_dir.parent):
        line = run_mistake(["convert", str(tiny_dir), str(dst_path), "--to", "clipforge", "--overwrite"], capsys)
        assert "would overwrite the input" in line


@pytest.mark.parametrize("kind", ["classnames", "templates", "labels-file", "json"])
def test_a_binary_or_broken_list_file_names_the_file(kind: str, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / ("names.json" if kind == "json" else "names.txt")
    bad.write_bytes(b'["cat", "dog"' if kind == "json" else b"\x89PNG\r\n\x1a\n\xff\xfe\x00binary")
    image = tmp_path / "img.png"
    image.write_bytes(b"")
    argv = {
        "classnames": [*ZS, "--classnames", str(bad)],
        "json": [*ZS, "--classnames", str(bad)],
        "templates": [*ZS, "--classnames", "cifar10", "--templates", str(bad)],
        "labels-file": ["classify", str(image), "--labels-file", str(bad), "--model", "tiny-vit"],
    }[kind]
    argv = [str(tmp_path) if a == "DATA" else a for a in argv]
    line = run_mistake([*argv, "--device", "cpu"] + (["--no-progress"] if argv[0] == "eval" else []), capsys)
    assert str(bad) in line and ("not a UTF-8 text file" in line or "not valid JSON" in line), line
    assert "codec can't decode" not in line


def test_eval_and_classify_have_the_allow_pickle_flag_the_error_suggests(tiny_dir: Path, tmp_path: Path) -> None:
    pickled = tmp_path / "open_clip_model.bin"
    assert main(["convert", str(tiny_dir), str(pickled), "--to", "open_clip"]) == 0
    with pytest.raises(CheckpointError, match="--allow-pickle"):
        load_eval_model(str(pickled), "cpu")
    model, _, _ = load_eval_model(str(pickled), "cpu", allow_pickle=True)
    assert isinstance(model.encode_texts(["a cat"]), torch.Tensor)
    for argv in ([*ZS, "--allow-pickle"], [*CL, "--allow-pickle"]):
        assert build_parser().parse_args(argv).allow_pickle is True


def test_list_file_size_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from clipforge.eval import prompts

    monkeypatch.setattr(prompts, "MAX_LIST_BYTES", 10)
    path = tmp_path / "names.txt"
    path.write_text(json.dumps(["x"] * 10))
    with pytest.raises(ValueError, match="names.txt: a class names file must be at most"):
        prompts.load_classnames(path)
