"""CLIP's byte-level BPE tokenizer, with OpenAI's exact ids and a fast batch path.

The algorithm is OpenAI's ``SimpleTokenizer`` (``clip/simple_tokenizer.py``): ftfy fix, HTML unescape
(twice), whitespace collapse, lowercase, the same regex pre-tokenisation, bytes mapped to printable
unicode, BPE merges with a ``</w>`` end-of-word marker, and start/end-of-text tokens around each text.

Speed comes from exact shortcuts, each proven by the parity tests against open_clip:
- ftfy and HTML unescaping cannot change printable ASCII text without ``&``, so such text skips them, and other
  text takes ``cleanup.fix_text``, ftfy's steps with its no-op work skipped (see ``clipforge.text.cleanup``);
- no pre-token contains whitespace, so a text is the concatenation of its space-separated chunks' ids,
  and those are cached per chunk (``"dog,"`` -> ids of ``dog`` and ``,``): a cache hit skips the regex
  and the BPE entirely;
- all rows' ids go into one flat list, then into the padded int64 array with one vectorised gather.

Bounded work per caption (hostile or broken captions cannot stall a data loader):
- a caption is cut to its first ``max_chars`` characters (default ``MAX_CHARS``, 8,192) before any other work, so
  cleaning, pre-tokenisation and BPE never see more; a caption of at most ``max_chars`` characters gets exactly
  open_clip's ids, a longer one the ids of its first ``max_chars`` characters;
- with truncation on, a caption's chunks are tokenised only until more than ``context_length - 2`` ids are known:
  every later id would be cut anyway (exact, whatever the caption);
- a pre-token of more than ``_HEAP_MIN`` symbols is merged with a priority queue (``_bpe_heap``), O(n log n)
  instead of OpenAI's O(n²) loop and with the same result (see ``merges_are_ordered``), so one space-free run of
  ``max_chars`` letters costs milliseconds, not seconds;
- the caches remember only chunks and pre-tokens of at most ``_CACHE_MAX_KEY`` characters, so their memory is
  bounded by entry count × key length whatever the data.
"""

from __future__ import annotations

import gzip
import heapq
import importlib.resources
import json
import os
import re
from collections.abc import Iterable, Sequence
from functools import lru_cache
from itertools import chain, pairwise
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np
import regex

from clipforge.text.cleanup import clean, is_plain_ascii

if TYPE_CHECKING:
    import torch

SOT, EOT = "<|startoftext|>", "<|endoftext|>"
VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
SAVED_VOCAB_FILE = "bpe_vocab.txt.gz"
# OpenAI's pattern without its ``<|startoftext|>|<|endoftext|>`` alternatives: text is always plain text, so a
# caption containing the string "<|endoftext|>" cannot end itself early (open_clip 3.3 maps its own spellings
# "<start_of_text>"/"<end_of_text>" to the special ids; we do not).
PATTERN = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""", regex.IGNORECASE)
# The same pattern for lowercased printable ASCII, where \p{L} is [a-z], \p{N} is [0-9] and \s is the space; the
# stdlib engine is faster than ``regex`` and the parity tests prove the two agree on such text.
_ASCII_PATTERN = re.compile(r"""'s|'t|'re|'ve|'m|'ll|'d|[a-z]+|[0-9]|[^ a-z0-9]+""")
_CACHE_LIMIT = 500_000  # entries per cache; past it new words are still tokenised, just not remembered
_CACHE_MAX_KEY = 64  # characters of a cached chunk or pre-token at most: the caches hold ≤ 500k × 64 characters
MAX_CHARS = 8192  # default characters of a caption that are read; the rest is cut before any other work
_HEAP_MIN = 48  # symbols of a pre-token from which the priority-queue merge (O(n log n)) beats OpenAI's loop
_NO_MERGE = 1 << 62  # rank of a pair that is not a merge (an int: compares faster than float("inf"))


