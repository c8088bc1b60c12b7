"""``clipforge serve DIR``: a collection behind an HTTP API and a web page (a thin layer over
``clipforge.search.server``).

Examples::

    clipforge serve photos-emb                               # the page at http://127.0.0.1:8000/
    clipforge serve photos-emb --port 9000 --token s3cret    # every route but /healthz needs the token
    clipforge serve photos-emb --host 0.0.0.0 --token s3cret --device cuda
    clipforge serve photos-emb --backend onnx                # queries embedded by onnxruntime on the CPU

DIR is a finished collection (``clipforge embed``), with or without an index (``clipforge index``; exact search
without one). The model the collection was embedded with is loaded from the spec in DIR/embed.json, or ``--model``
when it has moved; its weights must be the recorded ones. The server binds to 127.0.0.1 unless ``--host`` says
otherwise; give ``--token`` before binding elsewhere. With a token the page asks for it, or takes it from the URL
fragment: http://HOST:PORT/#token=TOKEN. Needs ``pip install 'clipforge[server]'``.

Queries are embedded with the backend the collection was embedded with (``clipforge embed --backend``), or
``--backend``: ``torch`` (PyTorch, on ``--device``) or ``onnx`` (the towers exported once into DIR/onnx/, checked
against PyTorch, and run by onnxruntime on the CPU; int8 when the collection was embedded with ``--quantize int8``;
needs ``pip install 'clipforge[onnx]'``).
"""

from __future__ import annotations

import argparse
import sys

from clipforge.cli.args import verb_parser, whole_number

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def register(sub: argparse._SubParsersAction) -> None:
    """Adds the ``serve`` verb."""
    p = verb_parser(sub, "serve", help="serve a collection: HTTP search API and web page",
                    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("directory", metavar="DIR", help="a collection written by `clipforge embed`")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=whole_number(1, 65535), default=8000, help="port (default: 8000)")
    p.add_argument("--token", default=None,
                   help="require `Authorization: Bearer TOKEN` on every route but /healthz")
    p.add_argument("--device", default=None,
                   help="where the model runs: cpu, cuda, cuda:1 (default: cuda when available)")
    p.add_argument("--backend", choices=("torch", "onnx"), default=None,
                   help="how queries are embedded: torch, or onnx (onnxruntime on the CPU) (default: the backend the "
                        "collection was embedded with)")
    p.add_argument("--model", default=None, metavar="SPEC",
                   help="the collection's model under another spelling (a moved checkpoint); its weights must be "
                        "the recorded ones")
    p.add_argument("--max-k", type=whole_number(1, 10_000), default=100,
                   help="most results one search may ask for (default: 100)")
    p.add_argument("--batch-items", type=whole_number(1, 4096), default=64,
                   help="most queries encoded in one batch (default: 64; 1 turns micro-batching off)")
    p.add_argument("--batch-wait-ms", type=whole_number(0, 1000), default=2,
                   help="how long a batch waits for more queries, in ms (default: 2)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Runs the server until interrupted."""
    from clipforge.search.server import ServerLimits, serve

    if args.token is not None and not args.token.strip():
        raise ValueError("--token: empty")
    if args.host not in LOOPBACK and args.token is None:
        print(f"warning: serving on {args.host} without --token: anyone who can reach it can search the collection "
              "and read its images", file=sys.stderr)
    serve(args.directory, host=args.host, port=args.port, token=args.token, device=args.device, model=args.model,
          backend=args.backend,
          limits=ServerLimits(max_k=args.max_k, batch_items=args.batch_items, batch_wait_ms=args.batch_wait_ms))
    return 0
