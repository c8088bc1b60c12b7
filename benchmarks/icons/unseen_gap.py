"""Where the icon benchmark's unseen-concept score is lost: the image tower or the text tower (issue #20).

For the finished runs of chosen rows, three top-1 scores over the same number of classes:

- ``zeroshot``: the unseen-concept protocol itself (the held-out concepts' images, zero-shot among their names);
- ``image_prototypes``: the same images, each classified by the nearest mean image embedding of the other images of
  each held-out concept (leave-one-out, over the concepts with at least two images): no text at all, so it says how
  well the image embeddings tell the held-out concepts apart;
- ``seen_zeroshot``: training images of as many *training* concepts (a seeded sample, up to two images each),
  zero-shot among those concepts' names with the same templates: what the text tower gives for names it was
  trained on.

Beside them, ``heldout_names_of_training_words``: the share (%) of held-out names made only of words that training
names use. A ``zeroshot`` far below both others puts the gap in the text tower's embeddings of names it never saw.

    python benchmarks/icons/unseen_gap.py --data /tmp/icons-out --work /tmp/icons-lr1e-3 \\
        --rows openclip clipforge+small_data --seeds 0 1 2 > unseen_gap.json

Prints JSON: per row the scores (%) per seed and their mean ± std.
"""

from __future__ import annotations

import json
import random
import sys
import tarfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import by_style  # this folder's module: finished runs' models
import compare

UNSEEN = "unseen_concepts_zeroshot"


def image_features(model: Any, images: list[Any], batch: int = 256) -> torch.Tensor:
    """L2-normalised image embeddings (N, D) of decoded PIL images."""
    out = []
    with torch.no_grad():
        for start in range(0, len(images), batch):
            out.append(model.encode_images(torch.stack([model.transform(i) for i in images[start:start + batch]])))
    return torch.cat(out)


def prototype_top1(features: torch.Tensor, labels: torch.Tensor) -> tuple[float, int]:
    """Leave-one-out nearest-class-mean top-1 over the images whose class has another image, and their count."""
    classes = int(labels.max()) + 1
    sums = torch.zeros(classes, features.shape[1]).index_add_(0, labels, features)
    counts = torch.bincount(labels, minlength=classes).float()
    hits = []
    for i in torch.nonzero(counts[labels] >= 2).flatten().tolist():
        own = int(labels[i])
        s, n = sums.clone(), counts.clone()
        s[own] -= features[i]
        n[own] -= 1
        present = torch.nonzero(n > 0).flatten()
        means = F.normalize(s[present] / n[present, None], dim=1)
        hits.append(int(present[(means @ features[i]).argmax()]) == own)
    return 100 * float(np.mean(hits)), len(hits)


def training_images(train_dir: Path) -> dict[str, list[bytes]]:
    """The training shards' PNG bytes by concept (the ``.json`` beside each image names it)."""
    by_concept: dict[str, list[bytes]] = defaultdict(list)
    for shard in sorted(train_dir.glob("*.tar")):
        samples: dict[str, dict[str, bytes]] = defaultdict(dict)
        with tarfile.open(shard) as tar:
            for member in tar:
                if member.isfile():
                    key, _, ext = member.name.rpartition(".")
                    samples[key][ext] = tar.extractfile(member).read()  # type: ignore[union-attr]
        for fields in samples.values():
            if "json" in fields and "png" in fields:
                by_concept[json.loads(fields["json"])["concept"]].append(fields["png"])
    return by_concept


def gap(spec: Path, data: Path, size: int, allow_pickle: bool, seen: dict[str, list[bytes]],
        seed: int = 0) -> dict[str, float]:
    """The three scores (%) of one model."""
    from clipforge.data.decode import DecodeLimits, decode_image
    from clipforge.eval.datasets import open_dataset
    from clipforge.eval.loading import load_eval_model
    from clipforge.eval.zeroshot import build_classifier

    model, _, _ = load_eval_model(str(spec), device="cpu", allow_pickle=allow_pickle)
    dataset = open_dataset(data / f"{size}px" / "eval" / UNSEEN)
    samples = list(dataset)
    labels = torch.tensor([s.label for s in samples])
    features = image_features(model, [s.image for s in samples])
    names = build_classifier(model, dataset.classes, dataset.templates, use_cache=False)
    zeroshot = 100 * float(((features @ names).argmax(1) == labels).float().mean())
    prototypes, kept = prototype_top1(features, labels)
    concepts = random.Random(seed).sample(sorted(seen), min(len(dataset.classes), len(seen)))
    images, seen_labels = [], []
    for label, concept in enumerate(concepts):
        for png in seen[concept][:2]:
            images.append(decode_image(png, DecodeLimits()))  # composited on white, as the evaluator reads
            seen_labels.append(label)
    seen_names = build_classifier(model, concepts, dataset.templates, use_cache=False)
    words = {w for concept in seen for w in concept.split()}
    composed = np.mean([all(w in words for w in name.split()) for name in dataset.classes])
    seen_top1 = (image_features(model, images) @ seen_names).argmax(1) == torch.tensor(seen_labels)
    return {"zeroshot": zeroshot, "image_prototypes": prototypes,
            "seen_zeroshot": 100 * float(seen_top1.float().mean()), "classes": len(dataset.classes),
            "prototype_images": kept, "seen_images": len(images),
            "heldout_names_of_training_words": 100 * float(composed)}


def main(argv: list[str] | None = None) -> None:
    args = by_style.parse_run_arguments(__doc__.splitlines()[0], argv)
    seen = training_images(args.data / f"{args.size}px" / "train")
    report: dict[str, Any] = {"work": str(args.work), "rows": {}}
    for row in args.rows:
        runs = {}
        for seed in args.seeds:
            spec = by_style.model_path(args.work, row, seed)
            if spec is not None:
                runs[seed] = gap(spec, args.data, args.size, row == compare.OPENCLIP, seen)
                print(f"[unseen_gap] {row} seed {seed}: {runs[seed]}", file=sys.stderr)
        keys = ("zeroshot", "image_prototypes", "seen_zeroshot")
        report["rows"][row] = {"per_seed": runs, "summary": {k: {
            "mean": round(float(np.mean([r[k] for r in runs.values()])), 2),
            "std": round(float(np.std([r[k] for r in runs.values()], ddof=1)), 2) if len(runs) > 1 else None}
            for k in keys} if runs else {}}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
