"""``clipforge embed``: the collection layout and its values, every data source, bad images, captions and --texts,
the manifest as the command's identity, and the errors a user meets."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from clipforge.data.decode import DecodeLimits, decode_image
from clipforge.search.collection import METADATA_COLUMNS, Collection, part_name
from clipforge.search.embed import EmbedSettings, embed
from conftest import N_PHOTOS, photo, write_photos

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny matrices: a second thread only adds contention
FP16 = 2e-3  # float16 storage of unit-norm rows: each entry within about 1e-3 of the float32 value


def cli(argv: list[str]) -> int:
    """``clipforge embed …`` in this process (the verb registered whether or not cli/main.py lists it yet)."""
    import clipforge.cli.main as entry

    if "clipforge.cli.embed" not in entry.VERB_MODULES:
        entry.VERB_MODULES.append("clipforge.cli.embed")
    return entry.main(["embed", *argv])


def quick(**kw) -> EmbedSettings:
    return EmbedSettings(**{"batch_size": 4, "workers": 0, "progress": False, **kw})


def eval_model(model_dir: Path):
    from clipforge.eval.loading import load_eval_model

    return load_eval_model(str(model_dir), "cpu")[0]


def expected_rows(model, files: list[Path]) -> np.ndarray:
    """What the collection's rows should be: EvalModel.encode_images of the same images, decoded as embed does
    (reduced on decode to the model's side)."""
    size = model.transform.size
    images = [model.transform(decode_image(f.read_bytes(), DecodeLimits(), size)) for f in files]
    return model.encode_images(torch.stack(images)).numpy()


def read_meta(out: Path) -> dict[str, list]:
    import pyarrow.parquet as pq

    tables = [pq.read_table(out / part_name("metadata", k)) for k in range(json.loads(
        (out / "embed.json").read_text())["num_parts"])]
    assert all(t.column_names == list(METADATA_COLUMNS) for t in tables)
    return {c: [v for t in tables for v in t.column(c).to_pylist()] for c in METADATA_COLUMNS}


def test_folder_without_sidecars_layout_values_and_collection(tmp_path, tiny_model_dir, photo_folder, capsys):
    out = tmp_path / "out"
    assert cli(["--model", str(tiny_model_dir), "--data", str(photo_folder), "--output", str(out), "--part-size", "5",
                "--batch-size", "3", "--workers", "2", "--device", "cpu"]) == 0
    assert f"embedded {N_PHOTOS} of {N_PHOTOS} inputs" in capsys.readouterr().out
    names = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert names == ["embed.json", *[part_name(kind, k) for kind in ("image", "metadata") for k in range(3)],
                     *[part_name("marker", k) for k in range(3)], "stats.json"]
    arrays = [np.load(out / part_name("image", k)) for k in range(3)]
    assert [a.shape for a in arrays] == [(5, 128), (5, 128), (2, 128)] and all(a.dtype == np.float16 for a in arrays)
    rows = np.concatenate(arrays).astype(np.float32)
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, atol=FP16)
    files = sorted(photo_folder.glob("*.jpg"))
    model = eval_model(tiny_model_dir)
    np.testing.assert_allclose(rows, expected_rows(model, files), atol=FP16)

    meta = read_meta(out)
    assert meta["row"] == list(range(N_PHOTOS)) and meta["path"] == [str(f) for f in files]
    assert meta["caption"] == [""] * N_PHOTOS  # no sidecars: captions are empty, not bad samples
    assert [(w, h) for w, h in zip(meta["width"], meta["height"])] == [
        ((160, 120), (120, 160), (96, 96), (640, 480))[i % 4] for i in range(N_PHOTOS)]  # the originals' sizes
    manifest = json.loads((out / "embed.json").read_text())
    assert manifest["complete"] and manifest["model"]["fingerprint"] == model.fingerprint()
    assert manifest["model"]["spec"] == str(tiny_model_dir) and manifest["model"]["dim"] == 128
    assert manifest["data"]["path"] == str(photo_folder) and manifest["data"]["kind"] == "folder"
    stats = json.loads((out / "stats.json").read_text())
    assert {k: stats[k] for k in ("inputs", "embedded", "skipped", "parts", "world_size")} == {
        "inputs": N_PHOTOS, "embedded": N_PHOTOS, "skipped": {}, "parts": 3, "world_size": 1}
    assert stats["images_per_s"] > 0 and stats["seconds"] > 0

    collection = Collection.open(out)
    assert collection.size == N_PHOTOS and collection.rows([7])[0]["path"] == str(files[7])
    assert collection.eval_model("cpu").fingerprint() == model.fingerprint()
    assert collection.image(3).size == (640, 480)


