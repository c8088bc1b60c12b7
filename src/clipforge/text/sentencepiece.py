"""SigLIP's and SigLIP 2's SentencePiece tokenizers, with transformers' exact ids and a batch fast path.

Each style (``SentencePieceConfig.style``) gives the ids of the transformers tokenizer the released checkpoints
load, called as ``tokenizer(texts, padding="max_length", max_length=64, truncation=True)``:

``"siglip"``: ``SiglipTokenizer`` (transformers 5.24) on a ``spiece.model`` (``<pad>``=0, ``</s>``=1, ``<unk>``=2).
Every ``▁`` of the text becomes a space and one ``▁`` goes in front; the special tokens' spellings ``</s>`` and
``<unk>`` are split out of the *raw* text (so a caption can end itself with ``</s>``, as in transformers), the
whitespace around them stripped; each other part is canonicalised as big_vision's ``canonicalize_text`` does
(lower-cased when ``lower``, ASCII punctuation removed, whitespace runs made one space, stripped) and encoded as
``"<unk>" + part`` with the ids of ``"<unk>"`` dropped (transformers' trick for word-initial pieces); a lone
leading ``▁`` before a special token is dropped. Truncation keeps ``context_length - 1`` ids, then ``</s>`` is
appended unless the last kept id already is ``</s>``; padding (right) is ``</s>`` too, so ``""``, ``"!!!"`` and
``"</s>"`` all give ``[1, 1, ...]``.

``"gemma"``: ``GemmaTokenizer`` as ``google/siglip2-*`` configure it (``add_bos_token=False``,
``add_eos_token=True``, ``padding_side="right"``; ``<pad>``=0, ``<eos>``=1, ``<bos>``=2, ``<unk>``=3). The
model's unknown, control and user-defined pieces and the special tokens are split out of the raw text
(leftmost-longest); each other part is lower-cased when ``lower`` (per character, as ``tokenizers``' ``Lowercase``:
no final-sigma rule, the Unicode 17 tables of tokenizers 0.23) and BPE-encoded with no dummy prefix. The encoder is
the file's model rewritten (``bpe_as_transformers``) so SentencePiece merges as the ``tokenizers`` BPE transformers
builds from the file. No ``<bos>``; truncation keeps ``context_length - 1`` ids and ``<eos>`` always follows
(big_vision's ``eos="sticky"``); padding (right) is ``<pad>``, so ``""`` gives ``[1, 0, 0, ...]``.

Lower-casing in SigLIP 2: the models were trained on lower-cased text (model cards; big_vision lower-cases before
its Gemma tokenizer), but the released processors did not lower-case (``convert_siglip2_to_hf.py`` built a plain
``GemmaTokenizerFast(add_bos_token=False, add_eos_token=True, padding_side="right")``). In transformers 5.24 (since
PR #43101) ``AutoTokenizer`` gives the NaFlex checkpoints (``model_type`` ``siglip2``) a lower-casing
``Siglip2Tokenizer``; the fixed-resolution ones (``google/siglip2-base-patch16-224`` …, ``model_type`` ``siglip``)
still get ``GemmaTokenizer``. ``lower=True`` (default) gives ``Siglip2Tokenizer``'s ids, ``lower=False``
``GemmaTokenizer``'s. Both are used with ``padding="max_length", max_length=64`` (``Siglip2Processor``'s defaults).

open_clip (``HFTokenizer(clean="canonicalize")`` in its SigLIP and SigLIP 2 configs) differs: it runs ftfy and
HTML unescaping first, turns ``_`` into a space before removing punctuation, and removes punctuation for SigLIP 2
too (and so no caption can inject a special token there: ``<`` is removed).

Exactness and its limits: the parity tests compare whole padded batches with transformers on SentencePiece models
trained in each layout on a generated multilingual corpus. Not covered there: a Gemma merge tie (one piece made by
two overlapping pairs split differently, ``ab|a`` vs ``a|ba``: transformers takes the shorter left part,
SentencePiece the leftmost pair); characters merging into a control or byte piece (transformers can, SentencePiece
never does); and transformers reading a released checkpoint's ``tokenizer.json`` merges instead of regenerating
them from ``tokenizer.model``. Texts are cut to ``max_chars`` characters (default 8,192) before any other work; a
text with unpaired surrogates (not valid Unicode: transformers fails on it) has them replaced by U+FFFD.
"""

