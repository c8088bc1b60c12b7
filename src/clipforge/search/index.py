"""faiss indices over a collection's embeddings: what ``clipforge index`` builds and search loads.

Every index scores by inner product over L2-normalised rows (= cosine similarity). The kinds:

- ``flat``: exact search (``IndexFlatIP``), n·d multiply-adds per query, no recall loss.
- ``hnsw``: a graph (``HNSW32``) over the full vectors; fast queries, slow builds, vectors + graph in memory.
- ``ivf``: inverted lists over k-means cells (``IVF{nlist},Flat``), full vectors; builds in minutes at millions.
- ``ivfpq``: IVF, product-quantised codes re-ranked by 8-bit (4-bit, none) scalar codes: full vectors do not fit.
- ``auto`` (:func:`choose_index`): flat for small collections, HNSW or IVF for medium ones, IVF-PQ for large
  ones or when ``--memory`` forbids full vectors, as autofaiss does; the reason is recorded. Where an HNSW graph
  plateaus below the recall target, :func:`build_collection_index` builds IVF-Flat instead and says so.

Approximate kinds get their search parameters (``nprobe``, ``efSearch``, ``k_factor``) by measuring recall@10
against exact search on held-out queries, raising them until recall@10 ≥ 0.95 (:func:`tune_search`). Where no
setting reaches it (IVF-PQ whose budget allows only coarse re-ranking codes, on data whose neighbours' scores are
close), the best setting is kept and index.json says ``target_met: false``.

``DIR/index/<modality>.faiss`` is loaded memory-mapped (``IO_FLAG_MMAP_IFC``, zero-copy: in faiss-cpu 1.15 it
maps the vectors and codes of every kind here, and IVF's inverted lists; HNSW's neighbour lists, n·2M·4 bytes,
are still read into memory), so a large index is served from the page cache, not from a copy in RAM. A
collection without an index is searched exactly over its memory-mapped ``.npy`` parts (:class:`ExactParts`).
"""

from __future__ import annotations

import datetime
import json
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

KINDS = ("auto", "flat", "ivf", "hnsw", "ivfpq")
TARGET_RECALL = 0.95
INDEX_FORMAT = "clipforge-index"
INDEX_JSON = "index.json"
_FOLDERS = {"image": "img_emb", "text": "text_emb"}
_UNITS = {"": 1, "b": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "t": 1000**4,
          "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}


def faiss_module() -> Any:
    """``faiss``, or an ImportError naming the extra."""
    try:
        import faiss
    except ImportError:
        raise ImportError("vector indices need faiss: pip install 'clipforge[search]'") from None
    return faiss


def parse_memory(text: str) -> int:
    """A memory budget in bytes: ``"4G"`` / ``"4GB"`` (10⁹), ``"2GiB"`` (2³⁰), ``"512M"``, ``"1.5g"``, plain bytes.

    Raises:
        ValueError: not a positive amount with a known unit.
    """
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]i?b?|b)?\s*", str(text).lower())
    unit = (m.group(2) or "") if m else ""
    unit = unit[:-1] if unit.endswith("b") and len(unit) == 2 and unit[1] == "b" else unit  # "gb" → "g"
    if not m or unit not in _UNITS or float(m.group(1)) <= 0:
        raise ValueError(f"memory budget {text!r}: expected a positive size such as 4G, 512M, 2GiB or 1000000 "
                         "(bytes)")
    return int(float(m.group(1)) * _UNITS[unit])


@dataclass(frozen=True)
class Thresholds:
    """Where ``auto`` switches kinds (parameters so tests can exercise every kind on small data).

    Attributes:
        flat_max: Up to this many rows: exact search.
        hnsw_max: Up to this many rows (and vectors + graph within budget): HNSW; above it: IVF-Flat.
        ivfpq_min: From this many rows: IVF-PQ even when full vectors would fit.
    """

    flat_max: int = 100_000
    hnsw_max: int = 500_000
    ivfpq_min: int = 20_000_000


@dataclass
class IndexPlan:
    """What to build: ``kind`` (one of :data:`KINDS` but ``auto``), its ``params`` and why it was chosen."""

    kind: str
    params: dict[str, Any] = field(default_factory=dict)
    reason: str = ""