def test_bad_images_are_skipped_and_counted_by_reason(tmp_path, tiny_model_dir, bad_folder):
    stats = embed(str(tiny_model_dir), str(bad_folder), tmp_path / "out", quick(), device="cpu")
    assert stats["skipped"] == {"not_image": 1, "too_large": 1, "truncated": 1}
    assert stats["inputs"] == N_PHOTOS + 3 and stats["embedded"] == N_PHOTOS
    assert all(Path(p).name.startswith("photo_") for p in read_meta(tmp_path / "out")["path"])
    marker = json.loads((tmp_path / "out" / part_name("marker", 0)).read_text())
    assert marker["rows"] == N_PHOTOS and marker["skipped"] == stats["skipped"]


def test_a_bomb_under_small_limits(tmp_path, tiny_model_dir, photo_folder):
    from clipforge.data.sources import source_config

    config = source_config(str(photo_folder), decode=DecodeLimits(max_pixels=200 * 200))  # 640×480 is over it
    stats = embed(str(tiny_model_dir), config, tmp_path / "out", quick(), device="cpu")
    assert stats["skipped"] == {"too_large": N_PHOTOS // 4} and stats["embedded"] == N_PHOTOS - N_PHOTOS // 4


def test_sidecar_captions_and_texts_are_aligned(tmp_path, tiny_model_dir, caption_folder):
    out = tmp_path / "out"
    embed(str(tiny_model_dir), str(caption_folder), out, quick(texts=True, part_size=5), device="cpu")
    meta = read_meta(out)
    assert meta["caption"] == [f"a photo number {i}" for i in range(N_PHOTOS)]  # the sidecar's first line
    texts = np.concatenate([np.load(out / part_name("text", k)) for k in range(3)]).astype(np.float32)
    model = eval_model(tiny_model_dir)
    np.testing.assert_allclose(texts, model.encode_texts(meta["caption"]).numpy(), atol=FP16)
    collection = Collection.open(out)
    assert collection.modalities == ("image", "text") and collection.embeddings("text").shape == (N_PHOTOS, 128)


def test_texts_need_captions_but_images_alone_do_not(tmp_path, tiny_model_dir):
    folder = tmp_path / "mixed"
    files = write_photos(folder, 6)
    for f in files[::2]:
        f.with_suffix(".txt").write_text(f"caption of {f.stem}\n")
    files[1].with_suffix(".txt").write_text("  \n")  # blank: no caption
    with_texts = embed(str(tiny_model_dir), str(folder), tmp_path / "t", quick(texts=True), device="cpu")
    assert with_texts["embedded"] == 3 and with_texts["skipped"] == {"no_caption": 3}
    assert read_meta(tmp_path / "t")["caption"] == [f"caption of {f.stem}" for f in files[::2]]
    images_only = embed(str(tiny_model_dir), str(folder), tmp_path / "i", quick(), device="cpu")
    assert images_only["embedded"] == 6 and images_only["skipped"] == {}
    assert read_meta(tmp_path / "i")["caption"] == ["caption of photo_000", "", "caption of photo_002", "",
                                                    "caption of photo_004", ""]


def test_tables_give_the_folders_rows(tmp_path, tiny_model_dir, caption_folder):
    import pyarrow as pa
    import pyarrow.parquet as pq

    reference = tmp_path / "folder"
    embed(str(tiny_model_dir), str(caption_folder), reference, quick(), device="cpu")
    files = sorted(caption_folder.glob("*.jpg"))
    captions = [f"a photo number {i}" for i in range(N_PHOTOS)]
    table = tmp_path / "table.csv"
    with open(table, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "text"])
        writer.writerows([[p.name, c] for p, c in zip(files, captions)])
    tsv = tmp_path / "table.tsv"
    tsv.write_text("filepath\tcaption\n" + "".join(f"{p}\t{c}\n" for p, c in zip(files, captions)))
    parquet = tmp_path / "table.parquet"
    pq.write_table(pa.table({"filepath": [p.read_bytes() for p in files], "caption": captions}), parquet)

    expected = np.load(reference / part_name("image", 0))
    runs = {"csv": ["--image-key", "file", "--caption-key", "text", "--image-root", str(caption_folder)],
            "tsv": [], "parquet": []}
    for (kind, flags), data in zip(runs.items(), (table, tsv, parquet)):
        out = tmp_path / kind
        assert cli(["--model", str(tiny_model_dir), "--data", str(data), "--output", str(out), "--workers", "0",
                    "--no-progress", "--device", "cpu", *flags]) == 0
        assert np.array_equal(np.load(out / part_name("image", 0)), expected), kind
        meta = read_meta(out)
        assert meta["caption"] == captions and meta["row"] == list(range(N_PHOTOS))
        paths = [str(p) for p in files] if kind != "parquet" else [f"{parquet}:{i}" for i in range(N_PHOTOS)]
        assert meta["path"] == paths, kind
        assert json.loads((out / "embed.json").read_text())["data"]["kind"] == kind


