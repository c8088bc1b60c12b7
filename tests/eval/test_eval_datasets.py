"""Eval datasets written on the spot: image folders, CSV/TSV, CLIP_benchmark webdataset shards, with corrupt images."""

from __future__ import annotations

import pytest
import torch

from clipforge.data.webdataset import ShardStats, expand_shards, iter_tar_samples, split_key, write_tar_shard
from clipforge.eval.datasets import CsvDataset, ImageFolder, WdsBenchmark, iter_batches, open_dataset
from helpers.fakes import COLOURS, png_bytes, solid

CORRUPT = b"\x89PNG\r\n\x1a\n" + b"\x00" * 40  # a PNG signature and nothing decodable


def write_folder(root, per_class: int = 3, corrupt: int = 2):
    for c in COLOURS:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            solid(c).save(root / c / f"{i}.png")
    (root / "red" / "bad.png").write_bytes(CORRUPT)
    if corrupt > 1:
        (root / "blue" / "truncated.jpg").write_bytes(png_bytes(solid("blue"), "JPEG")[:30])
    (root / "green" / "notes.txt").write_text("not an image")
    return root


def test_image_folder_counts_and_skips(tmp_path) -> None:
    ds = ImageFolder(write_folder(tmp_path / "imgs"))
    assert ds.classes == ["blue", "green", "red"]
    samples = list(ds)
    assert len(samples) == 9
    assert [s.label for s in samples] == [0] * 3 + [1] * 3 + [2] * 3
    assert len(ds.skipped) == 2 and {s.rsplit("/", 1)[-1] for s, _ in ds.skipped} == {"bad.png", "truncated.jpg"}
    assert ds.skip_counts() == {"corrupt": 1, "truncated": 1}  # training's reason names (a PNG signature: corrupt)
    assert len(list(ds)) == 9 and len(ds.skipped) == 2  # a second pass does not double-count


def test_image_folder_errors(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="not found"):
        ImageFolder(tmp_path / "missing")
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(ValueError, match="no images found"):
        ImageFolder(tmp_path / "empty")
    (tmp_path / "flat").mkdir()
    solid("red").save(tmp_path / "flat" / "a.png")
    with pytest.raises(ValueError, match="no class sub-folders"):
        ImageFolder(tmp_path / "flat")


def test_csv_labels_by_name_and_index(tmp_path) -> None:
    write_folder(tmp_path, corrupt=1)
    rows = ["filepath,label"] + [f"{c}/{i}.png,{c}" for c in COLOURS for i in range(3)]
    rows += ["red/bad.png,red", "red/missing.png,red"]
    (tmp_path / "by_name.csv").write_text("\n".join(rows) + "\n")
    ds = CsvDataset(tmp_path / "by_name.csv", image_col="filepath", label_col="label")
    assert ds.classes == ["blue", "green", "red"]
    samples = list(ds)
    assert len(samples) == 9 and len(ds.skipped) == 2
    assert [s.label for s in samples[:3]] == [2, 2, 2]  # "red" is class 2 of the sorted names
    (tmp_path / "by_index.csv").write_text("filepath,y\nred/0.png,1\ngreen/0.png,0\n")  # training's default column
    ds = CsvDataset(tmp_path / "by_index.csv", label_col="y", classes=["green", "red"])
    assert [s.label for s in ds] == [1, 0]


def test_csv_unknown_column_names_the_columns(tmp_path) -> None:
    (tmp_path / "a.csv").write_text("path,label\nx.png,0\n")
    with pytest.raises(ValueError, match=r"has no column\(s\) \['caption'\]; its columns: \['path', 'label'\] "
                                         r"\(set --image-key / --caption-key\)"):
        CsvDataset(tmp_path / "a.csv", image_col="path", caption_col="caption")
    with pytest.raises(ValueError, match=r"has no column\(s\) \['filepath'\]"):  # the default image column
        CsvDataset(tmp_path / "a.csv", label_col="label")
    with pytest.raises(FileNotFoundError):
        CsvDataset(tmp_path / "b.csv", label_col="label")


def test_tsv_captions_group_rows_of_one_image(tmp_path) -> None:
    write_folder(tmp_path, corrupt=1)
    rows = ["image\tcaption", "red/0.png\ta red square", "red/0.png\tsomething red", "blue/0.png\ta blue one",
            "red/bad.png\tbroken", "green/0.png\tgreen", "blue/0.png\tblue again"]
    (tmp_path / "caps.tsv").write_text("\n".join(rows) + "\n")
    ds = open_dataset(tmp_path / "caps.tsv", image_col="image", task="retrieval")
    samples = list(ds)
    assert [s.captions for s in samples] == [["a red square", "something red"], ["a blue one", "blue again"], ["green"]]
    assert len(ds.skipped) == 1


