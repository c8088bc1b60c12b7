"""A collection written by hand in the on-disk layout (no model, no embed run), for the index and search tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np


def clustered(n: int, dim: int, clusters: int = 32, spread: float = 0.35, seed: int = 0) -> np.ndarray:
    """Rows from a mixture of Gaussians on the unit sphere (float32, L2-normalised)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = centres[rng.integers(0, clusters, n)] + rng.standard_normal((n, dim)).astype(np.float32) * (
        spread / np.sqrt(dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def write_collection(directory: Path, image: np.ndarray, text: np.ndarray | None = None, part_size: int = 1000,
                     model: dict[str, Any] | None = None, complete: bool = True, dtype: str = "float16") -> Path:
    """Writes ``image`` (and ``text``) rows as a collection in ``directory``: parts of ``part_size`` rows, metadata
    parquet (path ``synthetic:ID``, caption ``item ID``), part markers, embed.json. Returns ``directory``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    directory = Path(directory)
    n, dim = image.shape
    num_parts = max(1, -(-n // part_size))
    for folder in ("img_emb", "text_emb", "metadata", "parts"):
        if folder != "text_emb" or text is not None:
            (directory / folder).mkdir(parents=True, exist_ok=True)
    for k in range(num_parts):
        lo, hi = k * part_size, min(n, (k + 1) * part_size)
        np.save(directory / f"img_emb/img_emb_{k:04d}.npy", image[lo:hi].astype(dtype))
        if text is not None:
            np.save(directory / f"text_emb/text_emb_{k:04d}.npy", text[lo:hi].astype(dtype))
        ids = list(range(lo, hi))
        table = pa.table({"row": pa.array(ids, pa.int64()), "path": [f"synthetic:{i}" for i in ids],
                          "caption": [f"item {i}" for i in ids], "width": pa.array([64] * len(ids), pa.int32()),
                          "height": pa.array([48] * len(ids), pa.int32())})
        pq.write_table(table, directory / f"metadata/metadata_{k:04d}.parquet")
        (directory / f"parts/part_{k:04d}.json").write_text(json.dumps(
            {"part": k, "rows": hi - lo, "inputs": hi - lo, "skipped": {}, "seconds": 0.0}))
    manifest = {"format": "clipforge-collection", "version": 1,
                "model": model or {"spec": "none", "pretrained": None, "name": "hand-made", "family": "clip",
                                   "fingerprint": "0" * 16, "dim": dim, "scoring": "softmax"},
                "data": {"path": "synthetic", "kind": "synthetic"}, "part_size": part_size,
                "num_parts": num_parts, "dtype": dtype,
                "modalities": ["image", "text"] if text is not None else ["image"], "complete": complete}
    (directory / "embed.json").write_text(json.dumps(manifest, indent=2))
    return directory