@pytest.mark.filterwarnings("ignore:This DataLoader will create 4 worker processes")  # more than this CPU's cores
def test_shards_one_part_per_shard(tmp_path, tiny_model_dir, caption_folder):
    from clipforge.data.writer import write_shards

    files = sorted(caption_folder.glob("*.jpg"))
    write_shards(lambda i: (files[i].read_bytes(), files[i].with_suffix(".txt").read_bytes(), {}), N_PHOTOS,
                 tmp_path / "shards", shard_size=5, progress=False)
    out = tmp_path / "out"
    stats = embed(str(tiny_model_dir), str(tmp_path / "shards"), out, quick(texts=True), device="cpu")
    assert stats["parts"] == 3 and stats["embedded"] == N_PHOTOS
    assert [np.load(out / part_name("image", k)).shape[0] for k in range(3)] == [5, 5, 2]
    meta = read_meta(out)
    assert meta["row"] == [0, 1, 2, 3, 4] * 2 + [0, 1]  # the index within the shard
    assert meta["path"][6] == f"{tmp_path / 'shards' / '00001.tar'}::000011.jpg"
    assert meta["caption"][6] == "a photo number 6"
    images = np.concatenate([np.load(out / part_name("image", k)) for k in range(3)]).astype(np.float32)
    np.testing.assert_allclose(images, expected_rows(eval_model(tiny_model_dir), files), atol=FP16)
    collection = Collection.open(out)
    assert collection.image_bytes(6) == files[6].read_bytes()  # the original bytes, read from the shard
    for workers in (2, 4):  # whole shards per worker (3 shards, 2 workers), or chunks of each (4 workers)
        again = tmp_path / f"workers-{workers}"
        embed(str(tiny_model_dir), str(tmp_path / "shards"), again, quick(texts=True, workers=workers), device="cpu")
        for k, kind in ((k, kind) for k in range(3) for kind in ("image", "text", "metadata")):
            assert (again / part_name(kind, k)).read_bytes() == (out / part_name(kind, k)).read_bytes()


def test_synthetic_world(tmp_path, tiny_model_dir):
    out = tmp_path / "out"
    stats = embed(str(tiny_model_dir), "synthetic", out, quick(limit=6, texts=True), device="cpu")
    assert stats["embedded"] == 6 and stats["parts"] == 1
    meta = read_meta(out)
    assert meta["path"] == [f"synthetic:{i}" for i in range(6)] and all(meta["caption"])
    assert set(zip(meta["width"], meta["height"])) == {(64, 64)}  # rendered at the model's side
    collection = Collection.open(out)
    model = eval_model(tiny_model_dir)
    again = model.encode_images(model.transform(collection.image(2))[None]).numpy()[0]
    np.testing.assert_allclose(np.load(out / part_name("image", 0))[2].astype(np.float32), again, atol=FP16)


