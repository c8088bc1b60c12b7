"""CLIP's byte-level BPE tokenizer, with OpenAI's exact ids and a fast batch path.

The algorithm is OpenAI's ``SimpleTokenizer`` (``clip/simple_tokenizer.py``): ftfy fix, HTML unescape
(twice), whitespace collapse, lowercase, the same regex pre-tokenisation, bytes mapped to printable
unicode, BPE merges with a ``</w>`` end-of-word marker, and start/end-of-text tokens around each text.

Speed comes from three exact shortcuts, each proven by the parity tests against open_clip:
- ftfy and HTML unescaping cannot change printable ASCII text without ``&``, so such text skips them;
- BPE results are cached per pre-token (words repeat across a corpus);
- ids are written straight into one preallocated int64 array.
"""

from __future__ import annotations

import gzip
import html
import importlib.resources
import json
import os
import re
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import ftfy
import numpy as np
import regex
import torch

SOT, EOT = "<|startoftext|>", "<|endoftext|>"
VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
_PATTERN = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)
# The same pattern for lowercased printable ASCII, where \p{L} is [a-z] and \p{N} is [0-9]; the stdlib engine is
# faster than ``regex`` and the parity tests prove the two agree on such text.
_ASCII_PATTERN = re.compile(r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[a-z]+|[0-9]|[^\sa-z0-9]+""")
_WHITESPACE = regex.compile(r"\s+")


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


def clean(text: str) -> str:
    """OpenAI's text clean-up: ftfy fix, HTML unescape twice, whitespace collapse and strip, lowercase."""
    if text.isascii() and text.isprintable() and "&" not in text:
        return " ".join(text.split()).lower()  # ftfy and unescaping provably change nothing here
    text = html.unescape(html.unescape(ftfy.fix_text(text)))
    return _WHITESPACE.sub(" ", text).strip().lower()


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


class BPETokenizer:
    """CLIP's tokenizer: ``tokenizer(texts) -> LongTensor (N, context_length)``, zero-padded.

    Truncation: by default (``truncate=True``) a text longer than the context is cut and its last token
    replaced by end-of-text, as open_clip does, so long alt-texts never stop a training run. With
    ``truncate=False`` an over-long text raises ``ValueError`` naming its index and length, as OpenAI's
    ``clip.tokenize`` does without ``truncate=True``.

    Args:
        vocab_path: A gzipped merges file; default: OpenAI's (49,408 tokens).
        context_length: Tokens per text, start and end tokens included.
        truncate: See above.
        num_merges: How many merges of the file to use; default: all for a custom file, 48,894 for
            OpenAI's (its file lists more merges than the released vocabulary uses).
    """

    def __init__(self, vocab_path: str | os.PathLike | None = None, context_length: int = 77, truncate: bool = True,
                 num_merges: int | None = None):
        self.vocab_path = Path(vocab_path) if vocab_path is not None else default_vocab_path()
        merges = read_merges(self.vocab_path)
        if num_merges is None:
            num_merges = 49152 - 256 - 2 if vocab_path is None or self.vocab_path.name == VOCAB_FILE else len(merges)
        self.merges = merges[:num_merges]
        byte_symbols = list(bytes_to_unicode().values())
        vocab = byte_symbols + [s + "</w>" for s in byte_symbols] + ["".join(m) for m in self.merges] + [SOT, EOT]
        self.encoder = {token: i for i, token in enumerate(vocab)}
        self.decoder = dict(enumerate(vocab))
        self.ranks = {m: i for i, m in enumerate(self.merges)}
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {v: k for k, v in self.byte_encoder.items()}
        self._context_length = context_length
        self.truncate = truncate
        self._cache: dict[str, list[int]] = {SOT: [self.encoder[SOT]], EOT: [self.encoder[EOT]]}

    @property
    def vocab_size(self) -> int:
        return len(self.encoder)

    @property
    def sot_token_id(self) -> int:
        return self.encoder[SOT]

    @property
    def eot_token_id(self) -> int:
        return self.encoder[EOT]

    @property
    def context_length(self) -> int:
        return self._context_length

    def _bpe(self, raw: str) -> list[int]:
        """BPE ids of one pre-token, cached by its raw text."""
        ids = self._cache.get(raw)
        if ids is not None:
            return ids
        token = "".join(self.byte_encoder[b] for b in raw.encode("utf-8"))
        word = [*token[:-1], token[-1] + "</w>"]
        while len(word) > 1:
            pairs = {(word[i], word[i + 1]) for i in range(len(word) - 1)}
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(word):
                if i < len(word) - 1 and word[i] == best[0] and word[i + 1] == best[1]:
                    merged.append(best[0] + best[1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        ids = [self.encoder[w] for w in word]
        if len(self._cache) < 1_000_000:
            self._cache[raw] = ids
        return ids

    def encode(self, text: str) -> list[int]:
        """Token ids of one text, without start/end tokens."""
        text = clean(text)
        pattern = _ASCII_PATTERN if text.isascii() and text.isprintable() else _PATTERN
        cache, ids = self._cache, []
        for token in pattern.findall(text):
            hit = cache.get(token)
            ids += hit if hit is not None else self._bpe(token)
        return ids

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> torch.Tensor:
        """Tokenises a text or a batch into a zero-padded LongTensor (N, context_length)."""
        if isinstance(texts, str):
            texts = [texts]
        n_ctx = context_length or self._context_length
        sot, eot = self.sot_token_id, self.eot_token_id
        flat: list[int] = []
        lengths = np.empty(len(texts), dtype=np.int64)
        for row, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"text {row}: expected a string, got {type(text).__name__}")
            ids = self.encode(text)
            if len(ids) + 2 > n_ctx:
                if not self.truncate:
                    raise ValueError(f"text {row} has {len(ids) + 2} tokens, more than the context length {n_ctx}; "
                                     "pass truncate=True to cut it")
                ids = ids[: n_ctx - 2]
            flat.append(sot)
            flat += ids
            flat.append(eot)
            lengths[row] = len(ids) + 2
        out = np.zeros((len(texts), n_ctx), dtype=np.int64)
        out[np.arange(n_ctx) < lengths[:, None]] = flat  # row-major scatter of every row's ids at once
        return torch.from_numpy(out)

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """Text of a token sequence; start/end tokens and padding are dropped."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        skip = {0, self.sot_token_id, self.eot_token_id}
        text = "".join(self.decoder[int(i)] for i in ids if int(i) not in skip)
        data = bytearray(self.byte_decoder[c] for c in text)
        return data.decode("utf-8", errors="replace").replace("</w>", " ").strip()

    def batch_decode(self, batch: Sequence[Sequence[int]] | torch.Tensor) -> list[str]:
        """``decode`` of every row."""
        return [self.decode(row) for row in batch]

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Writes the merges in use as ``bpe_vocab.txt.gz`` so a model directory carries its vocabulary."""
        path = Path(directory) / "bpe_vocab.txt.gz"
        path.parent.mkdir(parents=True, exist_ok=True)
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write("#version: 0.2\n" + "\n".join(" ".join(m) for m in self.merges) + "\n")
        return path

    def save_hf(self, directory: str | os.PathLike) -> None:
        """Writes ``vocab.json``/``merges.txt`` and configs that ``transformers.CLIPTokenizer`` loads offline."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "vocab.json").write_text(json.dumps(self.encoder, ensure_ascii=False), encoding="utf-8")
        (directory / "merges.txt").write_text(
            "#version: 0.2\n" + "\n".join(" ".join(m) for m in self.merges) + "\n", encoding="utf-8")
        special = {"bos_token": SOT, "eos_token": EOT, "unk_token": EOT, "pad_token": EOT}
        (directory / "special_tokens_map.json").write_text(json.dumps(special), encoding="utf-8")
        config = {**special, "model_max_length": self._context_length, "tokenizer_class": "CLIPTokenizer"}
        (directory / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")


@lru_cache
def get_default_tokenizer() -> BPETokenizer:
    """OpenAI's tokenizer with a 77-token context, built once per process."""
    return BPETokenizer()
