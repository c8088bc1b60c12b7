"""Batch tokenisation throughput: clipforge vs open_clip (and HF's fast tokenizer), same captions, one process.

    PYTHONPATH=src python benchmarks/tokenizer.py --n 100000 --repeats 3

Captions imitate LAION-style alt-text (deterministic, seeded; the rates are estimates, not measured on LAION):
lengths skewed short (median ~9 words, a tail past the 77-token context); words from a small common vocabulary,
a Zipf-distributed lexicon of 30,000 made-up names and rare words, and one-off tokens (SKUs, sizes, file names,
prices) that no cache has seen; Title Case, sentence case, lower case, SHOUTING. About 30% of captions carry one
or more of: curly apostrophes and quotes, dashes, a bare ``&``, HTML entities, ™/®/©, accented words, emoji,
CJK/Cyrillic/Greek/Arabic/Hangul phrases, ellipses, no-break spaces, line breaks, °/×/½ and mojibake (``Ã©``).
No caption is repeated, so no per-caption cache can help.

Each round tokenises all captions with a fresh clipforge tokenizer (caches cold) and again (warm), then with a
fresh open_clip ``SimpleTokenizer`` twice (cold, warm) and with HF's fast tokenizer; every id is checked equal to
open_clip's. Times are process CPU time (other programs on a shared machine do not inflate it), wall-clock beside.
Prints JSON: captions/s (medians over rounds) and speedups, each the median over rounds of the ratio within a
round: ``speedup_vs_open_clip`` (both warm) and ``speedup_cold_vs_open_clip`` (clipforge cold, open_clip warm).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import string
import tempfile
import time
from collections.abc import Callable
from itertools import accumulate

WORDS = ("photo picture image of a the an with on in at and dog cat man woman child car street house tree sky "
         "red blue green small large old new beautiful view night day city beach mountain river table food "
         "vintage modern black white wooden stone garden flowers sunset portrait close-up aerial stock "
         "illustration vector design logo 2019 4k hd people walking sitting standing holding playing two three "
         "yellow orange pink purple brown grey dark bright light colorful empty busy wet snowy sunny cloudy "
         "bridge road building church castle lake forest field park market kitchen bedroom office shop train "
         "boat plane bicycle horse bird fish flower leaf rock sand wave cloud rain snow fire smoke window door "
         "background texture pattern abstract isolated top front side inside outside near under over through "
         "for sale men women kids dress shirt shoes wall art print poster set of new size free shipping").split()
SYLLABLES = ("ka ri to mo lan der vin ex pro ber zu ol ta mi sen gor ath el quin bra dy fel hon ix ny pa rev "
             "sto ul wen yo zi ch sh tr cl st").split()
# (probability per caption, fragments): each feature is drawn independently and inserted at a random word position.
FEATURES = [
    (0.05, ["women’s", "men’s", "it’s", "don’t", "world’s", "children’s", "O’Neil"]),
    (0.04, ["–", "—", "- –"]),
    (0.04, ["&", "R&B", "AT&T", "Q&A"]),
    (0.02, ["&amp;", "&quot;Home&quot;", "&#39;s", "&#039;", "&nbsp;", "&lt;3"]),
    (0.02, ["™", "®", "©2018", "Brand®"]),
    (0.04, ["café", "Pokémon", "résumé", "São Paulo", "Zürich", "México", "crème brûlée", "naïve", "jalapeño",
            "Beyoncé", "Málaga", "Ærø", "façade", "Kraków", "İstanbul", "Straße"]),
    (0.02, ["😀", "❤️", "👍🏽", "🇫🇷", "✨", "🔥🔥", "🎄"]),
    (0.03, ["東京タワーの夜景", "北京 天安门", "서울 야경", "Москва зимой", "Ελληνικό νησί", "مرحبا بكم",
            "ｆｕｌｌｗｉｄｔｈ", "富士山"]),
    (0.015, ["“quoted”", "‘single’", "„Zitat“"]),
    (0.015, ["…", "wait…"]),
    (0.01, ["\xa0", "10\xa0cm"]),
    (0.005, ["cafÃ©", "donâ€™t", "â€“", "MÃ¼nchen", "Ã "]),
    (0.01, ["\n", "\r\n", "\t"]),
    (0.01, ["25°C", "2×3", "½ inch"]),
]


def lexicon(n: int, rng: random.Random) -> list[str]:
    """``n`` made-up words of 2–4 syllables (names, brands, rare words)."""
    return ["".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4))) for _ in range(n)]


def one_off(rng: random.Random) -> str:
    """A token no cache has seen: SKU, size, file name, price, year-month or model number."""
    kind = rng.randrange(6)
    if kind == 0:
        return f"{''.join(rng.choices(string.ascii_uppercase, k=2))}-{rng.randint(100, 99999)}"
    if kind == 1:
        return f"{rng.randint(200, 6000)}x{rng.randint(200, 6000)}"
    if kind == 2:
        return f"{rng.choice(['IMG', 'DSC', 'P'])}_{rng.randint(1000, 99999)}.{rng.choice(['jpg', 'JPG', 'png'])}"
    if kind == 3:
        return f"${rng.randint(1, 999)}.{rng.randint(0, 99):02d}"
    if kind == 4:
        return f"{rng.randint(1950, 2023)}-{rng.randint(1, 12):02d}"
    return f"{rng.choice(SYLLABLES).upper()}{rng.randint(10, 9999)}"


def word(rng: random.Random, rare: list[str], weights: list[float]) -> str:
    """A common word (65%), a Zipf-distributed rare one (25%) or a one-off token (10%)."""
    r = rng.random()
    if r < 0.65:
        return rng.choice(WORDS)
    if r < 0.9:
        return rng.choices(rare, cum_weights=weights)[0]
    return one_off(rng)


def case(words: list[str], rng: random.Random) -> str:
    """Title Case (40%), sentence case (40%), lower case (10%) or one word in capitals (10%)."""
    r = rng.random()
    if r < 0.4:
        return " ".join(w.capitalize() for w in words)
    if r < 0.8:
        return " ".join(words).capitalize()
    if r < 0.9:
        return " ".join(words)
    i = rng.randrange(len(words))
    return " ".join(w.upper() if j == i else w for j, w in enumerate(words))


def captions(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct deterministic LAION-style alt-texts (see the module docstring)."""
    rng = random.Random(seed)
    rare = lexicon(30_000, rng)
    weights = list(accumulate(1 / (i + 1) for i in range(len(rare))))  # Zipf
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < n:
        words = [word(rng, rare, weights) for _ in range(min(60, max(1, round(rng.lognormvariate(2.2, 0.6)))))]
        text = case(words, rng)
        for p, fragments in FEATURES:
            if rng.random() < p:
                pieces = text.split(" ")
                pieces.insert(rng.randrange(len(pieces) + 1), rng.choice(fragments))
                text = " ".join(pieces)
        text += rng.choice(["", "", ".", "!", " - stock photo", " | Free Image", " - Wikipedia"])
        if text not in seen:
            seen.add(text)
            out.append(text)
    return out


