"""CLIPPO text rendering throughput: captions/s on one CPU core at 224 px, alt-texts of 10–100 characters.

    PYTHONPATH=src python benchmarks/render.py --n 4096 --batch 256 --repeats 5

Times both modes (``big_vision`` and ``improved``), each through the numpy path (``render``) and the torch
path (``__call__``), with numpy and torch pinned to one thread. ``--device cuda`` also times the torch path
painting on the GPU (wall clock, synchronised; the layout still runs on the one CPU thread). The alt-texts
are deterministic (seeded) mixes of common caption words, capitals, punctuation, accents, Cyrillic, CJK and
some Hebrew. Prints JSON: captions/s per core (captions over the process CPU time, which other programs on
a shared machine do not inflate) and per wall-clock second, each the median of the repeats, beside the
target of 2,000 per core.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "1"  # before numpy and torch are imported

import argparse  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

TARGET = 2000
WORDS = (
    "a an the of in on with and near over photo picture image view close-up dog cat man woman child people "
    "red blue green old new small large beautiful sunset mountain river city street house car tree beach "
    "playing sitting standing walking 2019 3 10 Café naïve Москва 東京 Zürich São Paulo שלום"
).split()
PUNCTUATION = ("", "", "", "", ",", ".", ":", "!", " -")


def alt_texts(n: int, seed: int = 0) -> list[str]:
    """``n`` deterministic alt-texts, 10–100 characters each."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        target = rng.randint(10, 100)
        words: list[str] = []
        while len(" ".join(words)) < target:
            word = rng.choice(WORDS)
            word = word.capitalize() if rng.random() < 0.15 else word
            words.append(word + rng.choice(PUNCTUATION))
        text = " ".join(words)[:target].strip()
        out.append(text.ljust(10, "."))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=4096, help="captions per repeat")
    parser.add_argument("--batch", type=int, default=256, help="captions per call")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--device", default="cpu", help="also time the torch path painting on this device")
    args = parser.parse_args()

    import numpy as np
    import torch

    torch.set_num_threads(1)
    from clipforge.text.render import RenderConfig, UnifontRenderer

    texts = alt_texts(args.n)
    batches = [texts[i : i + args.batch] for i in range(0, len(texts), args.batch)]
    results: dict[str, dict[str, int]] = {}
    wall_results: dict[str, dict[str, int]] = {}
    for mode in ("big_vision", "improved"):
        renderer = UnifontRenderer(RenderConfig(image_size=args.size, mode=mode))
        renderer(batches[0])  # warm-up: font table, character tables, torch glyph table
        renderer.render(batches[0])
        paths = [("numpy", renderer.render), ("torch", renderer)]
        if args.device != "cpu":
            def on_device(batch: list[str], renderer: UnifontRenderer = renderer) -> torch.Tensor:
                return renderer(batch, device=args.device)

            on_device(batches[0])
            paths.append((f"torch_{args.device}", on_device))
        for path, fn in paths:
            cpu, wall = [], []
            for _ in range(args.repeats):
                c0, w0 = time.process_time(), time.perf_counter()
                for batch in batches:
                    fn(batch)
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                cpu.append(time.process_time() - c0)
                wall.append(time.perf_counter() - w0)
            results.setdefault(mode, {})[path] = round(args.n / statistics.median(cpu))
            wall_results.setdefault(mode, {})[path] = round(args.n / statistics.median(wall))
    lengths = [len(t) for t in texts]
    print(json.dumps({
        "benchmark": "render", "image_size": args.size, "captions": args.n, "batch": args.batch,
        "repeats": args.repeats, "threads": 1, "chars_min_mean_max": [min(lengths), round(float(np.mean(lengths)), 1),
                                                                       max(lengths)],
        "torch": torch.__version__, "captions_per_s_per_core": results,
        "captions_per_wall_s": wall_results, "target_per_core": TARGET,
        "meets_target": all(v >= TARGET for per_path in results.values() for p, v in per_path.items()
                            if p in ("numpy", "torch")),
    }, indent=2))


if __name__ == "__main__":
    main()
