"""Batch tokenisation throughput: clipforge vs open_clip (and HF's fast tokenizer), same captions, one process.

    PYTHONPATH=src python benchmarks/tokenizer.py --n 100000 --repeats 3

Captions are deterministic alt-text-like sentences (10–30 words; about a quarter carry a non-ASCII word or an
HTML entity, so they take the full ftfy clean-up). Every id is checked equal to open_clip's. Prints JSON:
captions/s (median of repeats on one instance, caches warm as in a long-running data loader), clipforge's
first pass on a fresh instance (caches cold), and ratios.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from collections.abc import Callable

WORDS = ("photo picture image of a the an with on in at and dog cat man woman child car street house tree sky "
         "red blue green small large old new beautiful view night day city beach mountain river table food "
         "vintage modern black white wooden stone garden flowers sunset portrait close-up aerial stock "
         "illustration vector design logo 2019 4k hd people walking sitting standing holding playing two three "
         "yellow orange pink purple brown grey dark bright light colorful empty busy wet snowy sunny cloudy "
         "bridge road building church castle lake forest field park market kitchen bedroom office shop train "
         "boat plane bicycle horse bird fish flower leaf rock sand wave cloud rain snow fire smoke window door "
         "background texture pattern abstract isolated top front side inside outside near under over through").split()
EXTRA = ["café", "naïve", "Zürich", "東京", "Москва", "😀", "&amp;", "—", "“quoted”", "100%", "#travel", "@home",
         "São Paulo", "crème brûlée", "Ελλάδα", "١٢٣", "ß", "Mr.", "U.S.A.", "(2020)", "3/4", "$19.99", "it's"]


def captions(n: int, seed: int = 0) -> list[str]:
    """``n`` deterministic alt-text-like captions."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(10, 30))]
        if rng.random() < 0.3:
            words.insert(rng.randrange(len(words)), rng.choice(EXTRA))
        text = " ".join(words)
        out.append(text.capitalize() + rng.choice([".", "", "!", ",", " - stock photo", " | Free Image"]))
    return out


def timed(fn: Callable[[list[str]], object], texts: list[str], repeats: int) -> tuple[float, object]:
    """Captions/s (median over ``repeats``) and the last output."""
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn(texts)
        times.append(time.perf_counter() - t0)
    return len(texts) / statistics.median(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    from clipforge.text.bpe import BPETokenizer

    texts = captions(args.n)
    report: dict[str, object] = {"captions": args.n, "repeats": args.repeats, "threads": 1}
    results = {}
    results["clipforge_cold"], _ = timed(BPETokenizer(), texts, 1)
    ours = BPETokenizer()
    results["clipforge"], ours_ids = timed(ours, texts, args.repeats)
    try:
        import open_clip.tokenizer

        results["open_clip"], theirs_ids = timed(open_clip.tokenizer.SimpleTokenizer(), texts, args.repeats)
        same = torch.equal(ours_ids, theirs_ids)
        report["ids_equal_open_clip"] = same
        if not same:
            bad = (ours_ids != theirs_ids).any(1).nonzero()[0, 0].item()
            report["first_mismatch"] = texts[bad]
    except ImportError as e:
        report["open_clip_error"] = str(e)
    try:
        from transformers import CLIPTokenizerFast

        with tempfile.TemporaryDirectory() as d:
            ours.save_hf(d)
            hf = CLIPTokenizerFast.from_pretrained(d)
        results["hf_fast"], _ = timed(lambda t: hf(t, padding="max_length", truncation=True, max_length=77), texts,
                                      args.repeats)
    except (ImportError, OSError, ValueError) as e:
        report["hf_fast_error"] = str(e)
    report["captions_per_s"] = {k: round(v) for k, v in results.items()}
    for k in ("open_clip", "hf_fast"):
        if k in results:
            report[f"speedup_vs_{k}"] = round(results["clipforge"] / results[k], 2)
            report[f"speedup_cold_vs_{k}"] = round(results["clipforge_cold"] / results[k], 2)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