def timed(fn: Callable[[list[str]], object], texts: list[str]) -> tuple[float, float, object]:
    """CPU seconds, wall-clock seconds and the output of one call."""
    cpu, wall = time.process_time(), time.perf_counter()
    out = fn(texts)
    return time.process_time() - cpu, time.perf_counter() - wall, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3, help="rounds")
    args = parser.parse_args()
    import open_clip.tokenizer
    import torch
    from transformers import CLIPTokenizerFast

    torch.set_num_threads(1)
    from clipforge.text.bpe import BPETokenizer
    from clipforge.text.cleanup import is_plain_ascii

    texts = captions(args.n)
    with tempfile.TemporaryDirectory() as d:
        BPETokenizer().save_hf(d)
        hf = CLIPTokenizerFast.from_pretrained(d)
    runs: dict[str, Callable[[], Callable[[list[str]], object]]] = {
        "clipforge": BPETokenizer,
        "open_clip": open_clip.tokenizer.SimpleTokenizer,
        "hf_fast": lambda: lambda t: hf(t, padding="max_length", truncation=True, max_length=77),
    }
    cpu: dict[str, list[float]] = {}
    wall: dict[str, list[float]] = {}
    mismatches = 0
    for _ in range(args.repeats):
        outputs = {}
        for name, make in runs.items():
            tokenizer = make()
            for phase in ("cold", "warm") if name != "hf_fast" else ("warm",):
                c, w, outputs[f"{name}_{phase}"] = timed(tokenizer, texts)
                cpu.setdefault(f"{name}_{phase}", []).append(c)
                wall.setdefault(f"{name}_{phase}", []).append(w)
        theirs = outputs["open_clip_warm"]
        mismatches += sum(int((outputs[f"clipforge_{p}"] != theirs).any(1).sum()) for p in ("cold", "warm"))

    def speedup(times: dict[str, list[float]], ours: str, reference: str) -> float:
        return round(statistics.median(r / o for o, r in zip(times[ours], times[reference])), 2)

    report = {
        "captions": args.n, "rounds": args.repeats, "threads": 1,
        "share_not_plain_ascii": round(sum(not is_plain_ascii(t) for t in texts) / len(texts), 3),
        "ids_equal_open_clip": mismatches == 0, "mismatched_rows": mismatches,
        "captions_per_cpu_s": {k: round(args.n / statistics.median(v)) for k, v in cpu.items()},
        "speedup_vs_open_clip": speedup(cpu, "clipforge_warm", "open_clip_warm"),
        "speedup_cold_vs_open_clip": speedup(cpu, "clipforge_cold", "open_clip_warm"),
        "speedup_vs_hf_fast": speedup(cpu, "clipforge_warm", "hf_fast_warm"),
        "wall_clock_speedup_vs_open_clip": speedup(wall, "clipforge_warm", "open_clip_warm"),
        "wall_clock_speedup_cold_vs_open_clip": speedup(wall, "clipforge_cold", "open_clip_warm"),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