from __future__ import annotations

import re
import string
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from clipforge.config import ConfigError, from_dict, to_dict

if TYPE_CHECKING:
    import torch

STYLES = ("siglip", "gemma")
MODEL_FILES = {"siglip": "spiece.model", "gemma": "tokenizer.model"}
MAX_CHARS = 8192
MAX_MODEL_BYTES = 64 * 2**20  # Gemma's 256k-piece tokenizer.model is 4 MiB
SPIECE_UNDERLINE = "▁"
INSTALL_HINT = "pip install 'clipforge[sentencepiece]'"
# transformers' SiglipTokenizer defaults: </s> is both end of text and padding.
SIGLIP_TOKENS = {"eos": "</s>", "pad": "</s>", "unk": "<unk>"}
# GemmaTokenizer's defaults; <mask> is only special where the vocabulary has it (Gemma's does, id 4).
GEMMA_TOKENS = {"pad": "<pad>", "eos": "<eos>", "bos": "<bos>", "unk": "<unk>", "mask": "<mask>"}

_PUNCTUATION = string.punctuation.encode()  # ASCII: deleting these bytes from UTF-8 deletes exactly these characters
_SURROGATE = re.compile("[\ud800-\udfff]")
# Capital letters whose lower case ``tokenizers`` 0.23 knows (Rust's Unicode 17 tables) and Python 3.11's
# ``str.lower`` does not (Unicode 14): Cyrillic TJE, eight Latin letters (Unicode 16), Garay (16), Beria Erfe (17).
_NEWER_LOWER = {0x1C89: 0x1C8A, 0xA7CB: 0x0264, 0xA7CC: 0xA7CD, 0xA7CE: 0xA7CF, 0xA7D2: 0xA7D3, 0xA7D4: 0xA7D5,
                0xA7DA: 0xA7DB, 0xA7DC: 0x019B, **{0x10D50 + i: 0x10D70 + i for i in range(22)},
                **{0x16EA0 + i: 0x16EBB + i for i in range(25)}}


