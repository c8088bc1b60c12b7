"""CLIPPO text rendering throughput (captions/s on one core) at 224 px, alt-texts of 10–100 characters.

    python benchmarks/render.py --n 5000

Prints JSON: captions/s per core (median of repeats), numpy path and tensor output.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

WORDS = ("a photo of the dog cat red blue house car street beautiful sunset mountain river city old new man woman "
         "Café naïve Москва 東京 small large view night").split()


def alt_texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        target = rng.randint(10, 100)
        text = ""
        while len(text) < target:
            text += rng.choice(WORDS) + " "
        out.append(text[:target].strip())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    from clipforge.text.render import RenderConfig, UnifontRenderer

    texts = alt_texts(args.n)
    renderer = UnifontRenderer(RenderConfig(image_size=args.size))
    results = {}
    for name, fn in (("numpy_render", renderer.render), ("tensor_call", renderer)):
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            fn(texts)
            times.append(time.perf_counter() - t0)
        results[name] = round(args.n / statistics.median(times))
    print(json.dumps({"captions": args.n, "image_size": args.size, "threads": 1, "mode": "big_vision",
                      "chars": "10-100", "captions_per_s_per_core": results}, indent=2))


if __name__ == "__main__":
    main()
