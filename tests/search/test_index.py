"""clipforge.search.index: auto's choice and its reasons, recall of every kind against exact search, index.json,
memory-mapped loading (measured by the process's anonymous RSS) and exact search over the parts."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from helpers_index import clustered, write_collection

from clipforge.search.index import (
    KINDS,
    IndexPlan,
    Thresholds,
    VectorIndex,
    build_collection_index,
    build_index,
    choose_index,
    estimate_bytes,
    parse_memory,
    recall_at_k,
)

pytest.importorskip("faiss")
@pytest.fixture(autouse=True, scope="module")
def one_thread() -> None:
    """faiss on one OpenMP thread: on a shared 2-core machine two spinning threads are several times slower."""
    import faiss

    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(threads)


SMALL = Thresholds(flat_max=500, hnsw_max=3000, ivfpq_min=10**9)  # every kind on a few thousand rows


def test_parse_memory() -> None:
    assert parse_memory("4G") == 4 * 10**9
    assert parse_memory("4GB") == 4 * 10**9
    assert parse_memory("2GiB") == 2 * 2**30
    assert parse_memory("512M") == 512 * 10**6
    assert parse_memory("1.5k") == 1500
    assert parse_memory("123456") == 123456
    for bad in ("", "abc", "-1G", "0", "4X", "G"):
        with pytest.raises(ValueError, match="memory budget"):
            parse_memory(bad)


def test_auto_chooses_by_size_and_budget() -> None:
    t = Thresholds(flat_max=1000, hnsw_max=10_000, ivfpq_min=1_000_000)
    assert choose_index(1000, 64, None, t).kind == "flat"
    hnsw = choose_index(5000, 64, None, t)
    assert hnsw.kind == "hnsw" and "HNSW" in hnsw.reason
    ivf = choose_index(50_000, 64, None, t)
    assert ivf.kind == "ivf" and ivf.params["nlist"] * 39 <= 50_000 and "50000 > 10000" in ivf.reason
    assert choose_index(2_000_000, 64, None, t).kind == "ivfpq"
    # full vectors are 50_000·64·4 = 12.8 MB: a 5 MB budget forces IVF-PQ, and the reason says why
    pq = choose_index(50_000, 64, 5 * 10**6, t)
    assert pq.kind == "ivfpq" and "do not fit" in pq.reason and pq.params["refine"] == "SQ8"
    tighter = choose_index(50_000, 64, 10**6, t)  # SQ8 re-ranking no longer fits: smaller codes
    assert tighter.kind == "ivfpq" and tighter.params["refine"] != "SQ8"
    # defaults: small → exact, 1M → IVF (HNSW builds too slowly there), 100M → IVF-PQ
    assert choose_index(50_000, 512, None).kind == "flat"
    assert choose_index(300_000, 512, None).kind == "hnsw"
    assert choose_index(1_000_000, 512, None).kind == "ivf"
    assert choose_index(100_000_000, 512, None).kind == "ivfpq"


def test_bad_plans_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="unknown index kind 'annoy'.*auto, flat, ivf, hnsw, ivfpq"):
        choose_index(1000, 64, None, kind="annoy")
    with pytest.raises(ValueError, match=r"too small.*even IVF-PQ.*needs [0-9.]+ MiB"):
        choose_index(1_000_000, 512, 1000)
    with pytest.raises(ValueError, match=r"too small for a flat index.*needs 0.2 MiB"):
        choose_index(1000, 64, 1000, kind="flat")
    with pytest.raises(ValueError, match="empty"):
        choose_index(0, 64, None)
    assert set(KINDS) == {"auto", "flat", "ivf", "hnsw", "ivfpq"}


def test_recall_at_k_known_answers() -> None:
    x = clustered(300, 16, seed=1)
    q = clustered(20, 16, seed=2)

    class Wrong:  # returns the exact bottom 10: none of the true top 10
        def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
            order = np.argsort(queries @ x.T, axis=1)[:, :k]
            return np.zeros(order.shape, np.float32), order

    class Half:  # the true top 5, then 5 of the bottom
        def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
            order = np.argsort(-(queries @ x.T), axis=1)
            return np.zeros((len(queries), k), np.float32), np.concatenate([order[:, :5], order[:, -5:]], axis=1)

    assert recall_at_k(Wrong(), x, q) == 0.0
    assert recall_at_k(Half(), x, q) == pytest.approx(0.5)
    flat = build_index(x, IndexPlan("flat"), q)
    assert recall_at_k(flat, x, q) == 1.0


@pytest.mark.parametrize("kind", ["ivf", "hnsw", "ivfpq"])
def test_each_kind_reaches_the_recall_target_on_fresh_queries(kind: str) -> None:
    x = clustered(4000, 32, clusters=16, spread=0.8)
    plan = choose_index(len(x), 32, None, SMALL, kind=kind)
    record: dict = {}
    index = build_index(x, plan, clustered(400, 32, clusters=16, spread=0.8, seed=5), record=record)
    assert index.ntotal == 4000 and record["factory"].startswith({"ivf": "IVF", "hnsw": "HNSW", "ivfpq": "IVF"}[kind])
    assert record["target_met"] and record["recall_at_10"] >= 0.95 and record["search_params"]
    fresh = clustered(300, 32, clusters=16, spread=0.8, seed=9)  # neither tuned on nor measured at build
    assert recall_at_k(index, x, fresh) >= 0.93
    import faiss  # the budget arithmetic matches what faiss writes

    assert faiss.serialize_index(index).size == pytest.approx(estimate_bytes(kind, 4000, 32, plan.params), rel=0.15)


@pytest.mark.parametrize(("n", "memory", "kind"), [(1500, None, "hnsw"), (6000, None, "ivf"), (6000, "600K", "ivfpq")])
def test_auto_meets_the_target_where_it_is_approximate(tmp_path: Path, n: int, memory: str | None, kind: str) -> None:
    x = clustered(n, 48, clusters=24, spread=0.9, seed=n)
    directory = write_collection(tmp_path / "c", x, clustered(n, 48, clusters=24, spread=0.9, seed=n + 1),
                                 part_size=700)
    entry = build_collection_index(directory, memory=memory, thresholds=SMALL)
    assert entry["kind"] == kind and entry["memory_bytes"] <= (parse_memory(memory) if memory else 10**12)
    assert entry["recall_at_10"] >= 0.95 and entry["target_met"]
    assert entry["query_source"].startswith("text embeddings")
    index = VectorIndex.load(directory)
    assert index.info["search_params"] == entry["search_params"]
    fresh = clustered(200, 48, clusters=24, spread=0.9, seed=77)
    stored = np.concatenate([np.load(p).astype(np.float32) for p in sorted((directory / "img_emb").glob("*.npy"))])
    assert recall_at_k(index, stored, fresh) >= 0.93


def test_collection_index_files_and_record(tmp_path: Path) -> None:
    x = clustered(2500, 32, seed=3)
    directory = write_collection(tmp_path / "c", x, part_size=1000)  # no text: image rows plus noise as queries
    entry = build_collection_index(directory, kind="ivf", memory="10M")
    assert (directory / "index" / "image.faiss").stat().st_size == entry["memory_bytes"]
    on_disk = json.loads((directory / "index.json").read_text(encoding="utf-8"))
    assert on_disk["format"] == "clipforge-index" and on_disk["indices"]["image"] == entry
    for key in ("kind", "params", "reason", "build_seconds", "memory_bytes", "recall_at_10", "n", "dim", "faiss",
                "date", "search_params"):
        assert key in entry, key
    assert (entry["kind"], entry["n"], entry["dim"], entry["memory_budget_bytes"]) == ("ivf", 2500, 32, 10**7)
    assert entry["query_source"].startswith("held-out image rows")
    assert entry["search_params"]["nprobe"] >= 1


def test_refuses_what_is_not_a_finished_collection(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no embed.json manifest.*a collection written by `clipforge embed`"):
        build_collection_index(tmp_path)
    unfinished = write_collection(tmp_path / "u", clustered(50, 8), complete=False)
    with pytest.raises(ValueError, match="has not finished.*complete: false"):
        build_collection_index(unfinished)
    with pytest.raises(ValueError, match="has not finished"):
        VectorIndex.load(unfinished)
    done = write_collection(tmp_path / "d", clustered(50, 8))
    with pytest.raises(ValueError, match="unknown index kind 'lsh'"):
        build_collection_index(done, kind="lsh")
    with pytest.raises(ValueError, match="no text embeddings.*--texts"):
        build_collection_index(done, modality="text")


def test_exact_fallback_before_any_index(tmp_path: Path) -> None:
    x = clustered(2300, 24, seed=4)
    directory = write_collection(tmp_path / "c", x, part_size=500, dtype="float16")
    index = VectorIndex.load(directory)
    assert index.info["kind"] == "exact" and (index.size, index.dim) == (2300, 24)
    stored = x.astype(np.float16).astype(np.float32)
    q = clustered(7, 24, seed=8)
    scores, ids = index.search(q, 10)
    truth = np.argsort(-(q @ stored.T), axis=1, kind="stable")[:, :10]
    assert ids.dtype == np.int64 and scores.dtype == np.float32
    np.testing.assert_allclose(scores, np.take_along_axis(q @ stored.T, truth, axis=1), rtol=1e-5, atol=1e-5)
    assert (np.diff(scores, axis=1) <= 0).all()
    small = write_collection(tmp_path / "s", clustered(4, 24), part_size=3)
    scores, ids = VectorIndex.load(small).search(q[:2], 6)  # k above the size: empty slots are -1
    assert (ids[:, 4:] == -1).all() and sorted(ids[0, :4].tolist()) == [0, 1, 2, 3]


def test_stale_index_is_refused(tmp_path: Path) -> None:
    directory = write_collection(tmp_path / "c", clustered(600, 16), part_size=300)
    build_collection_index(directory, kind="flat")
    write_collection(directory, clustered(900, 16), part_size=300)  # embedded again, bigger
    with pytest.raises(ValueError, match="holds 600 rows but the collection has 900.*clipforge index"):
        VectorIndex.load(directory)


RSS_SCRIPT = textwrap.dedent("""
    import json, sys
    def anon():
        for line in open("/proc/self/status"):
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    from clipforge.search.index import VectorIndex
    import faiss, numpy as np
    before = anon()
    index = VectorIndex.load(sys.argv[1], mmap=sys.argv[2] == "1")
    loaded = anon()
    index.search(np.ones((1, index.dim), np.float32) / index.dim ** 0.5, 5)
    print(json.dumps({"load": loaded - before, "search": anon() - before}))