@dataclass(frozen=True)
class SentencePieceConfig:
    """Which SentencePiece tokenizer, as plain data a model config carries (``text.sentencepiece``).

    Attributes:
        style: ``siglip`` (``SiglipTokenizer``) or ``gemma`` (``GemmaTokenizer`` as SigLIP 2 uses it).
        context_length: Ids per text, end of text included (64 for the released models).
        lower: Lower-case first: ``do_lower_case`` for ``siglip``; ``Siglip2Tokenizer``'s lower-casing for
            ``gemma`` (false: the plain ``GemmaTokenizer``). See the module docstring.
        file: Name of the model file in a model directory; default ``spiece.model`` (siglip) or
            ``tokenizer.model`` (gemma).
        max_chars: Characters of a text read at most; the rest is cut before any other work.
    """

    style: Literal["siglip", "gemma"] = "siglip"
    context_length: int = 64
    lower: bool = True
    file: str | None = None
    max_chars: int = MAX_CHARS

    def __post_init__(self) -> None:
        def is_int(value: Any) -> bool:
            return isinstance(value, int) and not isinstance(value, bool)

        if self.style not in STYLES:
            raise ConfigError(f"sentencepiece.style: expected one of {STYLES}, got {self.style!r}")
        if not is_int(self.context_length) or self.context_length < 1:
            raise ConfigError("sentencepiece.context_length: expected an integer ≥ 1 (room for the end of text), "
                              f"got {self.context_length!r}")
        if not isinstance(self.lower, bool):
            raise ConfigError(f"sentencepiece.lower: expected true/false, got {self.lower!r}")
        if self.file is not None and (not isinstance(self.file, str) or not self.file or "/" in self.file
                                      or "\\" in self.file or self.file in (".", "..")):
            raise ConfigError(f"sentencepiece.file: expected a plain file name such as 'spiece.model', "
                              f"got {self.file!r}")
        if not is_int(self.max_chars) or self.max_chars < 1:
            raise ConfigError(f"sentencepiece.max_chars: expected a positive integer, got {self.max_chars!r}")

    @property
    def model_file(self) -> str:
        """The model file's name in a model directory."""
        return self.file or MODEL_FILES[self.style]

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict."""
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SentencePieceConfig:
        """Builds a config from a mapping (unknown keys and wrong types are ``ConfigError``s naming
        ``sentencepiece.<field>``)."""
        return from_dict(cls, data, "sentencepiece")


def _sentencepiece() -> Any:
    """The ``sentencepiece`` module, imported on first use (an optional dependency)."""
    try:
        import sentencepiece
    except ImportError as e:
        raise ImportError(f"SigLIP's tokenizers need the sentencepiece package: {INSTALL_HINT}") from e
    return sentencepiece


def load_model(path: str | Path) -> tuple[Any, bytes]:
    """Reads and parses a SentencePiece model file.

    Returns:
        The ``SentencePieceProcessor`` and the file's bytes.

    Raises:
        FileNotFoundError: ``path`` is not a file.
        ValueError: the file is empty, too large or not a SentencePiece model.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: SentencePiece model file not found (expected spiece.model for SigLIP, "
                                "tokenizer.model for SigLIP 2)")
    size = path.stat().st_size
    if size == 0 or size > MAX_MODEL_BYTES:
        raise ValueError(f"not a SentencePiece model: {path} ({size:,} bytes; expected 1 to {MAX_MODEL_BYTES:,})")
    data = path.read_bytes()
    return _processor(data, path), data


def _processor(data: bytes, path: Path) -> Any:
    """A ``SentencePieceProcessor`` of serialized model bytes; any failure a ``ValueError`` naming ``path``."""
    processor = _sentencepiece().SentencePieceProcessor()
    try:
        processor.LoadFromSerializedProto(data)
    except (RuntimeError, OSError, ValueError, TypeError) as e:
        reason = str(e).strip().removeprefix("INTERNAL: ")
        if "ParseFromArray" in reason:
            reason = "the bytes do not parse as a ModelProto"
        raise ValueError(f"not a SentencePiece model: {path} ({reason[:200]})") from None
    if processor.get_piece_size() < 1:
        raise ValueError(f"not a SentencePiece model: {path} (no pieces)")
    return processor


# --- the model file's protobuf, read and rewritten without the protobuf package -------------------------------

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED = 1, 2, 3, 4, 5  # SentencePiece.Type (sentencepiece_model.proto)
BPE = 2  # TrainerSpec.ModelType (1 unigram, the default; 3 word; 4 char)


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    if pos < len(data) and data[pos] < 0x80:  # one byte: tags, piece lengths, types
        return data[pos], pos + 1
    value = shift = 0
    while pos < len(data) and shift < 64:
        value, pos, shift = value | (data[pos] & 0x7F) << shift, pos + 1, shift + 7
        if data[pos - 1] < 0x80:
            return value, pos
    raise ValueError("truncated protobuf varint")