@lru_cache
def bytes_to_unicode() -> dict[int, str]:
    """OpenAI's reversible map from the 256 byte values to printable unicode characters."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def merges_are_ordered(merges: Sequence[tuple[str, str]]) -> bool:
    """True if every merge's two parts are byte symbols or tokens made by earlier merges (OpenAI's and
    ``train_bpe``'s files are).

    Then a merge creates only pairs of higher rank than itself, so OpenAI's loop (merge every occurrence of the
    lowest-ranked pair present, left to right, repeat) is the same as merging pairs one at a time in order of
    (rank, position), which a priority queue does in O(n log n).
    """
    base = set(bytes_to_unicode().values())
    base |= {s + "</w>" for s in base}
    made: set[str] = set()
    for first, second in merges:
        if not ((first in base or first in made) and (second in base or second in made)):
            return False
        made.add(first + second)
    return True


def default_vocab_path() -> Path:
    """The packaged OpenAI merges file."""
    return Path(str(importlib.resources.files("clipforge.text") / "assets" / VOCAB_FILE))


def read_merges(path: str | os.PathLike) -> list[tuple[str, str]]:
    """Reads a gzipped merges file (first line a header), with a clear error for a bad file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: BPE vocabulary file not found")
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            lines = f.read().split("\n")
    except (OSError, UnicodeDecodeError, EOFError) as e:
        raise ValueError(f"{path}: not a gzipped BPE merges file ({e})") from None
    merges = []
    for i, line in enumerate(lines[1:], start=2):
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"{path}:{i}: expected two symbols per merge line, got {line!r}")
        merges.append((parts[0], parts[1]))
    return merges


def write_merges(path: Path, merges: Sequence[tuple[str, str]], compress: bool) -> None:
    """Writes merges in the ``#version: 0.2`` text format, gzipped or not."""
    text = "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges)
    if compress:
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")


