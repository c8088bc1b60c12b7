"""Vector index build time, memory, recall@10 and queries/s for each kind, against exact search, in one run.

    python benchmarks/index.py                          # 1,000,000 clustered vectors of dimension 512
    python benchmarks/index.py --size 100000 --kinds flat ivf hnsw

Data: a mixture of ``--clusters`` Gaussians on the unit sphere (a centre plus isotropic noise of norm ``--spread``,
re-normalised; with the default 2.0 a row's cosine to its centre is about 0.45 and to another row of its cluster about
0.2, against 0 ± 0.04 across clusters: near the point where the clusters stop being trivially separable, 1.5 makes one
IVF cell enough and 2.5 needs nearly all of them); queries are drawn from the same mixture but are not in the index
(held out). Half of them tune each approximate kind's search parameters (``clipforge.search.index.tune_search``,
target recall@10 ≥ 0.95), the other half measure recall@10 (intersection: the share of each query's exact top 10 found
in the index's top 10) and queries/s, both batched (all queries in one call) and one query per call. Exact search
(``IndexFlatIP``) is timed in the same run. ``auto`` is what ``clipforge index`` picks at this size with no memory
budget; its figures are those of the kind it picks. Memory is the size of the written index file (what is
memory-mapped at load). Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from typing import Any

import numpy as np

from clipforge.search.index import IndexPlan, Thresholds, build_index, choose_index, faiss_module


def clustered(n: int, dim: int, clusters: int, spread: float, rng: np.random.Generator,
              centres: np.ndarray | None = None, block: int = 100_000) -> tuple[np.ndarray, np.ndarray]:
    """``n`` rows of a Gaussian mixture on the sphere (float32, L2-normalised), and the centres used."""
    if centres is None:
        centres = rng.standard_normal((clusters, dim), dtype=np.float32)
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    out = np.empty((n, dim), np.float32)
    for i in range(0, n, block):  # in blocks: no second n × dim temporary
        m = min(block, n - i)
        x = centres[rng.integers(0, len(centres), m)] + rng.standard_normal((m, dim), dtype=np.float32) * (
            spread / np.sqrt(dim))
        out[i:i + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out, centres


def timed_queries(index: Any, queries: np.ndarray, singles: int) -> dict[str, float]:
    """Queries/s with all queries in one call, and one query per call (over the first ``singles``)."""
    start = time.perf_counter()
    index.search(queries, 10)
    batch = len(queries) / (time.perf_counter() - start)
    start = time.perf_counter()
    for q in queries[:singles]:
        index.search(q[None], 10)
    single = singles / (time.perf_counter() - start)
    return {"batch_queries_per_s": round(batch, 1), "single_queries_per_s": round(single, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1_000_000, help="indexed vectors (default 1,000,000)")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--spread", type=float, default=2.0, help="noise norm around each centre")
    parser.add_argument("--queries", type=int, default=2000, help="held-out queries: half tune, half measure")
    parser.add_argument("--singles", type=int, default=200, help="queries timed one per call")
    parser.add_argument("--kinds", nargs="+", default=["flat", "ivf", "ivfpq", "hnsw", "auto"],
                        choices=["flat", "ivf", "hnsw", "ivfpq", "auto"])
    parser.add_argument("--hnsw-m", type=int, default=32)
    parser.add_argument("--hnsw-ef-construction", type=int, default=40,
                        help="HNSW build effort (clipforge index uses 80; lower here to bound a 2-core build)")
    parser.add_argument("--ivfpq-refine", nargs="+", default=[], choices=["SQfp16", "SQ8", "SQ4", "none"],
                        help="also build ivfpq with these re-ranking codes (default: only what clipforge picks)")
    parser.add_argument("--threads", type=int, default=0, help="faiss OpenMP threads (0: faiss's default)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    faiss = faiss_module()
    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    start = time.perf_counter()
    x, centres = clustered(args.size, args.dim, args.clusters, args.spread, rng)
    queries, _ = clustered(args.queries, args.dim, args.clusters, args.spread, rng, centres)
    gen_seconds = time.perf_counter() - start
    half = args.queries // 2
    eval_q = queries[half:]

    start = time.perf_counter()
    flat = faiss.IndexFlatIP(args.dim)
    flat.add(x)
    all_truth = np.asarray(flat.search(queries, 10)[1])
    truth = all_truth[half:]
    exact = {"build_seconds": round(time.perf_counter() - start, 3), "memory_bytes": args.size * args.dim * 4 + 45,
             "recall_at_10": 1.0, **timed_queries(flat, eval_q, min(args.singles, 50))}
    del flat

    results: dict[str, Any] = {}
    tmp = tempfile.mkdtemp(prefix="clipforge-index-bench-")
    auto = choose_index(args.size, args.dim, None, Thresholds())
    builds = [(k, k, None) for k in args.kinds if k != "auto"]
    if "ivfpq" in args.kinds:
        builds += [(f"ivfpq_{r}", "ivfpq", None if r == "none" else r) for r in args.ivfpq_refine]
    for name, kind, refine in builds:
        plan = choose_index(args.size, args.dim, None, kind=kind)
        if name != kind:
            plan = IndexPlan("ivfpq", {**plan.params, "refine": refine}, f"--ivfpq-refine {refine}")
        if kind == "hnsw":
            plan = IndexPlan("hnsw", {"M": args.hnsw_m, "efConstruction": args.hnsw_ef_construction}, plan.reason)
        record: dict[str, Any] = {}
        print(f"# building {name} ({plan.params})", flush=True)
        index = build_index(x, plan, queries, record=record, seed=args.seed, truth=all_truth)
        path = os.path.join(tmp, f"{name}.faiss")
        faiss.write_index(index, path)
        check = np.asarray(index.search(eval_q, 10)[1])
        results[name] = {
            "factory": record["factory"], "params": plan.params, "search_params": record["search_params"],
            "build_seconds": record["build_seconds"], "tune_seconds": record["tune_seconds"],
            "train_rows": record["train_rows"], "memory_bytes": os.path.getsize(path),
            "recall_at_10": record["recall_at_10"], "target_met": record["target_met"],
            "recall_at_10_check": round(float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(check, truth,
                                                                                                   strict=True)])), 4),
            **timed_queries(index, eval_q, args.singles)}
        results[name]["speedup_batch_vs_exact"] = round(results[name]["batch_queries_per_s"] /
                                                        exact["batch_queries_per_s"], 1)
        results[name]["speedup_single_vs_exact"] = round(results[name]["single_queries_per_s"] /
                                                         exact["single_queries_per_s"], 1)
        os.remove(path)
        del index
        print(f"# {name}: {json.dumps(results[name])}", flush=True)
    if "auto" in args.kinds:
        results["auto"] = {"chooses": auto.kind, "params": auto.params, "reason": auto.reason,
                           "figures": f"those of {auto.kind}" if auto.kind in results else "kind not built this run"}
    out = {"settings": {"size": args.size, "dim": args.dim, "clusters": args.clusters, "spread": args.spread,
                        "queries_tune": half, "queries_measure": len(eval_q), "singles": args.singles,
                        "threads": faiss.omp_get_max_threads(), "k": 10, "target_recall_at_10": 0.95,
                        "data_seconds": round(gen_seconds, 1)},
           "versions": {"faiss": faiss.__version__, "numpy": np.__version__, "python": platform.python_version()},
           "exact": exact, "kinds": results}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
