"""Indexable sources: CSV/TSV/parquet tables with chosen columns, image folders with sidecars, bad rows counted."""

from __future__ import annotations

import csv
import dataclasses
from collections import Counter

import pytest
import torch

from clipforge.config import ConfigError
from clipforge.data import build_source, check_source
from clipforge.data.config import FolderDataConfig, ShardsDataConfig
from clipforge.data.decode import BadSample
from clipforge.data.folders import FolderPairs
from clipforge.data.tables import TablePairs
from clipforge.train import Runtime, load_config
from clipforge.train.data import TrainData
from clipforge.transforms import EvalTransform, TrainTransform
from helpers.images import image_bytes
from helpers.tables import GOOD, ROWS, write_table


def collect(data: TrainData, steps: int) -> tuple[list[str], Counter]:
    """Captions used and skips counted over ``steps`` batches."""
    captions: list[str] = []
    data.batches.text_processor = lambda texts: (captions.extend(texts), torch.zeros(len(texts), 2))[1]
    for _, _, info in data.loader(0, steps):
        data.consume(info)
    return captions, data.skipped


def build(overrides: dict, batch_size: int = 5) -> TrainData:
    config = load_config(None, {**overrides, "batch_size": batch_size})
    mean, std = (0.5,) * 3, (0.25,) * 3
    return TrainData(config.data, TrainTransform(32, mean, std), None, batch_size, 0, Runtime(), image_size=32)


@pytest.mark.parametrize("delimiter", [",", "\t"])
def test_table_rows_decode_or_name_their_fault(tmp_path, delimiter):
    path = write_table(tmp_path, delimiter)
    table = TablePairs(path, "img", "text")
    assert table.fmt == ("tsv" if delimiter == "\t" else "csv") and len(table) == len(ROWS)
    for i, (_, caption, reason) in enumerate(ROWS):
        if reason in (None, "bad_text", "no_caption"):  # the image is fine; the caption is checked by the batches
            image, text = table[i]
            assert image.mode == "RGB" and min(image.size) >= 40
            assert text.encode("utf-8", "surrogateescape") == caption
        else:
            with pytest.raises(BadSample) as e:
                table[i]
            assert e.value.reason == reason


