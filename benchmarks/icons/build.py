"""Builds the icon benchmark: Iconify icon sets from npm → training shards and CLIP_benchmark evaluation folders.

    python benchmarks/icons/build.py --cache ~/.cache/clipforge-icons --out /data/icons [--sizes 64 224]
        [--sets ph material-symbols tabler lucide carbon mdi bi] [--packages-dir node_modules]

Installs the pinned ``@iconify-json/<prefix>`` packages with npm into ``--cache`` (or reads an existing
``node_modules`` given as ``--packages-dir``: every set found there unless ``--sets`` names some), leaves out
emoji sets, reads concepts and styles (``iconify.py``), rasterises each icon to an RGBA PNG at each size, and
writes under ``--out``:

    manifest.json                       sets, licences, protocols, paths, the summary (also printed on stdout)
    index.jsonl                         one line per icon: set, name, concept, style, split
    licenses/<prefix>.json, .txt        each set's licence record, and its LICENSE file (or the licence named)
    <size>px/train/                     training shards (clipforge.data.writer; ``data.kind: shards``)
    <size>px/curve/<n>/                 the learning curve's nested subsets: the first n training pairs
    <size>px/eval/cross_style_zeroshot/     CLIP_benchmark wds folders (``clipforge eval zeroshot --data``)
    <size>px/eval/cross_style_retrieval/    (``clipforge eval retrieval --data``)
    <size>px/eval/unseen_concepts_zeroshot/

Protocols (seeded; the same seed and sets give the same splits):

- **cross-style**: styles matching ``--eval-styles`` (``set:style`` patterns; a bare prefix is the whole set)
  never appear in training; their icons of concepts seen in training are the zero-shot set (classes: every
  training concept, or with ``--cross-style-classes eval`` only those with an evaluation image) and, one image
  per concept, the retrieval set (captions without style words).
- **unseen concepts**: ``--heldout-fraction`` of the training styles' concepts never appear in training; their
  icons in the training styles are the zero-shot set, classes the held-out names.
- **learning curve**: the training pairs in a seeded order; subset ``n`` is the first ``n`` (nested).
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import iconify  # this folder's module, next to the script
from iconify import Icon, IconSet

# Pinned package versions (npm registry, 2026-12-01). Multi-style sets name one concept in several styles.
PINNED = {"ph": "1.2.2", "material-symbols": "1.2.98", "tabler": "1.2.41", "lucide": "1.2.137",
          "carbon": "1.2.29", "mdi": "1.2.3", "bi": "1.2.7"}
DEFAULT_SETS = tuple(PINNED)
# One style of each multi-style set and one whole set are never trained on.
DEFAULT_EVAL_STYLES = ("ph:duotone", "material-symbols:*sharp", "tabler:filled", "bi")
CURVE_SIZES = (1000, 5000, 20000)
MIN_SHARDS = 8  # a training folder has at least this many shards (when it has that many pairs): 8 readers
EVAL_SHARD_SIZE = 1000
LICENSE_FILES = ("license", "license.md", "license.txt", "licence", "licence.md", "licence.txt", "copying")


def log(message: str) -> None:
    """A progress line on stderr."""
    print(f"[icons] {message}", file=sys.stderr, flush=True)


def install(cache: Path, specs: Sequence[str]) -> Path:
    """Installs ``@iconify-json/<prefix>@<version>`` for each spec (``prefix`` or ``prefix@version``; a bare
    prefix takes its :data:`PINNED` version) into ``cache`` with npm; returns ``cache/node_modules``.
    Packages already there at that version are not fetched again.

    Raises:
        ValueError: A bare prefix with no pinned version.
        FileNotFoundError: npm is not on PATH.
        RuntimeError: npm failed (its output is in the message).
    """
    node_modules = cache / "node_modules"
    wanted = []
    for spec in specs:
        prefix, _, version = spec.partition("@")
        version = version or PINNED.get(prefix, "")
        if not version:
            raise ValueError(f"--sets: {prefix!r} has no pinned version; name one as {prefix}@VERSION")
        package = iconify.package_dir(node_modules, prefix) / "package.json"
        if not (package.is_file() and json.loads(package.read_text()).get("version") == version):
            wanted.append(f"@iconify-json/{prefix}@{version}")
    if not wanted:
        return node_modules
    npm = shutil.which("npm")
    if npm is None:
        raise FileNotFoundError("npm not found on PATH: install Node.js, or pass --packages-dir node_modules")
    cache.mkdir(parents=True, exist_ok=True)
    log(f"npm install {' '.join(wanted)}")
    done = subprocess.run([npm, "install", "--prefix", str(cache), "--no-audit", "--no-fund", *wanted],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"npm install failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    return node_modules


def load_sets(node_modules: Path, prefixes: Sequence[str]) -> tuple[list[IconSet], dict[str, str]]:
    """The sets named (emoji sets left out), and ``{prefix: why}`` for each left out.

    Raises:
        FileNotFoundError: A named set is not installed in ``node_modules``.
    """
    sets, skipped = [], {}
    for prefix in prefixes:
        path = iconify.package_dir(node_modules, prefix)
        if not iconify.is_emoji_set(prefix) and not (path / "icons.json").is_file():
            raise FileNotFoundError(f"{path}: @iconify-json/{prefix} is not installed there")
        if iconify.is_emoji_set(prefix, iconify.read_info(path)):  # by prefix first: an emoji set is never read
            skipped[prefix] = "emoji set"
            log(f"{prefix}: emoji set, left out")
            continue
        sets.append(iconify.read_set(path, prefix))
        log(f"{prefix}: {len(sets[-1].icons)} icons, styles {sorted(set(sets[-1].styles.values()))}")
    return sets, skipped


def _rank(seed: int, *parts: str) -> str:
    """A seeded sort key that does not depend on which other items exist."""
    return hashlib.sha256("\x1f".join([str(seed), *parts]).encode()).hexdigest()


def matches(style_id: str, patterns: Sequence[str]) -> bool:
    """Whether ``set:style`` matches one of the patterns (fnmatch; a pattern without ``:`` is a whole set)."""
    return any(fnmatch.fnmatchcase(style_id, p if ":" in p else f"{p}:*") for p in patterns)


@dataclass
class Plan:
    """The protocols' splits: which icons go where, and the class lists."""

    train: list[Icon]
    cross_style: list[Icon]
    cross_style_classes: list[str]
    retrieval: list[Icon]
    unseen: list[Icon]
    heldout: list[str]
    train_styles: list[str]
    eval_styles: list[str]
    curve: list[int]
    unmatched_patterns: list[str] = field(default_factory=list)
    skipped_curve: list[int] = field(default_factory=list)


