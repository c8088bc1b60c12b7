"""Learning a byte-level BPE vocabulary from a user's own captions, in CLIP's format.

The result plugs into :class:`~clipforge.text.bpe.BPETokenizer` unchanged: the same clean-up and
pre-tokenisation, the same 256-symbol byte alphabet (with and without ``</w>``), one token per learnt merge,
then ``<|startoftext|>`` and ``<|endoftext|>``. Training is the classic algorithm (Sennrich et al. 2016,
https://arxiv.org/abs/1508.07909): count adjacent symbol pairs over the distinct pre-tokens weighted by
frequency, merge the most frequent pair, repeat. Pair counts are updated incrementally and the best pair
comes off a lazy max-heap, so each merge costs time proportional to the words it touches.
"""

from __future__ import annotations

import heapq
from collections import Counter, defaultdict
from collections.abc import Iterable
from itertools import pairwise

from clipforge.text.bpe import EOT, MAX_CHARS, PATTERN, SOT, BPETokenizer, bytes_to_unicode, clean

BASE_VOCAB_SIZE = 2 * 256 + 2  # byte symbols, the same with </w>, start and end of text


def _word_counts(texts: Iterable[str]) -> Counter[tuple[str, ...]]:
    """Distinct pre-tokens as symbol tuples (bytes mapped to unicode, ``</w>`` on the last), with their counts."""
    byte_encoder = bytes_to_unicode()
    raw: Counter[str] = Counter()
    for text in texts:  # cut as the tokenizer cuts (its default ``max_chars``): training sees what encoding sees
        raw.update(PATTERN.findall(clean(text[:MAX_CHARS])))
    words: Counter[tuple[str, ...]] = Counter()
    for token, count in raw.items():
        symbols = [byte_encoder[b] for b in token.encode("utf-8")]
        symbols[-1] += "</w>"
        words[tuple(symbols)] += count
    return words


def train_bpe(texts: Iterable[str], vocab_size: int, min_frequency: int = 2, context_length: int = 77,
              truncate: bool = True) -> BPETokenizer:
    """Learns merges from ``texts`` until the vocabulary has ``vocab_size`` ids or no pair is frequent enough.

    Ties between equally frequent pairs go to the lexicographically smallest pair, so a corpus always gives
    the same vocabulary. A merge whose result is already a token (reachable by another pair of symbols) is
    skipped, so every id is a distinct string and ``vocab.json`` exports cleanly. Save the result with
    ``save_pretrained``; ``BPETokenizer(vocab_path=...)`` then reproduces its ids.

    Args:
        texts: Training captions (cleaned and pre-tokenised exactly as at encoding time).
        vocab_size: Largest number of ids, special tokens included; at least 514 (the byte alphabet).
        min_frequency: A pair seen fewer times than this is never merged.
        context_length: Context length of the returned tokenizer.
        truncate: Truncation mode of the returned tokenizer (see ``BPETokenizer``).

    Returns:
        A tokenizer whose ``vocab_size`` is at most ``vocab_size``; ``eot_token_id`` is its last id.
    """
    if vocab_size < BASE_VOCAB_SIZE:
        raise ValueError(f"vocab_size must be at least {BASE_VOCAB_SIZE} (the byte alphabet and two special tokens), "
                         f"got {vocab_size}")
    if min_frequency < 1:
        raise ValueError(f"min_frequency must be at least 1, got {min_frequency}")
    counted = _word_counts(texts)
    words = [list(w) for w in counted]
    freqs = list(counted.values())
    pair_counts: defaultdict[tuple[str, str], int] = defaultdict(int)
    where: defaultdict[tuple[str, str], set[int]] = defaultdict(set)  # pair -> words that may hold it
    for i, (word, freq) in enumerate(zip(words, freqs)):
        for pair in pairwise(word):
            pair_counts[pair] += freq
            where[pair].add(i)
    heap = [(-count, pair) for pair, count in pair_counts.items()]
    heapq.heapify(heap)
    known = set(bytes_to_unicode().values())
    known |= {s + "</w>" for s in known} | {SOT, EOT}
    merges: list[tuple[str, str]] = []
    while len(merges) < vocab_size - BASE_VOCAB_SIZE and heap:
        negative, pair = heapq.heappop(heap)
        if -negative != pair_counts.get(pair, 0):
            continue  # stale entry; the pair's current count has its own entry
        if -negative < min_frequency:
            break
        merged = pair[0] + pair[1]
        if merged in known:
            continue  # popped for good: this pair is never merged
        known.add(merged)
        merges.append(pair)
        changed: set[tuple[str, str]] = set()
        for i in where.pop(pair):
            word, freq = words[i], freqs[i]
            new = _merge(word, pair, merged)
            if len(new) == len(word):
                continue
            for p in pairwise(word):
                pair_counts[p] -= freq
                changed.add(p)
            for p in pairwise(new):
                pair_counts[p] += freq
                where[p].add(i)
                changed.add(p)
            words[i] = new
        pair_counts.pop(pair, None)
        changed.discard(pair)
        for p in changed:
            if pair_counts[p] > 0:
                heapq.heappush(heap, (-pair_counts[p], p))
            else:
                del pair_counts[p]
    return BPETokenizer.from_merges(merges, context_length=context_length, truncate=truncate)


def _merge(word: list[str], pair: tuple[str, str], merged: str) -> list[str]:
    """``word`` with every non-overlapping occurrence of ``pair``, left to right, replaced by ``merged``."""
    out, i = [], 0
    while i < len(word):
        if i < len(word) - 1 and word[i] == pair[0] and word[i + 1] == pair[1]:
            out.append(merged)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return out
