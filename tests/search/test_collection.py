"""The collection reader: originals read back from every kind of source (files, images stored in a table's cells,
synthetic scenes), the manifest checks, and where a read-only collection keeps its ONNX export."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pyarrow")

from clipforge.search.collection import Collection
from clipforge.search.embed import EmbedSettings, embed
from conftest import N_PHOTOS, jpeg_bytes, photo


def quick(**kw):
    return EmbedSettings(batch_size=4, workers=0, progress=False, **kw)


def test_images_stored_in_parquet_cells_are_served_from_the_table(tmp_path, tiny_model_dir, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    blobs = [jpeg_bytes(photo(i, (90, 70))) for i in range(5)]
    table = tmp_path / "inline.parquet"
    pq.write_table(pa.table({"image": blobs, "caption": [f"picture {i}" for i in range(5)]}), table)
    out = tmp_path / "inline.emb"
    monkeypatch.chdir(tmp_path)  # a relative --data path: the metadata must still point at the table absolutely
    from clipforge.data.sources import source_config

    config = source_config("inline.parquet", image_key="image", caption_key="caption")
    embed(str(tiny_model_dir), config, out, quick(), device="cpu")
    collection = Collection.open(out)
    rows = collection.rows(range(5))
    assert [r["path"] for r in rows] == [f"{table}:{i}" for i in range(5)]
    assert [r["caption"] for r in rows] == [f"picture {i}" for i in range(5)]
    for i in range(5):
        assert collection.image_bytes(i) == blobs[i]  # the cell's bytes, not a file
        assert collection.image(i).size == (90, 70)


def test_synthetic_items_are_redrawn(tmp_path, tiny_model_dir):
    from clipforge.config import from_dict
    from clipforge.data.config import SyntheticDataConfig
    from clipforge.data.sources import build_source

    out = tmp_path / "world.emb"
    embed(str(tiny_model_dir), "synthetic", out, quick(limit=6), device="cpu")
    collection = Collection.open(out)
    manifest = collection.manifest["data"]
    world = build_source(from_dict(SyntheticDataConfig, manifest["config"]), manifest["image_size"])
    for i in (0, 5):
        assert collection.rows([i])[0]["path"] == f"synthetic:{i}"
        assert collection.rows([i])[0]["caption"] == world[i][1]
        assert np.array_equal(np.asarray(collection.image(i)), np.asarray(world[i][0].convert("RGB")))
    with pytest.raises(ValueError, match="synthetic scene"):
        collection.image_bytes(0)


def test_ids_outside_the_collection_are_index_errors(small_collection):
    collection = Collection.open(small_collection)
    assert collection.size == N_PHOTOS
    for bad in (-1, N_PHOTOS, True, "3", 2.0):
        with pytest.raises(IndexError, match="no item"):
            collection.rows([bad])


def test_unfinished_and_foreign_folders_are_refused(tmp_path, small_collection):
    with pytest.raises(ValueError, match="no embed.json"):
        Collection.open(tmp_path)
    copy = tmp_path / "copy.emb"
    shutil.copytree(small_collection, copy)
    manifest = json.loads((copy / "embed.json").read_text())
    (copy / "embed.json").write_text(json.dumps({**manifest, "complete": False}))
    with pytest.raises(ValueError, match="has not finished"):
        Collection.open(copy)
    assert Collection.open(copy, allow_incomplete=True).size == N_PHOTOS  # its finished parts
    (copy / "embed.json").write_text(json.dumps(manifest))
    (copy / "parts" / "part_0001.json").unlink()
    with pytest.raises(ValueError, match="part_0001.json: missing"):
        Collection.open(copy)
    (copy / "embed.json").write_text(json.dumps({**manifest, "format": "something-else"}))
    with pytest.raises(ValueError, match="format is 'something-else'"):
        Collection.open(copy)


def test_a_part_whose_rows_disagree_with_its_marker_is_named(tmp_path, small_collection):
    copy = tmp_path / "copy.emb"
    shutil.copytree(small_collection, copy)
    np.save(copy / "img_emb" / "img_emb_0000.npy", np.zeros((2, 128), np.float16))
    with pytest.raises(ValueError, match=r"img_emb_0000.npy: shape \(2, 128\), expected \(5, 128\)"):
        Collection.open(copy).embeddings()


def test_a_read_only_collection_keeps_its_onnx_export_in_the_user_cache(tmp_path, small_collection, monkeypatch):
    pytest.importorskip("onnxruntime")
    copy = tmp_path / "ro.emb"
    shutil.copytree(small_collection, copy)
    monkeypatch.setenv("CLIPFORGE_CACHE", str(tmp_path / "cache"))
    collection = Collection.open(copy)
    fingerprint = collection.model["fingerprint"]
    assert collection._export_dir("fp32", fingerprint) == copy / "onnx" / "fp32"  # writable: inside
    os.chmod(copy, 0o555)
    try:
        if os.access(copy, os.W_OK):  # root ignores permissions: pretend instead
            monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != copy)
        where = collection._export_dir("fp32", fingerprint)
        assert where == tmp_path / "cache" / "onnx" / f"{fingerprint}-fp32"
        model = collection.eval_model(device="cpu", backend="onnx")
        assert (where / "export.json").is_file() and not (copy / "onnx").exists()
        torch_rows = collection.embeddings()[:3]
        from PIL import Image

        images = [Image.open(collection.rows([i])[0]["path"]).convert("RGB") for i in range(3)]
        import torch

        got = model.encode_images(torch.stack([model.transform(im) for im in images])).numpy()
        assert np.abs(got - torch_rows).max() < 2e-3  # the fp16 rows the torch backend stored
    finally:
        os.chmod(copy, 0o755)