@pytest.mark.parametrize("kind", ["csv", "tsv"])
def test_training_batches_from_a_table_skip_and_count_bad_rows(tmp_path, kind):
    path = write_table(tmp_path, "\t" if kind == "tsv" else ",")
    data = build({"data.kind": kind, "data.path": str(path), "data.image_key": "img", "data.caption_key": "text"})
    captions, skipped = collect(data, 2 * len(ROWS) // 5)  # two epochs
    assert set(captions) == {f"photo number {i}" for i in range(GOOD)}  # only good rows reach the model
    assert len(captions) == 2 * len(ROWS)  # each bad row was replaced, so every batch is full
    for reason in ("no_image", "not_image", "bad_text", "no_caption"):
        assert skipped[reason] >= 2  # each bad row met once per epoch (replacement draws may meet it again)
    assert data.used == len(captions)


def test_parquet_with_image_bytes_structs_and_paths(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    (tmp_path / "a.jpg").write_bytes(image_bytes(7))
    images = [{"bytes": image_bytes(i), "path": None} for i in range(3)] + [{"bytes": None, "path": "a.jpg"}, None]
    table = pa.table({"image": images, "caption": ["c0", "c1", None, "c3", "c4"]})
    pq.write_table(table, tmp_path / "pairs.parquet")
    data = build({"data.kind": "parquet", "data.path": str(tmp_path / "pairs.parquet"), "data.image_key": "image"},
                 batch_size=3)
    captions, _ = collect(data, 2)
    assert set(captions) <= {"c0", "c1", "c3"} and len(captions) == 6
    rows = TablePairs(tmp_path / "pairs.parquet", "image", "caption")
    assert rows[3][0].size == (40, 48)
    with pytest.raises(BadSample, match="no_caption"):
        rows[2]
    with pytest.raises(BadSample, match="no_image"):
        rows[4]


def test_folder_with_sidecar_captions(tmp_path):
    (tmp_path / "sub").mkdir()
    for i in range(4):
        (tmp_path / f"sub/{i}.png").write_bytes(image_bytes(i, fmt="PNG"))
        (tmp_path / f"sub/{i}.txt").write_text(f"first caption {i}\nsecond caption {i}\n")
    (tmp_path / "lonely.jpg").write_bytes(image_bytes(9))  # no sidecar
    (tmp_path / ".hidden.jpg").write_bytes(image_bytes(10))
    pairs = FolderPairs(tmp_path)
    assert [p.name for p in pairs.files] == ["lonely.jpg", "0.png", "1.png", "2.png", "3.png"]
    with pytest.raises(BadSample, match="no_caption"):
        pairs[0]
    data = build({"data.kind": "folder", "data.path": str(tmp_path)}, batch_size=4)
    captions, skipped = collect(data, 10)
    assert {c.split()[0] for c in captions} == {"first", "second"}  # one of the lines, picked per sample
    assert {c.split()[-1] for c in captions} == {"0", "1", "2", "3"} and skipped["no_caption"] >= 8


ON_DISK = [
    ("csv", {"data.image_key": "path"}, r"^data: .*pairs.csv has no column\(s\) \['path'\]; its columns: "
                                        r"\['id', 'img', 'text'\] \(set data.image_key / data.caption_key\)$"),
    ("csv", {"data.path": "/no/such/pairs.csv"}, "^data.path: no such file: /no/such/pairs.csv$"),
    ("tsv", {"data.image_root": "/no/such/dir"}, "^data.image_root: no such folder: /no/such/dir$"),
    ("folder", {"data.path": "/no/such/dir"}, "^data.path: a folder data source needs an existing folder, "
                                              "got '/no/such/dir'$"),
]


def _overrides(tmp_path, kind: str, extra: dict) -> dict:
    path = write_table(tmp_path, "\t" if kind == "tsv" else ",")
    columns = {"data.image_key": "img", "data.caption_key": "text"} if kind != "folder" else {}
    return {"data.kind": kind, "data.path": str(path), **columns, **extra}  # kind first: it resets data.*


@pytest.mark.parametrize(("kind", "extra", "message"), ON_DISK)
def test_table_and_folder_sources_are_checked_before_any_work(tmp_path, kind, extra, message):
    """The config loads (it is data); ``check_source``, and ``TrainData`` before any work, name the fault."""
    config = load_config(None, _overrides(tmp_path, kind, extra))
    with pytest.raises(ConfigError, match=message):
        check_source(config.data)
    with pytest.raises(ConfigError, match=message):
        build(_overrides(tmp_path, kind, extra))
    with pytest.raises(ConfigError, match=message):
        build_source(config.data)


@pytest.mark.parametrize(("kind", "extra", "message"), [
    ("folder", {"data.image_key": "img"}, "unknown field 'image_key'"),
    ("csv", {"data.caption_key": ""}, "data.image_key and data.caption_key must name columns"),
    ("folder", {"data.layout": "grid"}, "data.layout: expected one of"),
])
def test_config_shape_is_checked_on_load(tmp_path, kind, extra, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, _overrides(tmp_path, kind, extra))


def test_training_refuses_labelled_sources(tmp_path):
    (tmp_path / "red").mkdir()
    (tmp_path / "red/0.png").write_bytes(image_bytes(0, fmt="PNG"))
    with pytest.raises(ConfigError, match="training needs captions"):
        build({"data.kind": "folder", "data.path": str(tmp_path), "data.layout": "classes"})
    path = write_table(tmp_path)
    with pytest.raises(ConfigError, match="training needs captions"):
        build({"data.kind": "csv", "data.path": str(path), "data.image_key": "img", "data.label_key": "id"})


def test_csv_reader_keeps_standard_quoting(tmp_path):
    (tmp_path / "a.jpg").write_bytes(image_bytes(0))
    with (tmp_path / "q.csv").open("w", newline="") as f:
        csv.writer(f).writerows([["filepath", "caption"], ["a.jpg", 'a "quoted", comma caption']])
    assert TablePairs(tmp_path / "q.csv")[0][1] == 'a "quoted", comma caption'
    assert isinstance(EvalTransform(32, (0.5,) * 3, (0.5,) * 3)(TablePairs(tmp_path / "q.csv")[0][0]), torch.Tensor)


def test_unreadable_files_are_bad_rows_not_crashes(tmp_path):
    (tmp_path / "folder.jpg").mkdir()  # a path that exists but cannot be read as a file
    (tmp_path / "t.csv").write_text("filepath,caption\nfolder.jpg,a caption\n")
    with pytest.raises(BadSample, match="no_image: row 0: cannot read .*folder.jpg: IsADirectoryError"):
        TablePairs(tmp_path / "t.csv")[0]


class _Grouped:
    """A source of 24 items in groups of 4 consecutive ones; item i's image is filled with i."""

    group_size = 4

    def __len__(self) -> int:
        return 24

    def __getitem__(self, i: int):
        return torch.full((1,), float(i)), f"caption {i}"


def test_step_batches_keep_declared_groups_together_and_cover_each_epoch():
    from clipforge.train.data import StepBatches

    batches = StepBatches(_Grouped(), lambda image: image, lambda texts: texts, 8, seed=1, augment=False)
    seen = []
    for step in range(6):  # two epochs of 24
        images, _, _ = batches[step]
        ids = images[:, 0].long().tolist()
        for k in (0, 4):  # each aligned run of 4 rows is one whole group, in member order
            assert ids[k] % 4 == 0 and ids[k:k + 4] == list(range(ids[k], ids[k] + 4))
        seen += ids
    assert sorted(seen[:24]) == sorted(seen[24:]) == list(range(24))
    assert seen[:24] != seen[24:]  # each epoch draws a new order of the groups


def _whole_groups(ids: list[int]) -> bool:
    return all(ids[k] % 4 == 0 and ids[k:k + 4] == list(range(ids[k], ids[k] + 4)) for k in range(0, len(ids), 4))


def test_step_batches_keep_groups_together_from_group_start_on():
    from clipforge.train.data import StepBatches

    batches = StepBatches(_Grouped(), lambda image: image, lambda texts: texts, 8, seed=1, augment=False,
                          group_start=3)
    plain = StepBatches(_Ungrouped(), lambda image: image, lambda texts: texts, 8, seed=1, augment=False)
    early = [batches[step][0][:, 0].long().tolist() for step in range(3)]
    assert early == [plain[step][0][:, 0].long().tolist() for step in range(3)]  # item by item, as ungrouped
    assert sorted(i for ids in early for i in ids) == list(range(24)) and not all(_whole_groups(ids) for ids in early)
    assert all(_whole_groups(batches[step][0][:, 0].long().tolist()) for step in range(3, 9))


class _Ungrouped(_Grouped):
    group_size = 1


def test_contrast_groups_reach_the_batches_from_the_config():
    data = build({"data": {"kind": "synthetic", "train_size": 64, "contrast_group": 4, "augment": False}}, 8)
    captions, _ = collect(data, 2)
    for k in range(0, 16, 4):
        words = [c.split() for c in captions[k:k + 4]]
        assert all(len(w) == len(words[0]) for w in words)  # same wording, the shape noun aside
    with pytest.raises(ConfigError, match="multiple of data.contrast_group"):
        load_config(None, {"data": {"kind": "synthetic", "train_size": 30, "contrast_group": 4}})
    with pytest.raises(ConfigError, match="contrast_group must be in 1..8"):
        load_config(None, {"data": {"kind": "synthetic", "contrast_group": 9}})
    with pytest.raises(ConfigError, match="contrast_start must be ≥ 0"):
        load_config(None, {"data": {"kind": "synthetic", "contrast_start": -1}})


def test_contrast_start_reaches_the_batches_from_the_config():
    data = build({"data": {"kind": "synthetic", "train_size": 64, "contrast_group": 4, "contrast_start": 5,
                           "augment": False}}, 8)
    assert data.batches.group_start == 5


def test_source_kind_is_decided_in_one_place(tmp_path):
    from clipforge.data import source_config, source_kind
    from clipforge.data.config import FolderDataConfig, ShardsDataConfig, TSVDataConfig
    from helpers.shards import write_good_shards

    write_good_shards(tmp_path / "shards", 2, 1)
    (tmp_path / "photos").mkdir()
    for name in ("a.csv", "a.txt", "a.tsv", "a.tab", "a.parquet", "a.pq", "a.tar", "a.json"):
        (tmp_path / name).write_text("")
    kinds = {name: source_kind(str(tmp_path / name)) for name in ("a.csv", "a.txt", "a.tsv", "a.tab", "a.parquet",
                                                                   "a.pq", "a.tar", "photos", "shards")}
    assert kinds == {"a.csv": "csv", "a.txt": "csv", "a.tsv": "tsv", "a.tab": "tsv", "a.parquet": "parquet",
                     "a.pq": "parquet", "a.tar": "shards", "photos": "folder", "shards": "shards"}
    assert source_kind("synthetic") == "synthetic"
    assert source_kind(f"{tmp_path}/shards/{{00000..00001}}.tar") == source_kind(f"{tmp_path}/x/*.tar") == "shards"
    with pytest.raises(ValueError, match="a.json: not a folder, a table"):
        source_kind(str(tmp_path / "a.json"))
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        source_kind(str(tmp_path / "missing.csv"))
    # Fields the kind lacks (a command line's table flags for a folder) are left out; the path lands in its field.
    fields = {"image_key": "img", "layout": "classes"}
    assert source_config(str(tmp_path / "photos"), **fields) == FolderDataConfig(path=str(tmp_path / "photos"),
                                                                                 layout="classes")
    assert source_config(str(tmp_path / "a.tab"), **fields) == TSVDataConfig(path=str(tmp_path / "a.tab"),
                                                                             image_key="img")
    assert source_config(str(tmp_path / "shards"), **fields) == ShardsDataConfig(urls=str(tmp_path / "shards"))
    assert source_config(str(tmp_path / "a.json"), "csv").kind == "csv"  # an explicit kind wins


def test_build_source_gives_each_kind_its_reader(tmp_path):
    from clipforge.data.folders import ClassFolder
    from clipforge.data.shards import ShardSource
    from helpers.shards import write_good_shards

    table = write_table(tmp_path / "table")
    (tmp_path / "classes/red").mkdir(parents=True)
    (tmp_path / "classes/red/0.png").write_bytes(image_bytes(0, fmt="PNG"))
    (tmp_path / "classes/red/0.txt").write_text("a sidecar caption")
    shards = write_good_shards(tmp_path / "shards", 2, 3)
    config = load_config(None, {"data.kind": "csv", "data.path": str(table), "data.image_key": "img",
                                "data.caption_key": "text"}).data
    rows = build_source(config, image_size=32)
    assert isinstance(rows, TablePairs) and rows.min_size == 39 and len(rows) == len(ROWS)  # crops: decode larger
    labels = build_source(dataclasses.replace(config, label_key="id", augment=False), image_size=32)
    assert labels.min_size == 32 and labels[0][1] == "0"  # the label column in place of the caption
    folder = build_source(FolderDataConfig(path=str(tmp_path / "classes")))
    assert isinstance(folder, FolderPairs) and folder[0][1] == b"a sidecar caption" and folder.min_size is None
    classes = build_source(FolderDataConfig(path=str(tmp_path / "classes"), layout="classes"))
    assert isinstance(classes, ClassFolder) and classes.classes == ["red"] and classes[0][1] == 0
    stream = build_source(ShardsDataConfig(urls=str(tmp_path / "shards")))
    assert isinstance(stream, ShardSource) and stream.sources == [shards]
    assert [s["__key__"] for s in stream] == ["000000", "000001", "000002", "001000", "001001", "001002"]
    assert stream.stats.samples == 6
    world = build_source(load_config(None, {"data.train_size": 16}).data, image_size=32)
    assert len(world) == 16 and world[0][0].size == (32, 32)