def test_precision_bf16_is_close_to_fp32(tmp_path, tiny_model_dir, photo_folder):
    embed(str(tiny_model_dir), str(photo_folder), tmp_path / "fp32", quick(dtype="float32"), device="cpu")
    embed(str(tiny_model_dir), str(photo_folder), tmp_path / "bf16", quick(precision="bf16"), device="cpu")
    a = np.load(tmp_path / "fp32" / part_name("image", 0))
    b = np.load(tmp_path / "bf16" / part_name("image", 0))
    assert a.dtype == np.float32 and b.dtype == np.float16
    assert np.min(np.sum(a * b.astype(np.float32), axis=1)) > 0.98


def test_another_command_on_the_same_output_is_an_error(tmp_path, tiny_model_dir, photo_folder, capsys):
    out = tmp_path / "out"
    base = ["--model", str(tiny_model_dir), "--data", str(photo_folder), "--output", str(out), "--workers", "0",
            "--no-progress", "--device", "cpu"]
    assert cli([*base, "--part-size", "5"]) == 0
    capsys.readouterr()
    assert cli([*base, "--part-size", "5"]) == 0  # the same command again: nothing to do, still fine
    assert "0 this run" in capsys.readouterr().out
    assert cli([*base, "--part-size", "4"]) == 2
    err = capsys.readouterr().err
    assert "clipforge embed: error:" in err and "part_size: 5 there, 4 now" in err and "--overwrite" in err
    assert cli([*base, "--texts"]) == 2 and "modalities" in capsys.readouterr().err
    other = tmp_path / "other-model"
    shutil.copytree(tiny_model_dir, other)
    from clipforge.api import create_model, get_text_processor
    from clipforge.checkpoints.native import save_pretrained

    torch.manual_seed(1)
    model = create_model("tiny-vit")
    save_pretrained(model, other, get_text_processor(model))
    assert cli([*base[:1], str(other), *base[2:], "--part-size", "5"]) == 2
    assert "model.fingerprint" in capsys.readouterr().err
    assert cli([*base, "--part-size", "4", "--overwrite"]) == 0
    assert json.loads((out / "embed.json").read_text())["num_parts"] == 3
    assert not (out / part_name("marker", 3)).exists() or json.loads((out / "embed.json").read_text())["part_size"] == 4


def test_clear_errors(tmp_path, tiny_model_dir, photo_folder, capsys):
    def error(*argv: str) -> str:
        base = {"--model": str(tiny_model_dir), "--data": str(photo_folder), "--output": str(tmp_path / "o")}
        flags = dict(zip(argv[::2], argv[1::2]))
        assert cli([x for k, v in {**base, **flags}.items() for x in (k, v)] + ["--no-progress", "--workers", "0",
                                                                                 "--device", "cpu"]) == 2
        return capsys.readouterr().err

    assert "model not found: 'tiny-vitt'" in error("--model", "tiny-vitt")
    assert "no such file or folder" in error("--data", str(tmp_path / "missing"))
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    assert "holds files but no collection" in error("--output", str(taken))
    assert (taken / "notes.txt").read_text() == "mine"  # never touched, even with --overwrite
    (tmp_path / "a-file").write_text("")  # a file where a folder must go: unwritable, whoever runs the tests
    assert "cannot write there" in error("--output", str(tmp_path / "a-file" / "out"))
    table = tmp_path / "t.csv"
    table.write_text("path,caption\nx.jpg,a\n")
    assert "--image-key" in error("--data", str(table))
    assert "tar shards are embedded whole" in cli_limit_on_shards(tmp_path, tiny_model_dir)


def cli_limit_on_shards(tmp_path: Path, model: Path) -> str:
    from clipforge.data.webdataset import write_tar_shard
    from conftest import jpeg_bytes

    write_tar_shard(tmp_path / "s.tar", [{"__key__": "a", "jpg": jpeg_bytes(photo(0)), "txt": "a"}])
    with pytest.raises(ValueError) as e:
        embed(str(model), str(tmp_path / "s.tar"), tmp_path / "so", quick(limit=1), device="cpu")
    return str(e.value)
