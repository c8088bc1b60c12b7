"""The shard writer and ``clipforge data``: img2dataset layout, stats, round trip into training, exact resume."""

from __future__ import annotations

import json
import shutil
import tarfile

import pytest

from clipforge.cli.main import main
from clipforge.data.shards import inspect_shards
from clipforge.data.webdataset import iter_tar_samples
from clipforge.train import Runtime, load_config, parse_overrides, train
from clipforge.train.checkpoint import load_checkpoint
from clipforge.train.metrics import read_metrics
from helpers.shards import TINY
from helpers.tables import GOOD, ROWS, write_table


def synthetic_shards(out, count: int = 60, shard_size: int = 16) -> dict:
    assert main(["data", "shards", "synthetic", str(out), "--count", str(count), "--shard-size", str(shard_size),
                 "--captions", "2", "--image-size", "32", "--quiet"]) == 0
    return json.loads((out / "stats.json").read_text())


def test_synthetic_world_to_shards_in_img2dataset_layout(tmp_path, capsys):
    stats = synthetic_shards(tmp_path / "out")
    assert "wrote 60 samples in 4 shard(s)" in capsys.readouterr().out
    assert [s["name"] for s in stats["shards"]] == ["00000.tar", "00001.tar", "00002.tar", "00003.tar"]
    assert [s["samples"] for s in stats["shards"]] == [16, 16, 16, 12] and stats["samples"] == 60
    assert stats["skipped"] == {} and stats["image_bytes"] > 0
    with tarfile.open(tmp_path / "out/00001.tar") as tar:
        names = tar.getnames()
    assert names[:3] == ["0000100.jpg", "0000100.txt", "0000100.json"]  # shard 00001, sample 00
    samples = list(iter_tar_samples([tmp_path / "out/00001.tar"]))
    meta = json.loads(samples[0]["json"])
    assert meta["key"] == "0000100" and meta["width"] == 32 and meta["source"] == "synthetic:16"
    assert len(samples[0]["txt"].decode().splitlines()) == 2  # two captions, one per line
    assert samples[0]["txt"].decode().splitlines()[0] == meta["caption"]
    assert inspect_shards(str(tmp_path / "out"))["usable"] == 60


def test_table_to_shards_counts_skips_and_resizes(tmp_path, capsys):
    path = write_table(tmp_path)
    out = tmp_path / "out"
    assert main(["data", "shards", str(path), str(out), "--shard-size", "4", "--image-key", "img",
                 "--caption-key", "text", "--resize", "24", "--quiet"]) == 0
    stats = json.loads((out / "stats.json").read_text())
    assert stats["inputs"] == len(ROWS) and stats["samples"] == GOOD
    assert stats["skipped"] == {"bad_text": 1, "no_caption": 1, "no_image": 1, "not_image": 1}
    # Inputs 0-3 → shard 0, 4-7 → shard 1 (4, 5 good), 8-9 → shard 2 (all bad: not written).
    assert [(s["name"], s["samples"]) for s in stats["shards"]] == [("00000.tar", 4), ("00001.tar", 2)]
    assert sorted(p.name for p in out.glob("*.tar")) == ["00000.tar", "00001.tar"]
    samples = list(iter_tar_samples(sorted(out.glob("*.tar"))))
    assert [s["__key__"] for s in samples] == ["000000", "000001", "000002", "000003", "000010", "000011"]
    metas = [json.loads(s["json"]) for s in samples]
    assert [(m["width"], m["height"], m["original_width"]) for m in metas] == [(24, 29, 40)] * GOOD
    assert [m["source"] for m in metas] == [f"{path}:{i}" for i in range(GOOD)]  # the table and its row
    assert "skipped 4" in capsys.readouterr().out


def test_parallel_writers_write_the_same_shards(tmp_path):
    path = write_table(tmp_path)
    for workers in (1, 3):
        assert main(["data", "shards", str(path), str(tmp_path / f"out{workers}"), "--shard-size", "3",
                     "--image-key", "img", "--caption-key", "text", "--workers", str(workers), "--quiet"]) == 0
    one, three = (json.loads((tmp_path / f"out{w}/stats.json").read_text()) for w in (1, 3))
    assert {**one, "seconds": 0} == {**three, "seconds": 0} and len(one["shards"]) == 2  # inputs 6-9: all bad
    for shard in one["shards"]:
        assert (tmp_path / "out1" / shard["name"]).read_bytes() == (tmp_path / "out3" / shard["name"]).read_bytes()


def test_folder_to_shards_keeps_original_bytes(tmp_path):
    from test_data_sources import image_bytes

    (tmp_path / "src").mkdir()
    data = image_bytes(3, fmt="PNG")
    (tmp_path / "src/a.png").write_bytes(data)
    (tmp_path / "src/a.txt").write_text("a png")
    assert main(["data", "shards", str(tmp_path / "src"), str(tmp_path / "out"), "--shard-size", "8", "--quiet"]) == 0
    (sample,) = iter_tar_samples([tmp_path / "out/00000.tar"])
    assert sample["png"] == data and sample["txt"] == b"a png"


