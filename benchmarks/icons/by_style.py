"""The icon benchmark's cross-style and unseen-concept scores per icon set and style (issue #20).

``compare.py`` reports one top-1 per protocol; this splits it by the ``set:style`` each evaluation image was drawn
in (the ``.json`` beside each image in a ``build.py`` evaluation folder), for the finished runs of chosen rows, so
a recipe's gain can be read per held-out style (Bootstrap's fill and regular, Phosphor's duotone, Tabler's filled
for the cross-style protocol).

    python benchmarks/icons/by_style.py --data /tmp/icons-out --work /tmp/icons-compare \\
        --rows openclip clipforge+small_data --seeds 0 1 2 > by_style.json

Prints JSON: per protocol, row and ``set:style``, the images and the mean ± std top-1 (%) over the seeds found
(a run's model is ``<work>/<row>/seed<N>/final``; the ``openclip`` row's, its checkpoint, whose weights
``compare.py`` keeps without the optimiser state).
"""

from __future__ import annotations

import argparse
import json
import sys
import tarfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compare  # this folder's module, next to the script

PROTOCOLS = {"cross_style": "cross_style_zeroshot", "unseen_concepts": "unseen_concepts_zeroshot"}


def styles_of(folder: Path, split: str = "test") -> dict[tuple[str, str], str]:
    """Each evaluation image's ``set:style`` by ``(shard file name, sample key)``."""
    out = {}
    for shard in sorted((folder / split).glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar:
                if member.name.endswith(".json"):
                    meta = json.load(tar.extractfile(member))  # type: ignore[arg-type]
                    out[shard.name, member.name.rsplit(".", 1)[0]] = f"{meta['set']}:{meta['style']}"
    return out


def model_path(work: Path, row: str, seed: int) -> Path | None:
    """A finished run's model: clipforge's ``final/``, OpenCLIP's last checkpoint."""
    run = work / row / f"seed{seed}"
    if row == compare.OPENCLIP:
        found = sorted(run.glob("**/checkpoints/epoch_*.pt"))
        return found[-1] if found else None
    return run / "final" if (run / "final" / "config.json").exists() else None


def correct_by_image(model_spec: Path, folder: Path, allow_pickle: bool) -> dict[tuple[str, str], bool]:
    """Whether each image of a CLIP_benchmark folder is classified right, zero-shot over its class names and
    templates as ``clipforge eval zeroshot`` does, by ``(shard file name, sample key)``."""
    from clipforge.eval.datasets import iter_batches, open_dataset
    from clipforge.eval.loading import load_eval_model
    from clipforge.eval.zeroshot import build_classifier

    model, _, _ = load_eval_model(str(model_spec), device="cpu", allow_pickle=allow_pickle)
    dataset = open_dataset(folder)
    weights = build_classifier(model, dataset.classes, dataset.templates, use_cache=False)
    hits = {}
    with torch.no_grad():
        for images, metas in iter_batches(dataset, model.transform, 256):
            predicted = (model.encode_images(images) @ weights).argmax(1).tolist()
            for meta, guess in zip(metas, predicted, strict=True):
                url, key = meta.source.rsplit(":", 1)
                hits[Path(url).name, key] = guess == meta.label
    return hits


def by_style(hits: dict[tuple[str, str], bool], styles: dict[tuple[str, str], str]) -> dict[str, tuple[int, float]]:
    """``set:style`` (and ``all``) → (images, top-1 in %), over the images both name."""
    groups: dict[str, list[bool]] = defaultdict(list)
    for source, hit in hits.items():
        if source not in styles:
            raise KeyError(f"{source[0]}: sample {source[1]} has no .json with its set and style")
        groups[styles[source]].append(hit)
        groups["all"].append(hit)
    return {style: (len(v), 100 * float(np.mean(v))) for style, v in sorted(groups.items())}


def parse_run_arguments(description: str, argv: list[str] | None) -> argparse.Namespace:
    """The options of a script that reads finished runs: the build, compare.py's --work, rows and seeds; sets one
    torch thread."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--data", type=Path, required=True, help="a build.py --out folder")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--work", type=Path, required=True, help="compare.py's --work")
    p.add_argument("--rows", nargs="+", required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_run_arguments(__doc__.splitlines()[0], argv)
    report: dict[str, Any] = {"work": str(args.work), "seeds": args.seeds, "protocols": {}}
    for protocol, name in PROTOCOLS.items():
        folder = args.data / f"{args.size}px" / "eval" / name
        styles = styles_of(folder)
        table: dict[str, Any] = {}
        for row in args.rows:
            scores: dict[str, list[float]] = defaultdict(list)
            images: dict[str, int] = {}
            seeds = []
            for seed in args.seeds:
                spec = model_path(args.work, row, seed)
                if spec is None:
                    continue
                seeds.append(seed)
                for style, (n, top1) in by_style(correct_by_image(spec, folder, row == compare.OPENCLIP),
                                                 styles).items():
                    scores[style].append(top1)
                    images[style] = n
                print(f"[by_style] {protocol} {row} seed {seed}: {scores['all'][-1]:.2f}", file=sys.stderr)
            table[row] = {"seeds": seeds, "styles": {style: {
                "images": images[style], "mean": round(float(np.mean(v)), 2),
                "std": round(float(np.std(v, ddof=1)), 2) if len(v) > 1 else None,
                "per_seed": [round(x, 2) for x in v]} for style, v in scores.items()}}
        report["protocols"][protocol] = table
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