""")


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_loading_maps_the_index_instead_of_reading_it(tmp_path: Path, kind: str) -> None:
    x = clustered(40_000, 256, seed=6)  # a 41 MB index
    directory = write_collection(tmp_path / "c", x, part_size=20_000)
    entry = build_collection_index(directory, kind=kind)
    size = entry["memory_bytes"]
    measured = {}
    for mmap in ("1", "0"):
        out = subprocess.run([sys.executable, "-c", RSS_SCRIPT, str(directory), mmap], capture_output=True,
                             text=True, check=True)
        measured[mmap] = json.loads(out.stdout)
    assert measured["0"]["load"] > 0.8 * size  # read into memory: the measurement sees it
    assert measured["1"]["load"] < 0.1 * size, measured  # mapped: pages stay in the file (page cache)
    assert measured["1"]["search"] < 0.2 * size, measured


def test_auto_falls_back_to_ivf_when_hnsw_misses_the_target(tmp_path: Path) -> None:
    x = clustered(2000, 32, clusters=8, spread=0.9, seed=11)
    directory = write_collection(tmp_path / "c", x, part_size=1000)
    entry = build_collection_index(directory, thresholds=SMALL, target=1.01)  # no graph reaches recall 1.01
    assert entry["kind"] == "ivf" and "HNSW reached only" in entry["reason"] and "IVF-Flat" in entry["reason"]
    assert VectorIndex.load(directory).info["kind"] == "ivf"