def _varint_bytes(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    return bytes(out) + bytes([value])


def _fields(data: bytes) -> Iterable[tuple[int, int | bytes, bytes]]:
    """(field number, value, the field's bytes) of a protobuf message; varints are ints, other values bytes."""
    pos = 0
    while pos < len(data):
        start = pos
        tag, pos = _varint(data, pos)
        value: int | bytes
        if tag & 7 == 0:
            value, pos = _varint(data, pos)
        elif tag & 7 in (1, 2, 5):
            size, pos = _varint(data, pos) if tag & 7 == 2 else (8 if tag & 7 == 1 else 4, pos)
            value, pos = data[pos:pos + size], pos + size
        else:
            raise ValueError(f"unsupported protobuf wire type {tag & 7}")
        if pos > len(data):
            raise ValueError("truncated protobuf field")
        yield tag >> 3, value, data[start:pos]


def _type_and_rest(message: bytes) -> tuple[int, bytes]:
    """Field 3 as a varint (the last one wins; ``SentencePiece.type`` and ``TrainerSpec.model_type`` both default
    to 1) and the message's bytes without fields 2 and 3."""
    kind, rest = 1, bytearray()
    for field, value, raw in _fields(message):
        if field == 3 and isinstance(value, int):
            kind = value
        elif field not in (2, 3):
            rest += raw
    return kind, bytes(rest)


def piece_types(model: bytes) -> list[int]:
    """Every piece's ``SentencePiece.Type`` in a serialized ``ModelProto`` (sentencepiece's Python API cannot
    tell user-defined pieces)."""
    return [_type_and_rest(piece)[0] for number, piece, _ in _fields(model) if number == 1 and isinstance(piece, bytes)]


def model_type(model: bytes) -> int:
    """``TrainerSpec.model_type`` of a serialized ``ModelProto``."""
    specs = [spec for number, spec, _ in _fields(model) if number == 2 and isinstance(spec, bytes)]
    return _type_and_rest(specs[-1])[0] if specs else 1


# GemmaTokenizer ignores the file's normaliser: identity, no dummy prefix, whitespace kept, spaces escaped to ▁.
_GEMMA_NORMALIZER = b"\x0a\x08identity" + b"\x18\x00" + b"\x20\x00" + b"\x28\x01"


def bpe_as_transformers(model: bytes) -> bytes:
    """A BPE model whose SentencePiece encoder gives the ids of transformers' ``GemmaTokenizer`` on the same file.

    transformers builds a ``tokenizers`` BPE in which every piece is a vocabulary entry, a merge ranks by its
    result's id, text is only space-escaped, and user-defined pieces are matched in the raw text alone (which the
    caller does). So user-defined and unused pieces become normal ones (SentencePiece would also match them
    after escaping or lower-casing, longest first, and never emit unused ones), piece ``i`` scores ``-i``
    (user-defined runs like ``▁▁`` merge first, pair by pair), and the normaliser is ``_GEMMA_NORMALIZER``.
    """
    out = bytearray(b"\x1a" + _varint_bytes(len(_GEMMA_NORMALIZER)) + _GEMMA_NORMALIZER)  # field 3: normaliser
    index = 0
    for number, value, raw in _fields(model):
        if number == 1 and isinstance(value, bytes):  # ModelProto.pieces
            kind, body = _type_and_rest(value)  # body: the piece string
            body += b"\x15" + struct.pack("<f", -float(index))  # field 2 (fixed32): score
            body += b"\x18" + _varint_bytes(NORMAL if kind in (USER_DEFINED, UNUSED) else kind)  # field 3: type
            out += b"\x0a" + _varint_bytes(len(body)) + body
            index += 1
        elif number != 3:  # the file's normaliser is replaced
            out += raw
    return bytes(out)


def _alternation(tokens: Iterable[str]) -> re.Pattern[str]:
    """A regex (one capturing group) matching any of ``tokens`` leftmost-longest, as transformers' trie and
    ``tokenizers``' added vocabulary split text: the leftmost match, and there the longest alternative."""
    return re.compile("(" + "|".join(map(re.escape, sorted(tokens, key=lambda t: (-len(t), t)))) + ")")


def _fix_surrogates(text: str) -> str:
    """Pairs of surrogate code points joined, lone ones replaced by U+FFFD (a no-op for valid text)."""
    if text.isascii() or not _SURROGATE.search(text):
        return text
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def _lower_per_character(text: str) -> str:
    """``tokenizers``' ``Lowercase``: each character's lower case, without Python's final-sigma rule, and with
    the capitals newer than Python's Unicode tables (``_NEWER_LOWER``)."""
    if text.isascii():
        return text.lower()
    lowered = text.lower() if "Σ" not in text else "".join(ch.lower() for ch in text)
    return lowered.translate(_NEWER_LOWER)


class SentencePieceTokenizer:
    """SigLIP's or SigLIP 2's tokenizer: ``tokenizer(texts) -> LongTensor (N, context_length)``.

    Ids equal transformers' ``SiglipTokenizer`` / ``GemmaTokenizer`` with ``padding="max_length",
    max_length=context_length, truncation=True`` (see the module docstring for every rule).

    Args:
        model_path: The SentencePiece model file (``spiece.model`` / ``tokenizer.model``).
        config: Style, context length, lower-casing and limits.
    """

    def __init__(self, model_path: str | Path, config: SentencePieceConfig = SentencePieceConfig()):
        self.config = config
        self.model_path = Path(model_path)
        self.sp, self._model_bytes = load_model(self.model_path)
        if config.style == "siglip":
            ids = self._special_ids(SIGLIP_TOKENS)
            self._specials = {SIGLIP_TOKENS[role]: ids[role] for role in ("eos", "unk")}
            self._unk_text, self._unk_length = SIGLIP_TOKENS["unk"], len(self.sp.encode(SIGLIP_TOKENS["unk"]))
            # A special token's spelling could come back as the surface of an unknown piece (all its characters
            # unknown; transformers then maps it to the special id): texts with unknown pieces take the exact
            # path. Never so for SigLIP's vocabulary.
            unk = self.sp.unk_id()
            self._risky = any(all(self.sp.piece_to_id(ch) == unk for ch in token) for token in self._specials)
        else:
            ids = self._setup_gemma()
        self.eos_token_id, self.pad_token_id = ids["eos"], ids["pad"]
        self._split = _alternation(self._specials)
        self._firsts = sorted({token[0] for token in self._specials})

    def _setup_gemma(self) -> dict[str, int]:
        """Checks a Gemma-layout BPE model, collects the tokens transformers splits out of the raw text (unknown,
        control and user-defined pieces, the special tokens) and loads the encoder with transformers' merges."""
        try:
            kind, types = model_type(self._model_bytes), piece_types(self._model_bytes)
            encoder = bpe_as_transformers(self._model_bytes)
        except ValueError as e:
            raise ValueError(f"not a SentencePiece model: {self.model_path} ({e})") from None
        if kind != BPE:
            raise ValueError(f"{self.model_path}: a unigram (or word/char) SentencePiece model; the 'gemma' style "
                             "expects a BPE model (Gemma's tokenizer.model)")
        ids = self._special_ids(GEMMA_TOKENS)
        added = {self.sp.id_to_piece(i): i for i, kind in enumerate(types) if kind in (UNKNOWN, CONTROL, USER_DEFINED)}
        added |= {GEMMA_TOKENS[role]: i for role, i in ids.items()}
        self._specials = {piece: i for piece, i in added.items() if piece}
        self.sp = _processor(encoder, self.model_path)
        return ids

    @classmethod
    def from_directory(cls, directory: str | Path, config: SentencePieceConfig = SentencePieceConfig()
                       ) -> SentencePieceTokenizer:
        """The tokenizer of a model directory: its ``config.model_file`` (``spiece.model`` or
        ``tokenizer.model``)."""
        return cls(Path(directory) / config.model_file, config)

    def _special_ids(self, tokens: dict[str, str]) -> dict[str, int]:
        """Ids of the style's special tokens the vocabulary has; end of text, padding and unknown must be there."""
        ids = {}
        for role, piece in tokens.items():
            i = self.sp.piece_to_id(piece)
            if self.sp.id_to_piece(i) == piece:
                ids[role] = i
            elif role in ("eos", "pad", "unk"):
                raise ValueError(f"{self.model_path}: no {piece!r} piece ({role} token of the {self.config.style!r} "
                                 f"style); expected a {MODEL_FILES[self.config.style]} of that layout")
        return ids

    @property
    def vocab_size(self) -> int:
        """Number of ids (rows of the text embedding table)."""
        return int(self.sp.get_piece_size())

    @property
    def context_length(self) -> int:
        """Default ids per text, end of text included."""
        return self.config.context_length

    def _has_special(self, text: str) -> bool:
        return any(first in text for first in self._firsts) and self._split.search(text) is not None

    def _canonicalize(self, text: str) -> str:
        """SiglipTokenizer.canonicalize_text: lower-case, ASCII punctuation removed, whitespace collapsed and
        stripped (``" ".join(split())`` is ``re.sub(r"\\s+", " ", text).strip()``: both use ``str.isspace``)."""
        if self.config.lower:
            text = text.lower()
        return " ".join(text.encode().translate(None, _PUNCTUATION).decode().split())

    def _siglip_exact(self, text: str) -> list[int]:
        """SiglipTokenizer.tokenize + convert_tokens_to_ids step by step, for texts with a special token."""
        # Odd parts are special tokens. transformers strips the whitespace around them (AddedToken lstrip/rstrip);
        # canonicalisation strips it anyway.
        parts = self._split.split(SPIECE_UNDERLINE + text.replace(SPIECE_UNDERLINE, " "))
        tokens: list[str] = []
        for i, part in enumerate(parts):
            if part and i % 2:
                tokens.append(part)
            elif part:  # _tokenize: the pieces of "<unk>" + canonical text, without those of "<unk>"
                pieces = self.sp.encode(self._unk_text + self._canonicalize(part), out_type=str)
                tokens += pieces[self._unk_length:] if len(pieces) >= self._unk_length else pieces
        if len(tokens) > 1 and tokens[0] == SPIECE_UNDERLINE and tokens[1] in self._specials:
            tokens = tokens[1:]
        return [self._specials[t] if t in self._specials else self.sp.piece_to_id(t) for t in tokens]

    def encode(self, text: str) -> list[int]:
        """Ids of one text (its first ``max_chars`` characters), before truncation and without end of text."""
        return self._encode_batch([text])[0]

    def _encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Each text's ids (no end of text, not truncated), the encoder called once for the whole batch."""
        texts = [_fix_surrogates(t[: self.config.max_chars]) for t in texts]
        return self._encode_siglip(texts) if self.config.style == "siglip" else self._encode_gemma(texts)

    def _encode_siglip(self, texts: list[str]) -> list[list[int]]:
        n_unk, unk_id, mark = self._unk_length, self.sp.unk_id(), SPIECE_UNDERLINE
        inputs = [self._unk_text + self._canonicalize(mark + t.replace(mark, " ")) for t in texts]
        encoded = self.sp.encode(inputs, out_type=int, num_threads=1)  # more threads: no gain; loaders fork
        rows = [ids[n_unk:] if len(ids) >= n_unk else ids for ids in encoded]
        for i, text in enumerate(texts):  # the few texts with a special token's spelling: transformers' way
            if self._has_special(text) or (self._risky and unk_id in rows[i]):
                rows[i] = self._siglip_exact(text)
        return rows

    def _encode_gemma(self, texts: list[str]) -> list[list[int]]:
        segments: list[str] = []
        layouts: list[list[int | None]] = []  # per text: a special token's id, or None for the next segment
        for text in texts:
            parts = self._split.split(text) if self._has_special(text) else [text]
            layout: list[int | None] = []
            for i, part in enumerate(parts):
                if i % 2:
                    layout.append(self._specials[part])
                elif part:
                    segments.append(_lower_per_character(part) if self.config.lower else part)
                    layout.append(None)
            layouts.append(layout)
        encoded = iter(self.sp.encode(segments, out_type=int, num_threads=1))
        return [next(encoded) if layout == [None] else
                list(chain.from_iterable(next(encoded) if i is None else (i,) for i in layout)) for layout in layouts]

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> torch.Tensor:
        """Tokenises a text or a batch into a LongTensor (N, context_length), padded on the right."""
        import torch
        return torch.from_numpy(self.numpy(texts, context_length))

    def numpy(self, texts: str | Sequence[str], context_length: int | None = None) -> np.ndarray:
        """The ids ``__call__`` gives, as an int64 array (N, context_length), without importing torch."""
        texts = [texts] if isinstance(texts, str) else texts
        n_ctx = context_length or self.config.context_length
        if n_ctx < 1:
            raise ValueError(f"context_length must be at least 1 (the end of text), got {n_ctx}")
        bad = next((row for row, text in enumerate(texts) if not isinstance(text, str)), None)
        if bad is not None:
            raise TypeError(f"text {bad}: expected a string, got {type(texts[bad]).__name__}")
        return self._pack(self._encode_batch(texts), n_ctx)

    def _pack(self, rows: list[list[int]], n_ctx: int) -> np.ndarray:
        """Rows ``[ids cut to n_ctx - 1, end of text, pad...]`` (N, n_ctx), written at once.

        ``SiglipTokenizer`` appends no ``</s>`` after a kept last id that already is ``</s>``; as it pads with
        ``</s>`` too, the rows are the same as with ``</s>`` always appended.
        """
        counts = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
        keep = np.minimum(counts, n_ctx - 1)
        ids = np.fromiter(chain.from_iterable(row[:n_ctx - 1] for row in rows), dtype=np.int64, count=int(keep.sum()))
        out = np.full((len(rows), n_ctx), self.pad_token_id, dtype=np.int64)
        out[np.arange(n_ctx) < keep[:, None]] = ids  # row-major: each row's kept ids in order
        out[np.arange(len(rows)), keep] = self.eos_token_id
        return out

    def decode(self, ids: Sequence[int] | np.ndarray | torch.Tensor) -> str:
        """Text of one row: everything before the first end of text, special pieces dropped."""
        ids = [int(i) for i in (ids.tolist() if hasattr(ids, "tolist") else ids)]  # a tensor or an array: one row
        if self.eos_token_id in ids:
            ids = ids[: ids.index(self.eos_token_id)]
        size = self.vocab_size
        kept = [i for i in ids if 0 <= i < size and not self.sp.is_control(i)]
        return str(self.sp.decode(kept))

    def save_pretrained(self, directory: str | Path) -> Path:
        """Writes the model file (the bytes that were loaded) as ``config.model_file`` into ``directory``.

        ``SentencePieceTokenizer.from_directory(directory, config)`` then gives the same ids.
        """
        path = Path(directory) / self.config.model_file
        path.parent.mkdir(parents=True, exist_ok=True)
        if not (path.exists() and path.samefile(self.model_path)):
            path.write_bytes(self._model_bytes)
        return path


def saved_sentencepiece(directory: str | Path | None) -> Path | None:
    """The SentencePiece model a saved model directory carries (``spiece.model``, ``tokenizer.model``) or None."""
    if directory is None or not Path(directory).is_dir():
        return None
    for name in MODEL_FILES.values():
        if (Path(directory) / name).is_file():
            return Path(directory) / name
    return None


__all__ = ["MODEL_FILES", "SentencePieceConfig", "SentencePieceTokenizer", "load_model", "saved_sentencepiece"]
