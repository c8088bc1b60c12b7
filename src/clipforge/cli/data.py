"""``clipforge data``: write training shards and check them.

    clipforge data shards pairs.csv out/ --shard-size 10000 --workers 8   # a CSV/TSV/parquet table
    clipforge data shards photos/ out/ --shard-size 1000 --resize 384 # a folder with .txt sidecars
    clipforge data shards synthetic out/ --count 20000 --shard-size 1000 --captions 3
    clipforge data stats "out/{00000..00019}.tar"                     # count and validate every sample
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from clipforge.cli.args import non_negative_int, positive_int, verb_parser, whole_number

SOURCES = ("auto", "csv", "tsv", "parquet", "folder", "synthetic")
# How this command names the data fields in its messages (the train config says ``data.image_key``).
MAX_WORKERS = 256  # --workers at most: each is a process holding a decoder and a shard writer
MAX_CAPTIONS = 100  # --captions at most: captions per synthetic image, one per line of its .txt
NAMES = {"": "SRC", "path": "SRC", "image_key": "--image-key", "caption_key": "--caption-key",
         "image_root": "--image-root"}


def register(sub: argparse._SubParsersAction) -> None:
    """Adds ``data shards`` and ``data stats``."""
    p = verb_parser(sub, "data", help="write webdataset shards (img2dataset layout) and check them")
    verbs = p.add_subparsers(dest="data_verb", metavar="ACTION", required=True)

    s = verbs.add_parser("shards", help="write SRC (a table, a folder, or 'synthetic') as tar shards into OUT")
    s.add_argument("src", metavar="SRC", help="a .csv/.tsv/.parquet table, a folder of images + .txt, or 'synthetic'")
    s.add_argument("out", metavar="OUT", help="output folder (gets 00000.tar, ... and stats.json)")
    s.add_argument("--shard-size", type=positive_int, default=10_000, help="samples per shard, ≥ 1 (default: 10000)")
    s.add_argument("--from", dest="kind", choices=SOURCES, default="auto",
                   help="source kind (default: from SRC, as clipforge.data.source_kind decides)")
    s.add_argument("--image-key", default="filepath", help="table column with the image path (default: filepath)")
    s.add_argument("--caption-key", default="caption", help="table column with the caption (default: caption)")
    s.add_argument("--image-root", default="", help="folder the table's image paths are relative to")
    s.add_argument("--resize", type=positive_int,
                   help="shorter side at most this many pixels, ≥ 1 (re-encodes as JPEG)")
    s.add_argument("--count", type=positive_int, default=10_000,
                   help="synthetic: number of samples, ≥ 1 (default: 10000)")
    s.add_argument("--seed", type=non_negative_int, default=0, help="synthetic: the world's seed, ≥ 0")
    s.add_argument("--image-size", type=whole_number(16, 1024), default=64,
                   help="synthetic: image side, 16..1024 (default: 64)")
    s.add_argument("--captions", type=whole_number(1, MAX_CAPTIONS), default=1,
                   help=f"synthetic: captions per image, one per line, 1..{MAX_CAPTIONS} (default: 1)")
    s.add_argument("--max-pixels", type=positive_int, help="skip images with more pixels than this (≥ 1)")
    s.add_argument("--workers", type=whole_number(1, MAX_WORKERS), default=1,
                   help=f"processes writing shards in parallel, 1..{MAX_WORKERS} (default: 1)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=shards_command)

    s = verbs.add_parser("stats", help="count and validate the samples of tar shards (prints JSON)")
    s.add_argument("urls", metavar="SHARDS", help="brace range, glob, folder or file; sources joined by ::")
    s.add_argument("--caption-field", default="txt", help="the caption field (default: txt)")
    s.add_argument("--max-pixels", type=positive_int, help="count images with more pixels than this as too_large "
                                                            "(≥ 1)")
    s.set_defaults(func=stats_command)


def _limits(max_pixels: int | None) -> Any:
    from clipforge.data.decode import DecodeLimits

    return (DecodeLimits(max_pixels=max_pixels) if max_pixels is not None else DecodeLimits()).validate()


def shards_command(args: argparse.Namespace) -> int:
    """Writes the shards and prints the stats summary."""
    from clipforge.data import build_source, source_config
    from clipforge.data.writer import write_shards

    limits = _limits(args.max_pixels)
    config = source_config(args.src, args.kind, image_key=args.image_key, caption_key=args.caption_key,
                           image_root=args.image_root, decode=limits)
    if config.kind == "synthetic":
        load, count = _synthetic_loader(args), args.count
    elif config.kind == "shards":
        raise ValueError(f"{args.src} is tar shards already; give a table, a folder or 'synthetic'")
    else:
        pairs = build_source(config, names=NAMES)
        load, count = (lambda i: (*pairs.raw(i), {"source": pairs.source(i)})), len(pairs)
    if count <= 0:
        raise ValueError(f"{args.src}: nothing to write")
    stats = write_shards(load, count, args.out, args.shard_size, limits, args.resize, source=args.src,
                         progress=not args.quiet, workers=args.workers)
    print(f"wrote {stats['samples']} samples in {len(stats['shards'])} shard(s) to {args.out} "
          f"({stats['image_bytes'] / 1e6:.1f} MB of images, {stats['seconds']:.1f} s); "
          f"skipped {sum(stats['skipped'].values())}: {stats['skipped'] or 'none'}")
    return 0


def _synthetic_loader(args: argparse.Namespace) -> Any:
    """``load(i)`` for the synthetic world's training split: image, ``--captions`` captions, attributes."""
    from clipforge.data.synthetic import SyntheticWorld, WorldConfig

    world = SyntheticWorld(WorldConfig(seed=args.seed, image_size=args.image_size))

    def load(i: int) -> tuple[Any, str, dict[str, Any]]:
        sample = world.sample("train", i)
        captions = [sample.caption]
        if args.captions > 1:
            captions += [c for c in world.captions("train", i, args.captions, "en") if c != sample.caption]
        attributes = {k: v for k, v in sample.attributes.items() if isinstance(v, str | int | float)}
        return sample.image, "\n".join(captions[:args.captions]), {"source": f"synthetic:{i}", **attributes}

    return load


def stats_command(args: argparse.Namespace) -> int:
    """Prints the shards' sample counts (read, usable, skipped by reason) as JSON."""
    from clipforge.data.shards import inspect_shards

    stats = inspect_shards(args.urls, _limits(args.max_pixels), caption_field=args.caption_field, progress=True)
    print(json.dumps(stats, indent=2))
    return 0
