"""clipforge.search.searcher.Searcher over a real collection (a saved random-weight tiny-vit's embeddings of drawn
PNGs): an item's own image finds it first, text results equal brute force, dimension and model checks, an index
is used when built, the model loads once across threads."""

from __future__ import annotations

import itertools
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers_serve import make_collection
from PIL import Image

from clipforge.search.collection import Collection
from clipforge.search.index import build_collection_index
from clipforge.search.searcher import Searcher
from clipforge.search.vector_index import ExactParts, VectorIndex

pytest.importorskip("faiss")
N = 60


@pytest.fixture(scope="module")
def collection_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_collection(tmp_path_factory.mktemp("searcher") / "c", n=N, part_size=25)


@pytest.fixture(scope="module")
def searcher(collection_dir: Path) -> Searcher:
    return Searcher(Collection.open(collection_dir))


def test_an_items_own_image_finds_it_first(searcher: Searcher) -> None:
    for item in (0, 31, N - 1):
        path = searcher.collection.rows([item])[0]["path"]
        hits = searcher.search_image(Image.open(path), k=3)[0]
        assert hits[0]["id"] == item and hits[0]["score"] == pytest.approx(1.0, abs=2e-3)
        assert hits[0]["path"] == path and hits[0]["caption"].endswith(f"(item {item})")
        assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)


def test_text_results_are_the_brute_force_top_k(searcher: Searcher) -> None:
    q = searcher.encode_texts(["a red square", "a blue circle"])
    assert q.shape == (2, searcher.dim) and q.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1.0, atol=1e-5)
    rows = searcher.collection.embeddings()
    expected = np.argsort(-(q @ rows.T), axis=1, kind="stable")[:, :5]
    found = searcher.search_text(["a red square", "a blue circle"], k=5)
    assert [[h["id"] for h in hits] for hits in found] == expected.tolist()
    alone = searcher.search_text("a red square", k=5)[0]  # batched or alone: the same hits
    assert [h["id"] for h in alone] == [h["id"] for h in found[0]]
    assert [h["score"] for h in alone] == pytest.approx([h["score"] for h in found[0]], abs=1e-5)


def test_vector_checks(searcher: Searcher) -> None:
    d = searcher.dim
    with pytest.raises(ValueError, match=f"dimension {d + 1}.*dimension {d}"):
        searcher.search_vectors(np.ones((1, d + 1), np.float32), 3)
    with pytest.raises(ValueError, match="not all zero"):
        searcher.search_vectors(np.zeros((1, d), np.float32), 3)
    with pytest.raises(ValueError, match="k must be"):
        searcher.search_vectors(np.ones(d, np.float32), 0)
    unnormalised = searcher.collection.embeddings()[5] * 7.0  # scaled: still cosine scores
    hits = searcher.search_vectors(unnormalised, 1000)[0]
    assert len(hits) == N and hits[0]["id"] == 5 and hits[0]["score"] == pytest.approx(1.0, abs=1e-3)
    assert all(a["score"] >= b["score"] for a, b in itertools.pairwise(hits))
    with pytest.raises(ValueError, match="no texts"):
        searcher.encode_texts([])


def test_uses_a_built_index(collection_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "c"
    shutil.copytree(collection_dir, copy)
    build_collection_index(copy, kind="ivf")
    s = Searcher(Collection.open(copy))
    assert s.index.info["kind"] == "ivf" and s.index.info["recall_at_10"] >= 0.95
    exact = Searcher(Collection.open(collection_dir))
    assert exact.index.info["kind"] == "exact"
    q = exact.collection.embeddings()[[3, 17]]
    assert [h[0]["id"] for h in s.search_vectors(q, 5)] == [3, 17]


def test_index_of_another_size_is_refused(collection_dir: Path) -> None:
    collection = Collection.open(collection_dir)
    fewer = VectorIndex(ExactParts([collection.embeddings()[:10]]), {"kind": "exact"})
    with pytest.raises(ValueError, match=f"holds 10 rows, the collection {N}"):
        Searcher(collection, index=fewer)


def test_another_model_is_an_error(collection_dir: Path, tmp_path: Path) -> None:
    import torch

    from clipforge.api import create_model, get_text_processor
    from clipforge.checkpoints.native import save_pretrained

    torch.manual_seed(123)
    net = create_model("tiny-vit")
    other = save_pretrained(net, tmp_path / "other", get_text_processor(net))
    s = Searcher(Collection.open(collection_dir), model=str(other))
    with pytest.raises(ValueError, match="fingerprint"):
        s.search_text("a red square")


def test_the_model_loads_once_across_threads(collection_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    collection = Collection.open(collection_dir)
    calls: list[Any] = []
    real = collection.eval_model

    def slow(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        time.sleep(0.2)
        return real(*args, **kwargs)

    monkeypatch.setattr(collection, "eval_model", slow)
    s = Searcher(collection)
    out: list[np.ndarray] = []
    threads = [threading.Thread(target=lambda: out.append(s.encode_texts(["a green triangle"]))) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(out) == 6
    assert all(np.array_equal(o, out[0]) for o in out)
