"""``clipforge embed --model M --data SRC --output DIR``: embed a data source into a collection for search.

Examples::

    clipforge embed --model runs/quickstart/final --data photos/ --output photos.emb
    clipforge embed --model ViT-B-32 --pretrained laion2b_s34b_b79k --data pairs.parquet --output pairs.emb --texts
    clipforge embed --model runs/x/final --data 'shards/{00000..00099}.tar' --output web.emb --precision bf16
    clipforge embed --model runs/quickstart/final --data photos/ --output photos.emb --backend onnx
    torchrun --nproc_per_node 8 -m clipforge.cli.main embed --model runs/x/final --data shards/ --output web.emb

SRC is any data clipforge reads: an image folder (captions from ``.txt`` sidecars when present, else none), a
CSV/TSV/parquet table (``--image-key``, ``--caption-key``, ``--image-root``), tar shards (a file, a brace range, a
glob or a folder of ``*.tar``; one part per shard) or ``synthetic``. DIR gets clip-retrieval's layout
(``img_emb/``, ``text_emb/`` with ``--texts``, ``metadata/``) plus ``embed.json``, part markers and ``stats.json``;
see ``clipforge.search.collection``. A killed run continues where it stopped when the same command is run again;
another command on the same DIR is an error naming what differs, unless ``--overwrite``. Bad images are skipped and
counted by reason. With ``--texts`` every row needs a caption: samples without one are skipped (``no_caption``).

``--backend onnx`` runs the model's towers in onnxruntime on the CPU instead of PyTorch: they are exported once
into DIR/onnx/fp32/ (checked against PyTorch; the same embeddings to about 1e-6) and reused when the run is resumed;
on a CPU this is faster than PyTorch at the same fp32 precision (``benchmarks/embed.py``). ``--quantize int8``
(onnx only) quantises the export's MatMul weights to int8 (DIR/onnx/int8/): faster again, embeddings close to but
not equal to fp32 ones. ``--precision bf16/fp16`` is PyTorch autocast, so it needs ``--backend torch``. The backend
and quantisation are part of the collection's identity (resuming with another is an error, as another model is);
``clipforge search`` and ``serve`` embed queries with the same backend by default. Needs
``pip install 'clipforge[onnx]'``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from clipforge.cli.args import non_negative_int, positive_int, verb_parser
from clipforge.data.decode import ALPHA_RULES
from clipforge.data.tables import CAPTION_KEY, IMAGE_KEY

FLAG_NAMES = {"path": "--data", "urls": "--data", "image_key": "--image-key", "caption_key": "--caption-key",
              "image_root": "--image-root", "": "--data"}


def register(sub: argparse._SubParsersAction) -> None:
    """Adds the ``embed`` verb."""
    from clipforge.search.embed import BACKENDS, DTYPES, PRECISIONS, QUANTIZATIONS, default_workers

    p = verb_parser(sub, "embed", help="embed images (and captions) of a data source into a collection for search",
                    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True,
                   help="a saved model directory / checkpoint, hf-hub:ORG/REPO[@REV], a model name with --pretrained "
                        "(or NAME:TAG), or a preset / OpenCLIP name alone (random weights)")
    p.add_argument("--pretrained", default=None, metavar="TAG", help="OpenCLIP's pretrained tag of --model")
    p.add_argument("--data", required=True, help="image folder, table (CSV/TSV/parquet), tar shards, or synthetic")
    p.add_argument("--output", required=True, metavar="DIR", help="the collection directory (new, empty, or the "
                                                                  "same command's unfinished run)")
    p.add_argument("--texts", action="store_true", help="also embed each row's caption (text_emb/, aligned)")
    p.add_argument("--batch-size", type=positive_int, default=64, help="images per batch, ≥ 1 (default: 64)")
    p.add_argument("--workers", type=non_negative_int, default=default_workers(),
                   help=f"decoding worker processes, ≥ 0 (default: {default_workers()}: one per core, at most 8)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 … (default: cuda if available)")
    p.add_argument("--precision", choices=tuple(PRECISIONS), default="fp32",
                   help="fp32, or bf16 / fp16 autocast (bf16 works on CPUs too; torch backend only) (default: fp32)")
    p.add_argument("--backend", choices=BACKENDS, default="torch",
                   help="torch, or onnx: the towers exported into DIR/onnx/ and run by onnxruntime on the CPU "
                        "(default: torch)")
    p.add_argument("--quantize", choices=QUANTIZATIONS, default=None,
                   help="int8: quantise the ONNX export's MatMul weights (--backend onnx only) (default: none, fp32)")
    p.add_argument("--dtype", choices=DTYPES, default="float16", help="storage dtype (default: float16)")
    p.add_argument("--part-size", type=positive_int, default=10_000,
                   help="inputs per part, the unit of resumption (default: 10000; tar shards: one part per shard)")
    p.add_argument("--limit", type=positive_int, default=None,
                   help="embed only the first N inputs (folders, tables, synthetic)")
    p.add_argument("--image-key", default=IMAGE_KEY, help=f"table column of images (default: {IMAGE_KEY})")
    p.add_argument("--caption-key", default=CAPTION_KEY, help=f"table column of captions (default: {CAPTION_KEY})")
    p.add_argument("--image-root", default="", help="folder a table's image paths are relative to "
                                                    "(default: the table's folder)")
    p.add_argument("--alpha", choices=ALPHA_RULES, default="white",
                   help="transparent images: composite on white (default), or drop the alpha channel")
    p.add_argument("--overwrite", action="store_true", help="replace DIR when it holds another command's collection")
    p.add_argument("--allow-pickle", action="store_true",
                   help="allow a pickled .bin/.pt checkpoint as --model (torch.load with weights_only=True)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run)


def summary(stats: dict[str, Any], output: str) -> str:
    """The one-line report of a finished run."""
    skipped = sum(stats["skipped"].values())
    reasons = ", ".join(f"{n} {reason}" for reason, n in stats["skipped"].items())
    parts = f"{stats['parts']} part{'s' if stats['parts'] != 1 else ''}"
    line = (f"embedded {stats['embedded']} of {stats['inputs']} inputs into {output} ({parts}"
            f"{f', {skipped} skipped: {reasons}' if skipped else ''}); {stats['embedded_this_run']} this run at "
            f"{stats['images_per_s']:.1f} images/s on {stats['world_size']} process(es)")
    return line


def run(args: argparse.Namespace) -> int:
    """Embeds ``--data`` into ``--output``; prints the one-line summary (rank 0)."""
    from clipforge.data.decode import DecodeLimits
    from clipforge.data.sources import source_config
    from clipforge.search.embed import EmbedSettings, embed

    config = source_config(args.data, image_key=args.image_key, caption_key=args.caption_key,
                           image_root=args.image_root, decode=DecodeLimits(alpha=args.alpha))
    settings = EmbedSettings(batch_size=args.batch_size, workers=args.workers, precision=args.precision,
                             backend=args.backend, quantize=args.quantize, dtype=args.dtype,
                             part_size=args.part_size, texts=args.texts, limit=args.limit,
                             overwrite=args.overwrite, progress=not args.no_progress)
    stats = embed(args.model, config, args.output, settings, pretrained=args.pretrained, device=args.device,
                  allow_pickle=args.allow_pickle, names=FLAG_NAMES)
    if stats:
        print(summary(stats, args.output))
        if stats["embedded"] == 0 and args.texts and stats["skipped"].get("no_caption"):
            print("note: with --texts every row needs a caption; this source has none (drop --texts to embed the "
                  "images alone)", file=sys.stderr)
    return 0
