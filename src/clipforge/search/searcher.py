"""Text, image and vector queries against a collection: what ``clipforge search`` and ``clipforge serve`` call.

A :class:`Searcher` joins three things: the :class:`~clipforge.search.collection.Collection` (metadata, the
recorded model), its :class:`~clipforge.search.index.VectorIndex` (a faiss index, or exact search over the
memory-mapped embeddings when none was built), and the model the collection was embedded with, loaded on first
use and checked against the fingerprint in embed.json (queries from another model would not be comparable)::

    searcher = Searcher(Collection.open("photos-emb"))
    for hit in searcher.search_text("a red bicycle", k=5)[0]:
        print(hit["id"], hit["score"], hit["path"], hit["caption"])
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from clipforge.search.index import VectorIndex

if TYPE_CHECKING:
    from PIL import Image

    from clipforge.eval.adapter import EvalModel
    from clipforge.search.collection import Collection


class Searcher:
    """Searches one collection by text, image or embedding.

    Args:
        collection: The collection to search.
        index: Its vector index; ``VectorIndex.load(collection.directory)`` when ``None`` (the built index, or
            exact search over the embeddings when ``clipforge index`` was never run).
        device: Where the model runs (the CPU when ``None``).
        model: Another spelling of the collection's model (a moved checkpoint, a local copy); its weights must be
            the recorded ones. The spec in embed.json when ``None``.
        backend: ``torch`` or ``onnx`` (``Collection.eval_model``); the one the collection was embedded with when
            ``None``.

    Raises:
        ValueError: the index's dimension or size differs from the collection's.
    """

    def __init__(self, collection: Collection, index: VectorIndex | None = None, device: str | None = None,
                 model: str | None = None, backend: str | None = None):
        self.collection = collection
        self.index = index if index is not None else VectorIndex.load(collection.directory)
        if self.index.dim != collection.dim:
            raise ValueError(f"{collection.directory}: the index has dimension {self.index.dim}, the collection "
                             f"{collection.dim}")
        if self.index.size != collection.size:
            raise ValueError(f"{collection.directory}: the index holds {self.index.size} rows, the collection "
                             f"{collection.size}; rebuild it with `clipforge index {collection.directory}`")
        self.device = device
        self.model_spec = model
        self.backend = backend
        self._model: EvalModel | None = None
        self._lock = threading.Lock()

    @property
    def size(self) -> int:
        """The number of searchable items."""
        return self.collection.size

    @property
    def dim(self) -> int:
        """The embedding dimension queries must have."""
        return self.collection.dim

    @property
    def model(self) -> EvalModel:
        """The collection's model as an ``EvalModel``, loaded (and fingerprint-checked) once, thread-safely.

        Raises:
            ValueError: the model's weights are not the ones the collection was embedded with.
        """
        if self._model is None:
            with self._lock:
                if self._model is None:
                    self._model = self.collection.eval_model(device=self.device, spec=self.model_spec,
                                                             backend=self.backend)
        return self._model

    # -- queries to vectors -------------------------------------------------------------------------------------

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Embeds strings with the collection's model → L2-normalised float32 (B, D).

        Raises:
            ValueError: ``texts`` is empty.
        """
        if len(texts) == 0:
            raise ValueError("no texts to encode")
        return self.model.encode_texts(list(texts)).numpy().astype(np.float32, copy=False)

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Embeds PIL images (through the model's eval transform) → L2-normalised float32 (B, D).

        Raises:
            ValueError: ``images`` is empty.
        """
        import torch

        if len(images) == 0:
            raise ValueError("no images to encode")
        model = self.model
        batch = torch.stack([model.transform(image.convert("RGB")) for image in images])  # (B, 3, H, W)
        return model.encode_images(batch).numpy().astype(np.float32, copy=False)

    # -- vectors to results -------------------------------------------------------------------------------------

    def search_vectors(self, queries: np.ndarray, k: int) -> list[list[dict[str, Any]]]:
        """The ``k`` nearest items of each query row, best first.

        Rows are L2-normalised here, so the score is the cosine similarity whatever the caller passed. Fewer than
        ``k`` results come back when the collection (or an approximate index's probed lists) holds fewer.

        Args:
            queries: (B, D) or (D,) floats; D must be the collection's dimension.
            k: How many results per query, ≥ 1.

        Returns:
            One list per query of ``{"id", "score", "path", "caption"}`` sorted by score, highest first.

        Raises:
            ValueError: a wrong dimension, k < 1, or a zero / non-finite query.
        """
        q = np.asarray(queries, dtype=np.float32)
        if q.ndim == 1:
            q = q[None]
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValueError(f"queries have dimension {q.shape[-1] if q.ndim else 0} (shape {q.shape}), the collection "
                             f"{self.collection.directory} has dimension {self.dim}")
        if isinstance(k, bool) or int(k) < 1:
            raise ValueError(f"k must be ≥ 1, got {k!r}")
        norms = np.linalg.norm(q, axis=1, keepdims=True)
        if not np.isfinite(q).all() or (norms == 0).any():
            raise ValueError("queries must be finite and not all zero")
        q = np.ascontiguousarray(q / norms, dtype=np.float32)
        if q.shape[0] == 0:
            return []
        scores, ids = self.index.search(q, min(int(k), max(self.size, 1)))
        wanted = sorted({int(i) for i in ids.reshape(-1) if i >= 0})
        rows = {row["id"]: row for row in self.collection.rows(wanted)} if wanted else {}
        out = []
        for score_row, id_row in zip(scores, ids, strict=True):
            hits = [{"id": int(i), "score": float(s), "path": str(rows[int(i)]["path"]),
                     "caption": str(rows[int(i)]["caption"] or "")}
                    for s, i in zip(score_row, id_row, strict=True) if i >= 0]
            out.append(hits)
        return out

    def search_text(self, text: str | Sequence[str], k: int = 10) -> list[list[dict[str, Any]]]:
        """:meth:`search_vectors` of one string (or several), embedded with the collection's model."""
        texts = [text] if isinstance(text, str) else list(text)
        return self.search_vectors(self.encode_texts(texts), k)

    def search_image(self, image: Image.Image | Sequence[Image.Image], k: int = 10) -> list[list[dict[str, Any]]]:
        """:meth:`search_vectors` of one PIL image (or several), embedded with the collection's model."""
        images: list[Image.Image] = list(image) if isinstance(image, (list, tuple)) else [image]  # type: ignore[list-item]
        return self.search_vectors(self.encode_images(images), k)