def _wds(root, kind: str = "classification", nshards: bool = True, truncate_last: bool = False):
    (root / "test").mkdir(parents=True)
    if kind == "classification":
        (root / "classnames.txt").write_text("\n".join(COLOURS) + "\n")
        (root / "zeroshot_classification_templates.txt").write_text("a photo of a {c}.\nart of the {c}.\n")
    else:
        (root / "dataset_type.txt").write_text("retrieval\n")
    fields = ["webp", "png", "jpg"]
    for shard in range(2):
        samples = []
        for i in range(4):
            c = COLOURS[(shard + i) % 3]
            fmt = fields[i % 3]
            data = png_bytes(solid(c), {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}[fmt])
            target = {"cls": str(COLOURS.index(c))} if kind == "classification" else {"txt": f"a {c} one\n{c}!\n"}
            samples.append({"__key__": f"s{shard}_{i:03d}", fmt: data, **target})
        bad_target = {"cls": "0"} if kind == "classification" else {"txt": "broken"}
        samples.append({"__key__": f"s{shard}_bad", "jpg": b"\xff\xd8\xff garbage", **bad_target})
        write_tar_shard(root / "test" / f"{shard}.tar", samples)
    if nshards:
        (root / "test" / "nshards.txt").write_text("2\n")
    (root / "test" / "_info").write_text("{}")
    if truncate_last:
        data = (root / "test" / "1.tar").read_bytes()
        (root / "test" / "1.tar").write_bytes(data[:1800])  # inside the second member
    return root


def test_wds_classification_layout(tmp_path) -> None:
    ds = open_dataset(_wds(tmp_path / "wds"))
    assert isinstance(ds, WdsBenchmark)
    assert ds.classes == list(COLOURS) and ds.templates == ["a photo of a {c}.", "art of the {c}."]
    samples = list(ds)
    assert len(samples) == 8 and len(ds.skipped) == 2 and ds.skip_counts() == {"corrupt": 2}  # JPEG signature + junk
    assert all(COLOURS[s.label] == _dominant(s.image) for s in samples)


def _dominant(image) -> str:
    r, g, b = image.getpixel((4, 4))
    return COLOURS[max(range(3), key=lambda i: (r, g, b)[i])]


def test_wds_retrieval_layout_without_nshards(tmp_path) -> None:
    ds = WdsBenchmark(_wds(tmp_path / "wds", kind="retrieval", nshards=False))
    assert ds.task == "retrieval" and ds.classes is None
    samples = list(ds)
    assert len(samples) == 8
    assert all(len(s.captions) == 2 for s in samples)


def test_wds_truncated_shard_is_counted_not_fatal(tmp_path) -> None:
    ds = WdsBenchmark(_wds(tmp_path / "wds", truncate_last=True))
    samples = list(ds)
    assert 4 <= len(samples) < 6  # shard 0 whole, shard 1 up to the damage
    assert any("1.tar" in s and r.startswith("shard_errors: ") and "Error" in r for s, r in ds.skipped)


def test_wds_missing_shard_listed_in_nshards(tmp_path) -> None:
    root = _wds(tmp_path / "wds")
    (root / "test" / "nshards.txt").write_text("3\n")
    with pytest.raises(FileNotFoundError, match=r"2\.tar is missing"):
        WdsBenchmark(root)


def test_tar_reader_groups_by_key(tmp_path) -> None:
    assert split_key("a/b/0001.seg.JPG") == ("a/b/0001", "seg.jpg")
    write_tar_shard(tmp_path / "x-000.tar", [{"__key__": "k1", "jpg": b"1", "cls": "3"}, {"__key__": "k2", "txt": "t"}])
    write_tar_shard(tmp_path / "x-001.tar", [{"__key__": "k3", "txt": "u"}])
    stats = ShardStats()
    got = list(iter_tar_samples(expand_shards(str(tmp_path / "x-{000..001}.tar")), stats))
    assert [(s["__key__"], sorted(k for k in s if not k.startswith("__"))) for s in got] == [
        ("k1", ["cls", "jpg"]), ("k2", ["txt"]), ("k3", ["txt"])]
    assert got[0]["cls"] == b"3" and stats.samples == 3 and stats.shards == 2
    (tmp_path / "junk.tar").write_bytes(b"not a tar at all" * 100)
    stats = ShardStats()
    assert list(iter_tar_samples([tmp_path / "junk.tar"], stats)) == []
    assert len(stats.bad_shards) == 1
    with pytest.raises(FileNotFoundError):
        expand_shards(str(tmp_path / "none-{0..3}.tar"))


def test_iter_batches_streams(tmp_path) -> None:
    ds = ImageFolder(write_folder(tmp_path / "imgs"))
    sizes = [len(metas) for _, metas in iter_batches(ds, lambda im: torch.zeros(3, 2, 2), 4)]
    assert sizes == [4, 4, 1]


def test_one_stray_numeric_label_cannot_build_a_huge_classifier(tmp_path) -> None:
    write_folder(tmp_path)
    (tmp_path / "labels.csv").write_text("filepath,label\nred/0.png,0\ngreen/0.png,1\nblue/0.png,999999\n")
    with pytest.raises(ValueError, match="numeric label 999999 implies 1,000,000 classes.*--classnames"):
        CsvDataset(tmp_path / "labels.csv", label_col="label")
    (tmp_path / "small.csv").write_text("filepath,label\nred/0.png,0\ngreen/0.png,2\n")
    assert CsvDataset(tmp_path / "small.csv", label_col="label").classes == ["0", "1", "2"]
