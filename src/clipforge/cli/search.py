"""``clipforge index DIR`` and ``clipforge search DIR``: thin layers over ``clipforge.search``.

Examples::

    clipforge index photos-emb                        # auto: exact, HNSW, IVF or IVF-PQ by size; prints index.json
    clipforge index photos-emb --kind ivfpq --memory 2G
    clipforge search photos-emb --text "a red bicycle" --k 5
    clipforge search photos-emb --image query.jpg --json

``index`` builds DIR/index/<modality>.faiss over a finished collection (``clipforge embed``), tunes its search
parameters for recall@10 ≥ 0.95 against exact search on held-out queries, and records kind, parameters, the
reason for the choice, build time, memory and recall in DIR/index.json. ``search`` embeds the query with the
model recorded in DIR/embed.json (``--model`` names another copy of it; different weights are an error) and
prints id, score, path and caption of the top k; without an index it searches the embeddings exactly. Needs
``pip install 'clipforge[search]'``.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from clipforge.cli.args import verb_parser, whole_number

KIND_CHOICES = ("auto", "flat", "ivf", "hnsw", "ivfpq")  # clipforge.search.index.KINDS (kept import-free here)
MAX_K = 10_000


def register(sub: argparse._SubParsersAction) -> None:
    """Adds the ``index`` and ``search`` verbs."""
    p = verb_parser(sub, "index", help="build a vector index over an embedded collection (faiss)",
                    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("directory", metavar="DIR", help="a collection written by `clipforge embed`")
    p.add_argument("--kind", choices=KIND_CHOICES, default="auto",
                   help="index kind (default: auto, by size and --memory)")
    p.add_argument("--memory", default=None, metavar="BUDGET",
                   help="the most memory the index may take, e.g. 4G, 512M, 2GiB (default: no limit)")
    p.add_argument("--modality", choices=("image", "text"), default="image",
                   help="which embeddings to index (default: image)")
    p.set_defaults(func=run_index)

    p = verb_parser(sub, "search", help="search an embedded collection by text or image",
                    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("directory", metavar="DIR", help="a collection written by `clipforge embed`")
    query = p.add_mutually_exclusive_group(required=True)
    query.add_argument("--text", help="a text query")
    query.add_argument("--image", metavar="PATH", help="an image file as the query")
    p.add_argument("--k", type=whole_number(1, MAX_K), default=10, help=f"results, 1..{MAX_K} (default: 10)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--model", default=None, metavar="SPEC",
                   help="another copy of the collection's model (a moved checkpoint); must have the same weights")
    p.add_argument("--device", default=None, help="cpu, cuda … (default: the CPU)")
    p.add_argument("--backend", choices=("torch", "onnx"), default=None,
                   help="how the query is embedded: torch, or onnx (onnxruntime on the CPU, the export in DIR/onnx/) "
                        "(default: the backend the collection was embedded with)")
    p.set_defaults(func=run_search)


def run_index(args: argparse.Namespace) -> int:
    """Builds the index and prints its index.json entry."""
    from clipforge.search.collection import Collection
    from clipforge.search.index import build_collection_index, parse_memory

    memory = parse_memory(args.memory) if args.memory is not None else None
    size = Collection(args.directory).size  # also the clear error for a folder that is no finished collection
    # faiss reports nothing while it trains and adds (minutes at millions of rows): say what is under way.
    if size >= 100_000:
        print(f"indexing {size:,} {args.modality} embeddings of {args.directory} (kind {args.kind}); k-means, adding "
              "and recall tuning take seconds per 100,000 rows on a CPU core…", file=sys.stderr, flush=True)
    entry = build_collection_index(args.directory, kind=args.kind, memory=memory, modality=args.modality)
    if size >= 100_000:
        print(f"built {entry['kind']} ({entry.get('factory')}) in {entry.get('build_seconds')} s, tuned in "
              f"{entry.get('tune_seconds')} s: recall@10 {entry.get('recall_at_10')}", file=sys.stderr)
    print(json.dumps(entry, indent=2, ensure_ascii=False))
    return 0


def _query_image(path: str) -> Any:
    from clipforge.data.decode import BadSample, DecodeLimits, decode_image, read_bytes

    try:
        return decode_image(read_bytes(path, 64 << 20), DecodeLimits())
    except BadSample as e:
        raise ValueError(f"--image {path}: {e}") from None


def run_search(args: argparse.Namespace) -> int:
    """Runs one query and prints the top k (a table, or JSON with ``--json``)."""
    from clipforge.search.collection import Collection
    from clipforge.search.searcher import Searcher

    if args.text is not None and not args.text.strip():
        raise ValueError("--text: empty query")
    searcher = Searcher(Collection.open(args.directory), device=args.device, model=args.model,
                        backend=args.backend)
    if args.text is not None:
        results = searcher.search_text(args.text, args.k)[0]
    else:
        results = searcher.search_image(_query_image(args.image), args.k)[0]
    if args.json:
        query = {"text": args.text} if args.text is not None else {"image": args.image}
        print(json.dumps({"query": query, "k": args.k, "index": searcher.index.info.get("kind"),
                          "results": results}, indent=2))
        return 0
    for rank, hit in enumerate(results, 1):
        caption = f"  {hit['caption']}" if hit["caption"] else ""
        print(f"{rank:>3}  id {hit['id']:<8} {hit['score']:.4f}  {hit['path']}{caption}")
    return 0