def plan(icons: Sequence[Icon], eval_styles: Sequence[str], heldout_fraction: float, curve_sizes: Sequence[int],
         seed: int, cross_style_classes: str = "all") -> Plan:
    """Splits ``icons`` into the protocols (see the module docstring).

    Raises:
        ValueError: The fraction is outside [0, 1), ``cross_style_classes`` is neither ``all`` nor ``eval``, or
            the split leaves no training or evaluation icons.
    """
    if not 0 <= heldout_fraction < 1:
        raise ValueError(f"--heldout-fraction must be in [0, 1), got {heldout_fraction}")
    if cross_style_classes not in ("all", "eval"):
        raise ValueError(f"--cross-style-classes must be 'all' or 'eval', got {cross_style_classes!r}")
    styles = sorted({i.style_id for i in icons})
    held_styles = [s for s in styles if matches(s, eval_styles)]
    unmatched = [p for p in eval_styles if not any(matches(s, [p]) for s in styles)]
    train_styles = [s for s in styles if s not in held_styles]
    if not train_styles or not held_styles:
        raise ValueError(f"--eval-styles {list(eval_styles)} leaves {len(train_styles)} training and "
                         f"{len(held_styles)} evaluation styles of {styles}; both must be non-empty")
    in_train_style = [i for i in icons if i.style_id in train_styles]
    candidates = sorted({i.concept for i in in_train_style})
    n_held = max(1, round(heldout_fraction * len(candidates))) if heldout_fraction > 0 else 0
    heldout = sorted(sorted(candidates, key=lambda c: _rank(seed, "concept", c))[:n_held])
    held = set(heldout)
    train = sorted((i for i in in_train_style if i.concept not in held), key=lambda i: _rank(seed, "train", i.set,
                                                                                              i.name))
    seen = {i.concept for i in train}
    cross = [i for i in icons if i.style_id in held_styles and i.concept in seen]
    if not train or not cross:
        raise ValueError(f"the split leaves {len(train)} training and {len(cross)} cross-style icons")
    classes = sorted(seen) if cross_style_classes == "all" else sorted({i.concept for i in cross})
    first: dict[str, Icon] = {}
    for icon in sorted(cross, key=lambda i: _rank(seed, "retrieval", i.set, i.name)):
        first.setdefault(icon.concept, icon)
    retrieval = sorted(first.values(), key=lambda i: (i.set, i.name))
    unseen = [i for i in in_train_style if i.concept in held]
    curve = sorted(n for n in set(curve_sizes) if 0 < n < len(train))
    return Plan(train, cross, classes, retrieval, unseen, heldout, train_styles, held_styles, curve, unmatched,
                sorted(n for n in set(curve_sizes) if n >= len(train)))