@pytest.mark.parametrize(("args", "message"), [
    (["data", "shards", "no/such.csv", "OUT"], "no such file or folder: no/such.csv"),
    (["data", "shards", "synthetic", "OUT", "--shard-size", "0"], "argument --shard-size: expected a whole number ≥ 1"),
    (["data", "shards", "synthetic", "OUT", "--max-pixels", "0"], "argument --max-pixels: expected a whole number ≥ 1"),
    (["data", "stats", "no/{0..2}.tar"], "no tar shards found"),
    (["data", "shards", "TABLE", "OUT", "--image-key", "path"],
     "SRC: TABLE has no column(s) ['path', 'caption']; its columns: ['id', 'img', 'text'] "
     "(set --image-key / --caption-key)"),
    (["data", "shards", "TABLE", "OUT", "--from", "folder"], "SRC: a folder data source needs an existing folder"),
    (["data", "shards", "SHARDS", "OUT"], "is tar shards already"),
    (["data", "shards", "NOTES", "OUT"], "not a folder, a table (.csv, .txt, .tsv, .tab, .parquet, .pq) or a .tar"),
])
def test_cli_errors_are_one_line(tmp_path, capsys, args, message):
    from helpers.shards import write_good_shards

    table, notes = write_table(tmp_path), tmp_path / "notes.json"
    notes.write_text("{}")
    write_good_shards(tmp_path / "shards", 1, 1)
    paths = {"OUT": tmp_path / "out", "TABLE": table, "SHARDS": tmp_path / "shards", "NOTES": notes}
    args = [str(paths.get(a, a)) for a in args]
    message = message.replace("TABLE", str(table))
    try:
        status = main(args)
    except SystemExit as e:  # flags are checked by argparse, which exits with the status itself
        status = e.code
    assert status == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and err.startswith(f"clipforge {args[0]}")
    assert ": error: " in err


def test_writer_refuses_to_mix_with_existing_shards(tmp_path, capsys):
    synthetic_shards(tmp_path / "out", count=4)
    assert main(["data", "shards", "synthetic", str(tmp_path / "out"), "--count", "4", "--quiet"]) == 2
    assert "already holds .tar shards" in capsys.readouterr().err


def test_stats_verb_prints_counts(tmp_path, capsys):
    synthetic_shards(tmp_path / "out", count=20, shard_size=8)
    capsys.readouterr()
    assert main(["data", "stats", f"{tmp_path}/out/{{00000..00002}}.tar"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["shards"] == 3 and stats["samples"] == stats["usable"] == 20 and stats["skipped"] == {}


def test_written_shards_train_and_resume_exactly(tmp_path, one_thread):
    """Shards from the synthetic world train through ``clipforge.train``; a run resumed from its step-3
    checkpoint ends with the same weights and data position as the uninterrupted run."""
    synthetic_shards(tmp_path / "shards", count=48, shard_size=8)
    args = [*TINY, "data.kind=shards", f"data.urls={tmp_path}/shards/{{00000..00005}}.tar", "data.interleave=2",
            "steps=6", "batch_size=8", "log_every=3", "checkpoint_every=3", "keep_checkpoints=3"]
    full = train(load_config(None, parse_overrides([*args, f"output_dir={tmp_path / 'full'}"])), Runtime())
    records = [r for r in read_metrics(tmp_path / "full/metrics.jsonl") if "loss" in r]
    assert [r["data/used"] for r in records] == [24, 48] and all(r["data/skipped"] == 0 for r in records)

    (tmp_path / "resumed/checkpoints").mkdir(parents=True)
    shutil.copy(tmp_path / "full/checkpoints/step_00000003.pt", tmp_path / "resumed/checkpoints")
    config = load_config(None, parse_overrides([*args, f"output_dir={tmp_path / 'resumed'}"]))
    resumed = train(config, Runtime(), resume=str(tmp_path / "resumed/checkpoints/step_00000003.pt"))
    assert resumed.step == 6
    a, b = load_checkpoint(full.checkpoint), load_checkpoint(resumed.checkpoint)
    assert a["data"]["ranks"] == b["data"]["ranks"]  # the same position and counts
    assert a["data"]["ranks"][0]["used"] == 48
    for name, value in a["model"].items():
        assert (value - b["model"][name]).abs().max().item() <= 1e-6, name


def test_the_writer_itself_refuses_sizes_the_cli_cannot_pass(tmp_path):
    """The command line refuses them first (argparse); the API keeps its own check."""
    from clipforge.data.decode import DecodeLimits
    from clipforge.data.writer import write_shards

    with pytest.raises(ValueError, match="--shard-size and --workers must be positive"):
        write_shards(lambda i: (b"", "", {}), 1, tmp_path / "out", shard_size=0)
    with pytest.raises(ValueError, match="max_pixels and min_side must be positive"):
        DecodeLimits(max_pixels=0).validate()