def _nlist(n: int) -> int:
    """IVF cells: a power of two near 4·√n, with at least 39 training rows per cell (faiss's minimum)."""
    target = 4 * math.sqrt(max(n, 1))
    nlist = 2 ** max(0, round(math.log2(target)))
    while nlist > 1 and nlist * 39 > n:
        nlist //= 2
    return nlist


def _divisor_at_most(d: int, target: int) -> int:
    return max(m for m in range(1, max(1, target) + 1) if d % m == 0)


def estimate_bytes(kind: str, n: int, dim: int, params: dict[str, Any]) -> int:
    """The approximate size of an index (its file, and its memory when fully loaded)."""
    if kind == "flat":
        return n * dim * 4
    if kind == "hnsw":
        return n * dim * 4 + int(n * (2 * params.get("M", 32) * 4 * 1.1 + 12))
    centroids = params.get("nlist", 1) * dim * 4
    if kind == "ivf":
        return n * (dim * 4 + 8) + centroids
    refine = {"SQfp16": 2 * dim, "SQ8": dim, "SQ4": (dim + 1) // 2, None: 0}[params.get("refine")]
    return n * (params["m"] + 8 + refine) + centroids + 256 * dim * 4


def choose_index(n: int, dim: int, memory_bytes: int | None = None, thresholds: Thresholds | None = None,
                 kind: str = "auto") -> IndexPlan:
    """The index to build for ``n`` rows of dimension ``dim`` within ``memory_bytes`` (see the module docstring).

    Args:
        n: Rows.
        dim: Their dimension.
        memory_bytes: The most the index may take; no limit when ``None``.
        thresholds: Where ``auto`` switches kinds.
        kind: ``auto``, or a kind to build whatever the size (its parameters are still chosen here).

    Raises:
        ValueError: an unknown kind, no rows, or a budget too small for the kind (or, for ``auto``, for even
            IVF-PQ at 4 bytes a row); the message says what is needed.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown index kind {kind!r}: expected one of {', '.join(KINDS)}")
    if n < 1 or dim < 1:
        raise ValueError(f"cannot index {n} rows of dimension {dim}: the collection is empty")
    t = thresholds or Thresholds()
    budget = math.inf if memory_bytes is None else memory_bytes
    nlist = _nlist(n)
    plans = {"flat": IndexPlan("flat", {}), "hnsw": IndexPlan("hnsw", {"M": 32, "efConstruction": 80}),
             "ivf": IndexPlan("ivf", {"nlist": nlist})}
    mib = f"{budget / 2**20:.0f} MiB" if memory_bytes is not None else "no limit"

    def fits(plan: IndexPlan) -> bool:
        return estimate_bytes(plan.kind, n, dim, plan.params) <= budget

    def ivfpq() -> IndexPlan:
        # 8-bit re-ranking codes reach the recall of float16 ones (given enough candidates, see tune_search) at half
        # the size; coarser codes only when the budget demands
        options = [(d8, r) for r in ("SQ8", "SQ4", None) for d8 in (8, 16)] + [(32, None), (64, None), (128, None)]
        for dsub, refine in options:
            plan = IndexPlan("ivfpq", {"nlist": nlist, "m": _divisor_at_most(dim, max(1, dim // dsub)),
                                       "nbits": 8, "refine": refine})
            if fits(plan):
                return plan
        need = estimate_bytes("ivfpq", n, dim, plan.params)
        raise ValueError(f"memory budget {mib} is too small for {n} rows of dimension {dim}: even IVF-PQ with "
                         f"{plan.params['m']}-byte codes needs {need / 2**20:.1f} MiB ({need} bytes)")

    if kind != "auto":
        plan = ivfpq() if kind == "ivfpq" else plans[kind]
        need = estimate_bytes(plan.kind, n, dim, plan.params)
        if need > budget:
            raise ValueError(f"memory budget {mib} is too small for a {kind} index of {n} rows of dimension {dim}: "
                             f"it needs {need / 2**20:.1f} MiB ({need} bytes); use --kind auto or ivfpq")
        plan.reason = f"--kind {kind} (asked for); about {need / 2**20:.1f} MiB"
        return plan
    full = n * dim * 4
    if n <= t.flat_max and fits(plans["flat"]):
        plan = plans["flat"]
        plan.reason = (f"n = {n} ≤ {t.flat_max}: exact search ({n * dim:.3g} multiply-adds a query) is fast enough "
                       "and loses no recall")
    elif n >= t.ivfpq_min or not fits(plans["ivf"]):
        plan = ivfpq()
        why = (f"n = {n} ≥ {t.ivfpq_min}" if n >= t.ivfpq_min else
               f"the full vectors ({full / 2**20:.1f} MiB) do not fit the {mib} budget")
        plan.reason = (f"{why}: IVF-PQ with {plan.params['m']}-byte codes"
                       f"{', re-ranked by ' + plan.params['refine'] + ' codes' if plan.params['refine'] else ''}, "
                       f"{plan.params['nlist']} cells, about {estimate_bytes('ivfpq', n, dim, plan.params) / 2**20:.1f}"
                       " MiB")
    elif n <= t.hnsw_max and fits(plans["hnsw"]):
        plan = plans["hnsw"]
        plan.reason = (f"{t.flat_max} < n = {n} ≤ {t.hnsw_max} and the vectors + graph fit ({mib}): HNSW32, the "
                       "fastest queries at high recall")
    else:
        plan = plans["ivf"]
        why = f"n = {n} > {t.hnsw_max}" if n > t.hnsw_max else f"the HNSW graph does not fit the {mib} budget"
        plan.reason = (f"{why} (HNSW builds too slowly / too large) and the full vectors fit ({mib}): IVF-Flat with "
                       f"{nlist} cells")
    return plan


def factory_string(plan: IndexPlan, dim: int) -> str:
    """The faiss ``index_factory`` string of a plan."""
    p = plan.params
    if plan.kind == "flat":
        return "Flat"
    if plan.kind == "hnsw":
        return f"HNSW{p['M']},Flat"
    if plan.kind == "ivf":
        return f"IVF{p['nlist']},Flat"
    if plan.kind == "ivfpq":
        refine = f",Refine({p['refine']})" if p.get("refine") else ""
        return f"IVF{p['nlist']},PQ{p['m']}x{p.get('nbits', 8)}{refine}"
    raise ValueError(f"unknown index kind {plan.kind!r}: expected one of {', '.join(KINDS[1:])}")


def normalized(vectors: np.ndarray) -> np.ndarray:
    """Rows as contiguous float32, L2-normalised (zero rows stay zero)."""
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.maximum(norms, 1e-12), dtype=np.float32)


def held_out_queries(vectors: np.ndarray, count: int = 1000, noise: float = 0.75, seed: int = 0) -> np.ndarray:
    """Queries near the data but not in it: sampled rows plus Gaussian noise of norm ≈ ``noise``, re-normalised."""
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(vectors), size=min(count, len(vectors)), replace=False)
    x = np.asarray(vectors[np.sort(rows)], dtype=np.float32)
    x = x + rng.standard_normal(x.shape, dtype=np.float32) * (noise / math.sqrt(x.shape[1]))
    return normalized(x)


def exact_neighbours(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """The true top-``k`` ids of each query by inner product (faiss ``IndexFlatIP``)."""
    faiss = faiss_module()
    flat = faiss.IndexFlatIP(vectors.shape[1])
    flat.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return np.asarray(flat.search(np.ascontiguousarray(queries, dtype=np.float32), k)[1])


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean |found ∩ truth| / k over queries (intersection recall@k)."""
    k = truth.shape[1]
    return float(np.mean([len(set(f[f >= 0].tolist()) & set(t.tolist())) / k
                          for f, t in zip(found, truth, strict=True)]))


def recall_at_k(index: Any, vectors: np.ndarray, queries: np.ndarray, k: int = 10,
                truth: np.ndarray | None = None) -> float:
    """Intersection recall@k of ``index`` against exact inner-product search over ``vectors``: the mean fraction of
    each query's true top ``k`` that the index returns in its top ``k``.

    Args:
        index: A faiss index (or anything with ``search(queries, k) -> (scores, ids)``) over ``vectors``.
        vectors: (N, D) the indexed rows.
        queries: (Q, D) held-out queries.
        k: Neighbours compared.
        truth: The exact top-k ids when already computed.
    """
    k = min(k, len(vectors))
    truth = exact_neighbours(vectors, queries, k) if truth is None else truth[:, :k]
    found = np.asarray(index.search(np.ascontiguousarray(queries, dtype=np.float32), k)[1])
    return _recall(found, truth)


def set_search_params(index: Any, params: dict[str, Any]) -> None:
    """Sets ``nprobe`` / ``efSearch`` / ``k_factor`` on ``index`` (and its sub-indices) via ``ParameterSpace``."""
    faiss = faiss_module()
    space = faiss.ParameterSpace()
    for name, value in params.items():
        if name == "k_factor":  # ParameterSpace does not know IndexRefine's
            faiss.downcast_index(index).k_factor = float(value)
        else:
            space.set_index_parameter(index, name, value)


def tune_search(index: Any, kind: str, vectors: np.ndarray, queries: np.ndarray, k: int = 10,
                target: float = TARGET_RECALL, truth: np.ndarray | None = None) -> dict[str, Any]:
    """The cheapest search parameters reaching recall@k ≥ ``target`` on ``queries`` (left set on ``index``).

    HNSW raises ``efSearch`` and IVF ``nprobe`` step by step. Re-ranked IVF-PQ has two knobs, ``nprobe`` (cells
    scanned) and ``k_factor`` (PQ candidates re-ranked per result): for each ``nprobe`` (doubling), ``k_factor`` doubles
    while it gains recall, the cheap knob first (on data whose neighbours' scores are close, too few PQ candidates
    cap recall at any ``nprobe``). When no setting reaches the target, the best one found is kept and
    ``target_met`` is false.

    Returns:
        ``{"search_params", "tune_recall_at_k", "target_met"}``.
    """
    truth = exact_neighbours(vectors, queries, k) if truth is None else truth
    if kind == "flat":
        return {"search_params": {}, "tune_recall_at_k": 1.0, "target_met": True}
    tried: dict[tuple[tuple[str, Any], ...], float] = {}

    def measure(params: dict[str, Any]) -> float:
        key = tuple(sorted(params.items()))
        if key not in tried:
            set_search_params(index, params)
            tried[key] = recall_at_k(index, vectors, queries, k, truth)
        return tried[key]

    def result(params: dict[str, Any], r: float) -> dict[str, Any]:
        set_search_params(index, params)
        return {"search_params": params, "tune_recall_at_k": round(r, 4), "target_met": r >= target}

    if kind == "hnsw":
        steps = [{"efSearch": e} for e in (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 2048) if e >= k]
    else:
        nlist = int(faiss_module().extract_index_ivf(index).nlist)
        steps = [{"nprobe": p} for p in sorted({min(2**i, nlist) for i in range(int(math.log2(nlist)) + 2)})]
    if kind == "ivfpq" and type(index).__name__.startswith("IndexRefine"):
        best_pq: tuple[float, dict[str, Any]] = (-1.0, {"nprobe": 1, "k_factor": 2})
        for step in steps:  # cells doubling; at each, more candidates (cheap) until they stop helping
            factor, r = 2, -1.0
            while factor <= 256:
                params = {"nprobe": step["nprobe"], "k_factor": factor}
                gained = measure(params) - r
                r = measure(params)
                if r > best_pq[0]:
                    best_pq = (r, params)
                if r >= target or gained < 0.002:
                    break
                factor *= 2
            if best_pq[0] >= target:
                break
        params, r = best_pq[1], best_pq[0]
        return result(params, r)
    best: tuple[float, dict[str, Any]] = (-1.0, steps[-1])
    for params in steps:
        r = measure(params)
        if r > best[0]:
            best = (r, params)
        if r >= target:
            break
    return result(best[1], best[0])


def build_index(vectors: np.ndarray, plan: IndexPlan, queries: np.ndarray | None = None,
                target: float = TARGET_RECALL, train_size: int | None = None, seed: int = 0,
                record: dict[str, Any] | None = None, truth: np.ndarray | None = None) -> Any:
    """Builds and tunes the index a plan describes over ``vectors`` (rows L2-normalised here; ids 0 … N-1).

    Half of ``queries`` tunes the search parameters (:func:`tune_search`), the other half measures recall@10.

    Args:
        vectors: (N, D) embeddings.
        plan: From :func:`choose_index`.
        queries: (Q, D) held-out queries; sampled rows plus noise (:func:`held_out_queries`) when ``None``.
        target: The recall@10 the tuning aims for.
        train_size: Rows IVF k-means trains on (a random sample); 50 a cell (at most N) when ``None``.
        seed: Seeds the training sample and the queries.
        truth: The exact top-10 ids of ``queries`` when already known (saves an exact search).
        record: When given, filled with ``factory``, ``search_params``, ``recall_at_10`` (on the evaluation half),
            ``target_met``, ``train_rows``, ``build_seconds``, ``tune_seconds``.

    Returns:
        The faiss index, its search parameters set.
    """
    faiss = faiss_module()
    x = normalized(vectors)
    n, dim = x.shape
    factory = factory_string(plan, dim)
    start = time.perf_counter()
    index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    train_rows = 0
    if not index.is_trained:
        train_rows = min(n, train_size or 50 * int(plan.params.get("nlist", 1)))
        sample = np.random.default_rng(seed).choice(n, size=train_rows, replace=False)
        ivf = faiss.downcast_index(faiss.extract_index_ivf(index))  # the IndexIVFPQ, not its IndexIVF base
        ivf.cp.niter = 10  # k-means converges enough for search in 10 rounds; faiss's 25 triples the build
        ivf.cp.seed = seed
        pq = getattr(ivf, "pq", None)
        if pq is not None:  # 64 rows a centroid and 10 rounds per sub-quantizer: faiss's 256 and 25 cost minutes
            pq.cp.niter, pq.cp.max_points_per_centroid, pq.cp.seed = 10, 64, seed
            ivf.do_polysemous_training = False  # index_factory turns it on; unused here, and most of the build time
        index.train(x[np.sort(sample)])
    if plan.kind == "hnsw":
        index.hnsw.efConstruction = int(plan.params.get("efConstruction", 40))
    for i in range(0, n, 65536):  # adding in chunks keeps temporary buffers small
        index.add(x[i:i + 65536])
    built = time.perf_counter() - start
    q = normalized(queries) if queries is not None else held_out_queries(x, seed=seed)
    k = min(10, n)
    truth = exact_neighbours(x, q, k) if truth is None else truth[:, :k]
    half = max(1, len(q) // 2) if len(q) > 1 else 1
    tune_q, tune_t = q[:half], truth[:half]
    eval_q, eval_t = (q[half:], truth[half:]) if len(q) > 1 else (q, truth)
    start = time.perf_counter()
    tuned = tune_search(index, plan.kind, x, tune_q, k, target, tune_t)
    tune_seconds = time.perf_counter() - start
    if record is not None:
        record.update(factory=factory, search_params=tuned["search_params"], target_met=tuned["target_met"],
                      recall_at_10=round(recall_at_k(index, x, eval_q, k, eval_t), 4),
                      tune_recall_at_10=tuned["tune_recall_at_k"], queries=len(q), train_rows=train_rows,
                      build_seconds=round(built, 3), tune_seconds=round(tune_seconds, 3))
    return index


# -- collections --------------------------------------------------------------------------------------------------

def collection_parts(directory: str | Path, modality: str = "image") -> list[np.ndarray]:
    """The memory-mapped ``modality`` embedding parts of a finished collection, in id order (read through
    :class:`~clipforge.search.collection.Collection`, which checks the manifest and each part against its marker).

    Raises:
        ValueError: not a collection, an unfinished one (embed.json ``complete: false``), an unknown modality or
            one the collection lacks, or parts that disagree with their markers.
    """
    from clipforge.search.collection import Collection

    if modality not in _FOLDERS:
        raise ValueError(f"unknown modality {modality!r}: expected image or text")
    collection = Collection(directory)
    parts = list(collection.part_arrays(modality))
    if not parts:
        raise ValueError(f"{directory}: the collection has no {modality} embedding parts")
    return parts


def _concatenated(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([np.asarray(a, dtype=np.float32) for a in parts])


def read_index_json(directory: str | Path) -> dict[str, Any]:
    """``DIR/index.json`` (``{"format", "version", "indices": {modality: entry}}``), empty when absent."""
    path = Path(directory) / INDEX_JSON
    if not path.is_file():
        return {"format": INDEX_FORMAT, "version": 1, "indices": {}}
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or data.get("format") != INDEX_FORMAT or not isinstance(data.get("indices"), dict):
        raise ValueError(f"{path}: not a clipforge index record (format should be {INDEX_FORMAT!r})")
    return data


def build_collection_index(directory: str | Path, kind: str = "auto", memory: int | str | None = None,
                           modality: str = "image", thresholds: Thresholds | None = None,
                           target: float = TARGET_RECALL) -> dict[str, Any]:
    """Builds ``DIR/index/<modality>.faiss`` over a finished collection and records it in ``DIR/index.json``.

    Recall is measured on the collection's text embeddings as queries when it has them (real cross-modal queries
    for an image index), else on held-out image rows with noise.

    Args:
        directory: The collection.
        kind: One of :data:`KINDS`.
        memory: The budget (bytes, or a string for :func:`parse_memory`); none when ``None``.
        modality: ``image`` or ``text`` embeddings.
        thresholds: ``auto``'s switch points.
        target: The recall@10 the search parameters are tuned for.

    Returns:
        The index.json entry: kind, params, reason, factory, search_params, build_seconds, memory_bytes,
        recall_at_10, target_met, queries, query_source, n, dim, faiss version, date, file.

    Raises:
        ValueError: not a finished collection, an unknown kind, or a budget too small.
    """
    faiss = faiss_module()
    root = Path(directory)
    if kind not in KINDS:
        raise ValueError(f"unknown index kind {kind!r}: expected one of {', '.join(KINDS)}")
    budget = parse_memory(memory) if isinstance(memory, str) else memory
    from clipforge.search.collection import Collection

    collection = Collection(root)
    x = normalized(_concatenated(collection_parts(root, modality)))
    n, dim = x.shape
    plan = choose_index(n, dim, budget, thresholds, kind)
    other = "text" if modality == "image" else "image"
    other_parts = collection_parts(root, other) if other in collection.modalities else []
    if sum(len(p) for p in other_parts):
        rows = normalized(_concatenated(other_parts))
        pick = np.random.default_rng(0).choice(len(rows), size=min(1000, len(rows)), replace=False)
        queries, source = rows[np.sort(pick)], f"{other} embeddings of the collection ({min(1000, len(rows))})"
    else:
        queries, source = held_out_queries(x), f"held-out {modality} rows plus noise ({min(1000, n)})"
    record: dict[str, Any] = {}
    index = build_index(x, plan, queries, target=target, record=record)
    if kind == "auto" and plan.kind == "hnsw" and not record["target_met"]:
        # a graph built on hard data can plateau below the target at any efSearch; IVF-Flat cannot (all cells
        # probed is exact search), so auto keeps its promise at the cost of a second build
        reached = record["recall_at_10"]
        plan = IndexPlan("ivf", {"nlist": _nlist(n)}, f"{plan.reason}; but HNSW reached only recall@10 {reached} "
                                                      f"(target {target}), so IVF-Flat with {_nlist(n)} cells")
        record = {}
        index = build_index(x, plan, queries, target=target, record=record)
    out = root / "index" / f"{modality}.faiss"
    out.parent.mkdir(exist_ok=True)
    tmp = out.with_suffix(".faiss.tmp")
    faiss.write_index(index, str(tmp))
    tmp.replace(out)
    entry = {"kind": plan.kind, "params": plan.params, "reason": plan.reason, **record,
             "memory_bytes": out.stat().st_size, "memory_budget_bytes": budget, "query_source": source,
             "n": n, "dim": dim, "faiss": faiss.__version__, "date": datetime.date.today().isoformat(),
             "file": f"index/{modality}.faiss"}
    data = read_index_json(root)
    data["indices"][modality] = entry
    tmp_json = root / (INDEX_JSON + ".tmp")
    tmp_json.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp_json.replace(root / INDEX_JSON)
    return entry


from clipforge.search.vector_index import ExactParts, VectorIndex  # noqa: E402  (re-exported: one import for users)

__all__ = ["KINDS", "ExactParts", "IndexPlan", "Thresholds", "VectorIndex", "build_collection_index", "build_index",
           "choose_index", "parse_memory", "recall_at_k"]