def shard_size_for(count: int, shard_size: int) -> int:
    """Samples per shard: at most ``shard_size``, and small enough for :data:`MIN_SHARDS` shards."""
    return max(1, min(shard_size, -(-count // MIN_SHARDS)))


def write_pairs(icons: Sequence[Icon], size: int, out: Path, shard_size: int, workers: int) -> dict[str, Any]:
    """Training shards of ``icons`` at ``size`` px with clipforge's shard writer (PNG kept, captions one a line)."""
    from clipforge.data.writer import write_shards

    def load(i: int) -> tuple[bytes, str, dict[str, Any]]:
        icon = icons[i]
        extra = {"set": icon.set, "name": icon.name, "concept": icon.concept, "style": icon.style}
        return iconify.rasterise(icon.svg(size)), "\n".join(icon.captions()), extra

    return write_shards(load, len(icons), out, shard_size_for(len(icons), shard_size), source=f"icons:{size}px",
                        progress=sys.stderr.isatty(), workers=workers)


def write_wds(icons: Sequence[Icon], size: int, out: Path, classes: list[str] | None) -> int:
    """A CLIP_benchmark webdataset folder: ``classes`` given: classification (``.cls``, ``classnames.txt``,
    templates), else retrieval (``.txt`` captions without style words, ``dataset_type.txt``). Returns the samples."""
    from clipforge.data.webdataset import write_tar_shard

    test = out / "test"
    test.mkdir(parents=True)
    index = {c: k for k, c in enumerate(classes)} if classes is not None else {}
    if classes is not None:
        (out / "classnames.txt").write_text("\n".join(classes) + "\n", encoding="utf-8")
        (out / "zeroshot_classification_templates.txt").write_text("\n".join(iconify.ZEROSHOT_TEMPLATES) + "\n")
    else:
        (out / "dataset_type.txt").write_text("retrieval\n")
    shards = -(-len(icons) // EVAL_SHARD_SIZE)
    for s in range(shards):
        samples = []
        for k, icon in enumerate(icons[s * EVAL_SHARD_SIZE:(s + 1) * EVAL_SHARD_SIZE], start=s * EVAL_SHARD_SIZE):
            meta = {"set": icon.set, "name": icon.name, "concept": icon.concept, "style": icon.style}
            sample: dict[str, bytes | str] = {"__key__": f"{k:08d}", "png": iconify.rasterise(icon.svg(size)),
                                              "json": json.dumps(meta)}
            if classes is not None:
                sample["cls"] = str(index[icon.concept])
            else:
                sample["txt"] = "\n".join(icon.captions(styled=False))
            samples.append(sample)
        write_tar_shard(test / f"{s}.tar", samples)
    (test / "nshards.txt").write_text(f"{shards}\n")
    return len(icons)


def write_licences(sets: Sequence[IconSet], out: Path) -> dict[str, dict[str, Any]]:
    """``out/licenses/<prefix>.json`` (the licence record) and ``.txt`` (the package's LICENSE file, or a text
    naming the licence and where its full text is); returns the listing for the manifest."""
    folder = out / "licenses"
    folder.mkdir(parents=True, exist_ok=True)
    listing = {}
    for icon_set in sets:
        record = icon_set.licence()
        files = [p for p in sorted(icon_set.path.iterdir()) if p.is_file() and p.name.lower() in LICENSE_FILES]
        record["license_file"] = files[0].name if files else None
        (folder / f"{icon_set.prefix}.json").write_text(json.dumps(record, indent=2) + "\n")
        if files:
            shutil.copyfile(files[0], folder / f"{icon_set.prefix}.txt")
        else:
            lic, author = record["license"], record["author"]
            (folder / f"{icon_set.prefix}.txt").write_text(
                f"{record['name']} ({icon_set.prefix}), icon set version {record['icon_set_version']}, "
                f"by {author.get('name', 'unknown')} {author.get('url', '')}\n"
                f"Licence: {lic.get('title', 'unknown')} (SPDX {lic.get('spdx', 'unknown')})\n"
                f"Full text: {lic.get('url', 'not given')}\n"
                f"The package {record['package']}@{record['version']} ships no LICENSE file; this is its "
                "info.json's licence.\n", encoding="utf-8")
        listing[icon_set.prefix] = {"json": f"licenses/{icon_set.prefix}.json",
                                    "text": f"licenses/{icon_set.prefix}.txt", "spdx": record["license"].get("spdx"),
                                    "title": record["license"].get("title")}
    return listing


def split_of(p: Plan) -> dict[tuple[str, str], str]:
    """``(set, name)`` → the split it is in (``train``, ``cross_style``, ``unseen_concepts``)."""
    tags = {(i.set, i.name): "train" for i in p.train}
    tags.update({(i.set, i.name): "cross_style" for i in p.cross_style})
    tags.update({(i.set, i.name): "unseen_concepts" for i in p.unseen})
    return tags


def summarise(sets: Sequence[IconSet], p: Plan, tags: dict[tuple[str, str], str]) -> dict[str, Any]:
    """Counts per set, style and split, and the concept counts."""
    icons = [i for s in sets for i in s.icons]
    per_style: dict[str, Counter[str]] = {}
    for icon in icons:
        per_style.setdefault(icon.style_id, Counter())[tags.get((icon.set, icon.name), "unused")] += 1
    return {
        "sets": {s.prefix: {"icons": len(s.icons), "dropped": dict(s.dropped), "version": s.version,
                            "styles": len(set(s.styles.values())), "concepts": len({i.concept for i in s.icons})}
                 for s in sets},
        "styles": {k: dict(sorted(v.items())) for k, v in sorted(per_style.items())},
        "splits": {"train": len(p.train), "cross_style_zeroshot": len(p.cross_style),
                   "cross_style_retrieval": len(p.retrieval), "unseen_concepts_zeroshot": len(p.unseen),
                   "unused": sum(1 for i in icons if (i.set, i.name) not in tags)},
        "concepts": {"all": len({i.concept for i in icons}), "train": len({i.concept for i in p.train}),
                     "heldout": len(p.heldout), "cross_style_classes": len(p.cross_style_classes),
                     "cross_style_eval": len({i.concept for i in p.cross_style})},
    }


def build(node_modules: Path, out: Path, prefixes: Sequence[str], sizes: Sequence[int], *,
          eval_styles: Sequence[str] = DEFAULT_EVAL_STYLES, heldout_fraction: float = 0.1,
          curve_sizes: Sequence[int] = CURVE_SIZES, seed: int = 0, shard_size: int = 1000, workers: int = 1,
          cross_style_classes: str = "all", command: Sequence[str] = ()) -> dict[str, Any]:
    """Builds the benchmark from the sets in ``node_modules`` into ``out``; returns the manifest.

    Raises:
        ValueError: ``out`` is not empty, a size is not positive, or the split fails (:func:`plan`).
        FileNotFoundError: A named set is missing.
    """
    start = time.perf_counter()
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"--out {out} is not empty; choose a new folder")
    if not sizes or min(sizes) < 8:
        raise ValueError(f"--sizes must be at least 8 pixels, got {list(sizes)}")
    sets, skipped = load_sets(node_modules, prefixes)
    if not sets:
        raise ValueError(f"no icon set left to build from {list(prefixes)} (left out: {skipped})")
    p = plan([i for s in sets for i in s.icons], eval_styles, heldout_fraction, curve_sizes, seed,
             cross_style_classes)
    out.mkdir(parents=True, exist_ok=True)
    tags = split_of(p)
    with (out / "index.jsonl").open("w", encoding="utf-8") as f:
        for icon in (i for s in sets for i in s.icons):
            f.write(json.dumps({"set": icon.set, "name": icon.name, "concept": icon.concept, "style": icon.style,
                                "split": tags.get((icon.set, icon.name), "unused")}) + "\n")
    licences = write_licences(sets, out)
    data: dict[str, Any] = {}
    for size in sizes:
        root = out / f"{size}px"
        log(f"{size}px: train ({len(p.train)} pairs)")
        write_pairs(p.train, size, root / "train", shard_size, workers)
        for n in p.curve:
            log(f"{size}px: curve {n}")
            write_pairs(p.train[:n], size, root / "curve" / str(n), shard_size, workers)
        log(f"{size}px: evaluation sets")
        write_wds(p.cross_style, size, root / "eval" / "cross_style_zeroshot", p.cross_style_classes)
        write_wds(p.retrieval, size, root / "eval" / "cross_style_retrieval", None)
        if p.unseen:
            write_wds(p.unseen, size, root / "eval" / "unseen_concepts_zeroshot", p.heldout)
        rel = f"{size}px"
        data[str(size)] = {
            "train": {"path": f"{rel}/train", "pairs": len(p.train),
                      "data": {"kind": "shards", "urls": str((root / "train").resolve())}},
            "curve": {str(n): f"{rel}/curve/{n}" for n in p.curve} | {str(len(p.train)): f"{rel}/train"},
            "eval": {"cross_style_zeroshot": f"{rel}/eval/cross_style_zeroshot",
                     "cross_style_retrieval": f"{rel}/eval/cross_style_retrieval",
                     "unseen_concepts_zeroshot": f"{rel}/eval/unseen_concepts_zeroshot" if p.unseen else None},
            "bytes": sum(f.stat().st_size for f in root.rglob("*") if f.is_file())}
    summary = summarise(sets, p, tags) | {"sizes": list(sizes), "bytes": {k: v["bytes"] for k, v in data.items()},
                                          "seconds": round(time.perf_counter() - start, 1)}
    manifest = {
        "builder": "benchmarks/icons/build.py", "command": list(command), "seed": seed, "sizes": list(sizes),
        "sets": [s.licence() | {"styles": s.styles} for s in sets], "skipped_sets": skipped, "licenses": licences,
        "protocols": {
            "cross_style": {"train_styles": p.train_styles, "eval_styles": p.eval_styles,
                            "eval_style_patterns": list(eval_styles), "unmatched_patterns": p.unmatched_patterns,
                            "classes": cross_style_classes, "zeroshot": "eval/cross_style_zeroshot",
                            "retrieval": "eval/cross_style_retrieval"},
            "unseen_concepts": {"fraction": heldout_fraction, "heldout_concepts": p.heldout,
                                "zeroshot": "eval/unseen_concepts_zeroshot" if p.unseen else None},
            "learning_curve": {"sizes": [*p.curve, len(p.train)], "nested": True, "skipped_sizes": p.skipped_curve},
        },
        "data": data, "summary": summary,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    log(f"done in {summary['seconds']} s: {out}")
    return manifest


def main(argv: Sequence[str] | None = None) -> int:
    """The command line (see the module docstring); prints the summary JSON on stdout."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cache", type=Path, help="npm install folder (node_modules goes inside)")
    parser.add_argument("--out", type=Path, required=True, help="output folder (new or empty)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 224])
    parser.add_argument("--sets", nargs="+", help=f"prefixes (prefix@version to pin another); default {DEFAULT_SETS}")
    parser.add_argument("--packages-dir", type=Path, help="an existing node_modules: no npm, no network")
    parser.add_argument("--eval-styles", nargs="+", default=list(DEFAULT_EVAL_STYLES),
                        help="set:style patterns never trained on (a bare prefix: the whole set)")
    parser.add_argument("--heldout-fraction", type=float, default=0.1)
    parser.add_argument("--curve", type=int, nargs="*", default=list(CURVE_SIZES), help="learning-curve sizes")
    parser.add_argument("--cross-style-classes", choices=("all", "eval"), default="all")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shard-size", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1))
    args = parser.parse_args(argv)
    try:
        if args.packages_dir is not None:
            node_modules = args.packages_dir
            if not node_modules.is_dir():
                raise FileNotFoundError(f"--packages-dir {node_modules} is not a folder")
            prefixes = args.sets or iconify.installed_prefixes(node_modules)
            prefixes = [s.partition("@")[0] for s in prefixes]
        elif args.cache is not None:
            specs = args.sets or list(DEFAULT_SETS)
            node_modules = install(args.cache, [s for s in specs if not iconify.is_emoji_set(s.partition("@")[0])])
            prefixes = [s.partition("@")[0] for s in specs]
        else:
            parser.error("give --cache (npm installs there) or --packages-dir")
        manifest = build(node_modules, args.out, prefixes, args.sizes, eval_styles=args.eval_styles,
                         heldout_fraction=args.heldout_fraction, curve_sizes=args.curve, seed=args.seed,
                         shard_size=args.shard_size, workers=args.workers,
                         cross_style_classes=args.cross_style_classes, command=sys.argv if argv is None else argv)
    except (ValueError, FileNotFoundError, RuntimeError, ImportError) as e:
        print(f"build.py: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(manifest["summary"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
