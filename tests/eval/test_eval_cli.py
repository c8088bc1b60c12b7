"""End to end: ``clipforge eval zeroshot|retrieval|linear-probe`` and ``clipforge classify`` on a tiny random model."""

from __future__ import annotations

import argparse
import json

import pytest

from clipforge.cli import classify as classify_cli
from clipforge.cli import eval as eval_cli
from helpers.fakes import COLOURS, solid

PRESET = "tiny-vit"


def run(argv: list[str]) -> int:
    """Parses like ``clipforge`` (``clipforge.cli.main``) with the eval and classify verbs registered."""
    parser = argparse.ArgumentParser(prog="clipforge")
    sub = parser.add_subparsers(dest="verb")
    eval_cli.register(sub)
    classify_cli.register(sub)
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("colours")
    for c in COLOURS:
        (root / c).mkdir()
        for i in range(3):
            solid(c, 24 + 8 * i).save(root / c / f"{i}.png")
    (root / "red" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    rows = ["filepath,caption"] + [f"{c}/{i}.png,a {c} square" for c in COLOURS for i in range(3)]
    rows += ["red/0.png,something red", "red/broken.jpg,broken"]
    (root / "captions.csv").write_text("\n".join(rows) + "\n")
    (root / "templates.txt").write_text("a photo of a {}.\na {} thing.\n")
    return root


def test_eval_zeroshot(folder, tmp_path) -> None:
    out = tmp_path / "zs.json"
    assert run(["eval", "zeroshot", "--model", PRESET, "--data", str(folder), "--templates",
                str(folder / "templates.txt"), "--output", str(out), "--cache-dir", str(tmp_path / "cache"),
                "--batch-size", "4", "--no-progress", "--device", "cpu"]) == 0
    r = json.loads(out.read_text())
    assert r["task"] == "zeroshot_classification" and r["model"] == PRESET and r["pretrained"] == "random"
    assert set(r["metrics"]) == {"acc1", "acc5", "mean_per_class_recall"}
    assert 0 <= r["metrics"]["acc1"] <= 1 and r["metrics"]["acc5"] is None  # 3 classes
    assert r["data"]["n_samples"] == 9 and r["data"]["n_skipped"] == 1
    assert r["data"]["skipped"][0]["source"].endswith("broken.jpg")
    assert (tmp_path / "zs_confusion.png").read_bytes()[:4] == b"\x89PNG"
    assert len(list((tmp_path / "cache" / "zeroshot").glob("*.npy"))) == 1


def test_eval_retrieval(folder, tmp_path) -> None:
    out = tmp_path / "rt.json"
    assert run(["eval", "retrieval", "--model", PRESET, "--data", str(folder / "captions.csv"), "--output",
                str(out), "--no-progress", "--device", "cpu"]) == 0
    r = json.loads(out.read_text())
    assert r["task"] == "zeroshot_retrieval"
    for k in (1, 5, 10):
        assert 0 <= r["metrics"][f"image_retrieval_recall@{k}"] <= 1
        assert 0 <= r["metrics"][f"text_retrieval_recall@{k}"] <= 1
    assert r["metrics"]["text_retrieval_recall@10"] == 1.0  # 10 captions in all: every image's are in the top 10
    assert r["data"]["n_samples"] == 9 and r["n_texts"] == 10 and r["data"]["n_skipped"] == 1


def test_eval_linear_probe(folder, tmp_path) -> None:
    out = tmp_path / "lp.json"
    argv = ["eval", "linear-probe", "--model", PRESET, "--train-data", str(folder), "--data", str(folder),
            "--output", str(out), "--cache-dir", str(tmp_path / "cache"), "--backend", "torch", "--no-progress",
            "--device", "cpu"]
    assert run(argv) == 0
    r = json.loads(out.read_text())
    assert r["task"] == "linear_probe" and r["C"] > 0
    assert r["metrics"]["lp_acc1"] == 1.0  # solid colours are linearly separable even with random features
    assert len(list((tmp_path / "cache" / "features").glob("*.npz"))) == 1  # one folder, cached once


def test_classify(folder, capsys) -> None:
    assert run(["classify", str(folder / "red" / "0.png"), str(folder / "blue"), "--labels", "red,green,blue",
                "--model", PRESET, "--top-k", "2", "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith("0.png") and len(lines) == 4 * 3
    probs = [float(line.split("%")[0]) for line in lines if line.startswith("  ")]
    assert all(0 <= p <= 100 for p in probs)
    assert all(line.split()[-1] in COLOURS for line in lines if line.startswith("  "))


def test_bad_input_gives_clear_errors(folder, tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="model not found"):
        run(["eval", "zeroshot", "--model", "no-such-model", "--data", str(folder)])
    with pytest.raises(FileNotFoundError, match="dataset not found"):
        run(["eval", "zeroshot", "--model", PRESET, "--data", str(tmp_path / "missing")])
    with pytest.raises(ValueError, match=r"has no column\(s\) \['caption'\]"):
        (tmp_path / "l.csv").write_text("filepath,label\nred/0.png,0\n")
        run(["eval", "retrieval", "--model", PRESET, "--data", str(tmp_path / "l.csv")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images found"):
        run(["classify", str(tmp_path / "empty"), "--labels", "a,b", "--model", PRESET])
    with pytest.raises(FileNotFoundError, match="image not found"):
        run(["classify", str(tmp_path / "nope.png"), "--labels", "a,b", "--model", PRESET])
    with pytest.raises(ValueError, match="repeated label"):
        run(["classify", str(folder / "red"), "--labels", "a,a", "--model", PRESET])


def test_table_flags_old_and_new_spellings(folder, tmp_path) -> None:
    """``--image-key/--label-key/--caption-key`` (training's names) and the older ``--image-col/--label-col/
    --caption-col`` set the same columns; the defaults are training's (filepath, label, caption)."""
    rows = ["img,y,text"] + [f"{folder}/{c}/{i}.png,{c},a {c} square" for c in COLOURS for i in range(3)]
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    for spelling in ("key", "col"):
        out = tmp_path / f"zs_{spelling}.json"
        assert run(["eval", "zeroshot", "--model", PRESET, "--data", str(tmp_path / "t.csv"), f"--image-{spelling}",
                    "img", f"--label-{spelling}", "y", "--output", str(out), "--cache-dir", str(tmp_path / "c"),
                    "--no-progress", "--device", "cpu"]) == 0
        assert json.loads(out.read_text())["data"]["n_samples"] == 9
        out = tmp_path / f"rt_{spelling}.json"
        assert run(["eval", "retrieval", "--model", PRESET, "--data", str(tmp_path / "t.csv"), f"--image-{spelling}",
                    "img", f"--caption-{spelling}", "text", "--output", str(out), "--no-progress",
                    "--device", "cpu"]) == 0
        assert json.loads(out.read_text())["n_texts"] == 9
    parser = argparse.ArgumentParser()
    eval_cli.register(parser.add_subparsers())
    args = parser.parse_args(["eval", "retrieval", "--model", "m", "--data", "d"])
    assert (args.image_key, args.caption_key, args.alpha) == ("filepath", "caption", "white")


def test_bad_captions_in_an_eval_table_are_counted_not_fatal(folder, tmp_path) -> None:
    from clipforge.eval.datasets import CsvDataset

    (tmp_path / "c.csv").write_bytes(f"filepath,caption\n{folder}/red/0.png,caf\xe9 rouge\n".encode("latin-1")
                                     + f"{folder}/red/0.png,red\n{folder}/blue/0.png,\n".encode())
    ds = CsvDataset(tmp_path / "c.csv", caption_col="caption")
    samples = list(ds)
    assert [s.captions for s in samples] == [["red"]]  # the latin-1 caption and the blank one are skipped
    assert ds.skip_counts() == {"bad_text": 1, "no_caption": 2}  # two bad cells, and blue/0.png left without any
