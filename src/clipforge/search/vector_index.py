"""Loading and searching a collection's vector index (built by :mod:`clipforge.search.index`).

:meth:`VectorIndex.load` opens ``DIR/index/<modality>.faiss`` memory-mapped (faiss ``IO_FLAG_MMAP_IFC |
IO_FLAG_READ_ONLY``: the vectors, codes and inverted lists stay in the file and are paged in by the kernel as
searches touch them, so loading needs almost no RAM whatever the index's size; HNSW's neighbour lists are the
one part read into memory) and applies the search parameters recorded in ``DIR/index.json``. A collection that
was never indexed is searched exactly over its memory-mapped ``.npy`` parts (:class:`ExactParts`), so search works
straight after ``clipforge embed``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


class ExactParts:
    """Exact inner-product search over memory-mapped embedding parts, a block of rows at a time.

    Args:
        parts: (n_k, D) arrays (``np.load(..., mmap_mode="r")``), any float dtype, in id order.
        block: Rows scored at once (bounds the float32 copy made of a float16 block).
    """

    def __init__(self, parts: list[np.ndarray], block: int = 65536):
        self.parts = [p for p in parts if len(p)]
        self.block = block
        self.ntotal = sum(len(p) for p in self.parts)
        self.d = int(parts[0].shape[1]) if parts else 0

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The top ``k`` (scores, ids) of each query, best first; ids -1 (score -inf) past the collection's size."""
        q = np.ascontiguousarray(queries, dtype=np.float32)  # (B, D)
        b = q.shape[0]
        best_s = np.full((b, k), -np.inf, np.float32)
        best_i = np.full((b, k), -1, np.int64)
        offset = 0
        for part in self.parts:
            for start in range(0, len(part), self.block):
                rows = np.asarray(part[start:start + self.block], dtype=np.float32)  # (c, D)
                s = q @ rows.T  # (B, c)
                ids = np.broadcast_to(np.arange(offset + start, offset + start + len(rows)), s.shape)
                all_s, all_i = np.concatenate([best_s, s], axis=1), np.concatenate([best_i, ids], axis=1)
                top = np.argpartition(-all_s, k - 1, axis=1)[:, :k] if all_s.shape[1] > k else \
                    np.broadcast_to(np.arange(all_s.shape[1]), (b, all_s.shape[1]))
                best_s = np.take_along_axis(all_s, top, axis=1)
                best_i = np.take_along_axis(all_i, top, axis=1)
            offset += len(part)
        order = np.argsort(-best_s, axis=1, kind="stable")
        return np.take_along_axis(best_s, order, axis=1), np.take_along_axis(best_i, order, axis=1)


class VectorIndex:
    """A searchable index over a collection's embeddings: a faiss index, or :class:`ExactParts`.

    Args:
        backend: Has ``search(queries, k) -> (scores, ids)``, ``ntotal`` and ``d``.
        info: The index.json entry (or, for exact search over the parts, a description of it).
    """

    def __init__(self, backend: Any, info: dict[str, Any]):
        self.backend = backend
        self.info = info

    @property
    def size(self) -> int:
        """The number of indexed rows."""
        return int(self.backend.ntotal)

    @property
    def dim(self) -> int:
        """The vectors' dimension."""
        return int(self.backend.d)

    @classmethod
    def load(cls, directory: str | Path, modality: str = "image", mmap: bool = True) -> VectorIndex:
        """The index of a collection: ``DIR/index/<modality>.faiss`` with its recorded search parameters, or exact
        search over the memory-mapped embedding parts when ``clipforge index`` was not run for ``modality``.

        Args:
            directory: The collection.
            modality: ``image`` or ``text``.
            mmap: Memory-map the index file (read-only) rather than read it into memory.

        Raises:
            ValueError: not a finished collection, or an index built over a different number of rows (stale:
                the collection was embedded again after indexing).
        """
        from clipforge.search.index import collection_parts, faiss_module, read_index_json, set_search_params

        root = Path(directory)
        parts = collection_parts(root, modality)
        n = sum(len(p) for p in parts)
        entry = read_index_json(root)["indices"].get(modality)
        if entry is None or not (root / entry.get("file", f"index/{modality}.faiss")).is_file():
            backend = ExactParts(parts)
            return cls(backend, {"kind": "exact", "n": n, "dim": backend.d, "file": None, "search_params": {},
                                 "recall_at_10": 1.0, "reason": "no index built (clipforge index): exact search over "
                                                                 "the memory-mapped embedding parts"})
        faiss = faiss_module()
        path = root / entry["file"]
        flags = faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY if mmap else 0
        index = faiss.read_index(str(path), flags)
        if index.ntotal != n or int(entry.get("n", n)) != n:
            raise ValueError(f"{path}: holds {index.ntotal} rows but the collection has {n}; it is stale, rebuild it "
                             f"with `clipforge index {root}`")
        set_search_params(index, dict(entry.get("search_params") or {}))
        return cls(index, dict(entry))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The top ``k`` of each query by inner product.

        Args:
            queries: (B, D) float32, L2-normalised for cosine scores.
            k: Results per query, ≥ 1.

        Returns:
            ``(scores (B, k) float32, ids (B, k) int64)``, highest score first; ids < 0 mark empty slots (k above
            the size, or an approximate index's probed cells holding fewer); callers drop them.

        Raises:
            ValueError: a wrong shape or dimension, or k < 1.
        """
        q = np.ascontiguousarray(queries, dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValueError(f"queries have shape {q.shape}, expected (B, {self.dim})")
        if k < 1:
            raise ValueError(f"k must be ≥ 1, got {k}")
        scores, ids = self.backend.search(q, int(k))
        return np.asarray(scores, dtype=np.float32), np.asarray(ids, dtype=np.int64)