class BPETokenizer:
    """CLIP's tokenizer: ``tokenizer(texts) -> LongTensor (N, context_length)``, zero-padded.

    Ids are OpenAI's for OpenAI's vocabulary (the default) and equal open_clip's ``SimpleTokenizer`` /
    ``open_clip.tokenize`` on any text. The one place OpenAI's own tokenizer differs: it turns the literal
    strings ``<|startoftext|>`` / ``<|endoftext|>`` inside a text into the special tokens (open_clip 3.3: its
    ``<start_of_text>`` / ``<end_of_text>``); here text is always plain text, so a caption cannot inject an
    end-of-text token.

    Truncation: by default (``truncate=True``) a text longer than the context is cut and its last token
    replaced by end-of-text, as open_clip does, so long alt-texts never stop a training run. With
    ``truncate=False`` an over-long text raises ``ValueError`` naming its index, token count and the
    context length, as OpenAI's ``clip.tokenize`` does without ``truncate=True``.

    Length limit: only the first ``max_chars`` characters of a text are read (cut before clean-up); a text of
    at most ``max_chars`` characters gets exactly open_clip's ids. See the module docstring for the other bounds.

    Args:
        vocab_path: A gzipped merges file; default: OpenAI's (49,408 tokens).
        context_length: Tokens per text, start and end tokens included.
        truncate: See above.
        num_merges: How many merges of the file to use; default: all for a custom file, 48,894 for
            OpenAI's (its file lists more merges than the released vocabulary uses).
        max_chars: Characters of a text read at most (default ``MAX_CHARS``, 8,192).
    """

    def __init__(self, vocab_path: str | os.PathLike | None = None, context_length: int = 77, truncate: bool = True,
                 num_merges: int | None = None, max_chars: int = MAX_CHARS):
        self.vocab_path: Path | None = Path(vocab_path) if vocab_path is not None else default_vocab_path()
        merges = read_merges(self.vocab_path)
        if num_merges is None:
            num_merges = 49152 - 256 - 2 if self.vocab_path.name == VOCAB_FILE else len(merges)
        self._build(merges[:num_merges], context_length, truncate, max_chars)

    @classmethod
    def from_merges(cls, merges: Iterable[tuple[str, str]], context_length: int = 77,
                    truncate: bool = True, max_chars: int = MAX_CHARS) -> BPETokenizer:
        """A tokenizer from merges in memory (e.g. learnt by ``train_bpe``), in rank order."""
        tokenizer = cls.__new__(cls)
        tokenizer.vocab_path = None
        tokenizer._build(list(merges), context_length, truncate, max_chars)
        return tokenizer

    def _build(self, merges: list[tuple[str, str]], context_length: int, truncate: bool, max_chars: int) -> None:
        """Vocabulary: 256 byte symbols, the same with ``</w>``, one token per merge, then start/end of text."""
        if context_length < 2:
            raise ValueError(f"context_length must be at least 2 (start and end of text), got {context_length}")
        if isinstance(max_chars, bool) or not isinstance(max_chars, int) or max_chars < 1:
            raise ValueError(f"max_chars must be a whole number ≥ 1, got {max_chars!r}")
        self.max_chars = max_chars
        self._ordered = merges_are_ordered(merges)
        self.merges = merges
        byte_symbols = list(bytes_to_unicode().values())
        vocab = byte_symbols + [s + "</w>" for s in byte_symbols] + ["".join(m) for m in merges] + [SOT, EOT]
        self.encoder = {token: i for i, token in enumerate(vocab)}
        if len(self.encoder) != len(vocab):
            raise ValueError(f"{len(vocab) - len(self.encoder)} merges give a token that is already in the vocabulary")
        self.decoder = dict(enumerate(vocab))
        self.ranks = {m: i for i, m in enumerate(merges)}
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {v: k for k, v in self.byte_encoder.items()}
        self._context_length = context_length
        self.truncate = truncate
        self._bpe_cache: dict[str, tuple[int, ...]] = {}  # pre-token -> ids
        self._chunk_cache: dict[str, tuple[int, ...]] = {}  # space-free chunk of cleaned text -> ids

    @property
    def vocab_size(self) -> int:
        """Number of ids (rows of the text embedding table)."""
        return len(self.decoder)

    @property
    def sot_token_id(self) -> int:
        """Id of ``<|startoftext|>``."""
        return self.encoder[SOT]

    @property
    def eot_token_id(self) -> int:
        """Id of ``<|endoftext|>``."""
        return self.encoder[EOT]

    @property
    def context_length(self) -> int:
        """Default tokens per text, start and end included."""
        return self._context_length

    def _bpe(self, token: str) -> tuple[int, ...]:
        """BPE ids of one pre-token (the caller has missed the cache): OpenAI's algorithm, the lowest-ranked
        adjacent pair merged everywhere (left to right) until no pair is a merge."""
        symbols = "".join(map(self.byte_encoder.__getitem__, token.encode("utf-8")))
        word = [*symbols[:-1], symbols[-1] + "</w>"]
        word = self._bpe_heap(word) if len(word) >= _HEAP_MIN and self._ordered else self._bpe_loop(word)
        ids = tuple(map(self.encoder.__getitem__, word))
        if len(self._bpe_cache) < _CACHE_LIMIT and len(token) <= _CACHE_MAX_KEY:
            self._bpe_cache[token] = ids
        return ids

    def _bpe_loop(self, word: list[str]) -> list[str]:
        """OpenAI's loop: O(len(word)) per merged pair, fastest for the short words captions are made of."""
        ranks, merges = self.ranks, self.merges
        while len(word) > 1:
            pair_ranks = [ranks.get(pair, _NO_MERGE) for pair in pairwise(word)]
            rank = min(pair_ranks)
            if rank == _NO_MERGE:
                break
            first, second = merges[rank]
            merged, i, last = [], 0, len(word) - 1
            while i <= last:
                if i < last and pair_ranks[i] == rank:  # word[i], word[i + 1] is the pair
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        return word

    def _bpe_heap(self, word: list[str]) -> list[str]:
        """The same merges as ``_bpe_loop``, one pair at a time in order of (rank, position): O(n log n).

        Exact when ``merges_are_ordered``: all occurrences of a rank are merged left to right before any higher
        rank, a pair whose left symbol was taken by the merge before it (``a a a``) is skipped as OpenAI's loop
        skips it, and every pair a merge creates has a higher rank than that merge.
        """
        ranks = self.ranks
        symbols: list[str | None] = list(word)
        n = len(symbols)
        nxt = list(range(1, n + 1))  # index of the next live symbol (n: none)
        prv = list(range(-1, n - 1))  # index of the previous live symbol (-1: none)
        heap = [(rank, i) for i, pair in enumerate(pairwise(word)) if (rank := ranks.get(pair)) is not None]
        heapq.heapify(heap)
        pop, push = heapq.heappop, heapq.heappush
        while heap:
            rank, i = pop(heap)
            j = nxt[i]
            left = symbols[i]
            if left is None or j >= n or ranks.get((left, cast(str, symbols[j]))) != rank:
                continue  # stale: a symbol of this pair has been merged since it was queued
            symbols[i] = merged = left + cast(str, symbols[j])
            symbols[j] = None
            after = nxt[j]
            nxt[i] = after
            if after < n:
                prv[after] = i
                if (r := ranks.get((merged, cast(str, symbols[after])))) is not None:
                    push(heap, (r, i))
            before = prv[i]
            if before >= 0 and (r := ranks.get((cast(str, symbols[before]), merged))) is not None:
                push(heap, (r, before))
        return [s for s in symbols if s is not None]

    def _chunk(self, chunk: str) -> tuple[int, ...]:
        """Ids of one space-free chunk of cleaned text, cached (the caller has already missed the cache)."""
        pattern = _ASCII_PATTERN if chunk.isascii() and chunk.isprintable() else PATTERN
        tokens = pattern.findall(chunk)
        parts = list(map(self._bpe_cache.get, tokens))  # the pre-tokens of a new chunk are mostly known
        if None in parts:
            parts = [ids or self._bpe(token) for ids, token in zip(parts, tokens)]
        ids = tuple(chain.from_iterable(cast("list[tuple[int, ...]]", parts)))  # every None is filled in
        if len(self._chunk_cache) < _CACHE_LIMIT and len(chunk) <= _CACHE_MAX_KEY:
            self._chunk_cache[chunk] = ids
        return ids

    def _chunks(self, text: str) -> list[str]:
        """Cleaned text split on its (single) spaces; no pre-token spans a space, so chunks tokenise alone.

        Only the first ``max_chars`` characters are read: the cut comes before any other work."""
        text = text[: self.max_chars]
        if is_plain_ascii(text):
            return text.lower().split()  # clean() minus work that cannot change the chunks
        return clean(text).split()

    def encode(self, text: str) -> list[int]:
        """Token ids of one text (its first ``max_chars`` characters), without start/end tokens."""
        get, miss = self._chunk_cache.get, self._chunk
        return list(chain.from_iterable([get(c) or miss(c) for c in self._chunks(text)]))

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> torch.Tensor:
        """Tokenises a text or a batch into a zero-padded LongTensor (N, context_length)."""
        import torch

        return torch.from_numpy(self.numpy(texts, context_length))

    def numpy(self, texts: str | Sequence[str], context_length: int | None = None) -> np.ndarray:
        """The ids ``__call__`` gives, as an int64 array (N, context_length), without importing torch."""
        if isinstance(texts, str):
            texts = [texts]
        n_ctx = context_length or self._context_length
        if n_ctx < 2:
            raise ValueError(f"context_length must be at least 2 (start and end of text), got {n_ctx}")
        bad = next((row for row, text in enumerate(texts) if not isinstance(text, str)), None)
        if bad is not None:
            raise TypeError(f"text {bad}: expected a string, got {type(texts[bad]).__name__}")
        flat: list[int] = []
        ends = [0]  # len(flat) after each text
        extend, end = flat.extend, ends.append
        get, miss = self._chunk_cache.get, self._chunk
        # Truncating, ids past the first n_ctx - 2 are cut, so a text's chunks stop once there are more than that
        # (one more than fits marks the text as cut). Not truncating, every id is counted for the error message.
        enough = n_ctx - 2 if self.truncate else 1 << 62
        for text in texts:
            stop = len(flat) + enough
            for chunk in self._chunks(text):
                extend(get(chunk) or miss(chunk))
                if len(flat) > stop:
                    break
            end(len(flat))
        ids, offsets = np.array(flat, dtype=np.int64), np.array(ends, dtype=np.int64)
        return self._pack(ids, offsets, n_ctx)

    def _pack(self, ids: np.ndarray, offsets: np.ndarray, n_ctx: int) -> np.ndarray:
        """Rows ``[SOT, ids[offsets[i]:offsets[i + 1]] (cut to fit), EOT, 0...]``, (N, n_ctx), written at once."""
        counts = np.diff(offsets)
        too_long = np.flatnonzero(counts > n_ctx - 2)
        if too_long.size and not self.truncate:
            row = int(too_long[0])
            raise ValueError(f"text {row} has {counts[row] + 2} tokens, more than the context length {n_ctx}; "
                             "pass truncate=True to cut it")
        keep = np.minimum(counts, n_ctx - 2)  # cut: end-of-text stays last, as open_clip does
        out = np.zeros((len(counts), n_ctx), dtype=np.int64)
        out[:, 0] = self.sot_token_id
        out[np.arange(len(counts)), keep + 1] = self.eot_token_id
        column = np.arange(n_ctx)
        body = (column >= 1) & (column <= keep[:, None])  # (N, n_ctx): where each row's kept ids go
        kept_before = np.cumsum(keep) - keep
        out[body] = ids[np.arange(keep.sum()) + np.repeat(offsets[:-1] - kept_before, keep)]  # row-major gather
        return out

    def decode(self, ids: Sequence[int] | np.ndarray | torch.Tensor) -> str:
        """Text of a token sequence; start-of-text is dropped, and everything from the first end-of-text on.

        Id 0 is a real token (the byte ``!``), so padding is recognised by its position after end-of-text,
        not by its value.
        """
        ids = [int(i) for i in (ids.tolist() if hasattr(ids, "tolist") else ids)]  # a tensor or an array: one row
        sot, eot = self.sot_token_id, self.eot_token_id
        if eot in ids:
            ids = ids[: ids.index(eot)]
        text = "".join(self.decoder[i] for i in ids if i != sot)
        data = bytearray(self.byte_decoder[c] for c in text)
        return data.decode("utf-8", errors="replace").replace("</w>", " ").strip()

    def batch_decode(self, batch: Sequence[Sequence[int]] | np.ndarray | torch.Tensor) -> list[str]:
        """``decode`` of every row."""
        return [self.decode(row) for row in batch]

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Writes the merges in use as ``bpe_vocab.txt.gz`` so a model directory carries its vocabulary.

        ``BPETokenizer(vocab_path=<returned path>)`` gives the same ids.
        """
        path = Path(directory) / SAVED_VOCAB_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        write_merges(path, self.merges, compress=True)
        return path

    def save_hf(self, directory: str | os.PathLike) -> None:
        """Writes ``vocab.json``/``merges.txt`` and configs that ``transformers.CLIPTokenizer`` loads offline.

        HF's tokenizer has no HTML unescaping, so its ids differ from these wherever that changes the text.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "vocab.json").write_text(json.dumps(self.encoder, ensure_ascii=False), encoding="utf-8")
        write_merges(directory / "merges.txt", self.merges, compress=False)
        special = {"bos_token": SOT, "eos_token": EOT, "unk_token": EOT, "pad_token": EOT}
        (directory / "special_tokens_map.json").write_text(json.dumps(special), encoding="utf-8")
        config = {**special, "model_max_length": self._context_length, "tokenizer_class": "CLIPTokenizer"}
        (directory / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")


@lru_cache
def get_default_tokenizer() -> BPETokenizer:
    """OpenAI's tokenizer with a 77-token context, built once per process."""
    return BPETokenizer()
