"""GNU Unifont as one numpy glyph table: the font file parsed once per process.

Unifont's ``.hex`` format is one glyph per line, ``CODEPOINT:HEX``: 32 hex digits are an 8×16 glyph (one
byte per row), 64 digits a 16×16 glyph (two bytes per row), most significant bit leftmost. The packaged
file is Unifont 15.0.01's Basic Multilingual Plane (SIL OFL 1.1, see ``assets/OFL-1.1.txt``).
"""

from __future__ import annotations

import gzip
import importlib.resources
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import cast

import numpy as np

FONT_FILE = "unifont-15.0.01.hex.gz"
CELL = 16  # every glyph is drawn in a 16×16 cell
PLANE = 0x10000  # the table covers the Basic Multilingual Plane
BLANK = PLANE  # index of the table's extra all-blank glyph (astral code points, characters without a glyph)


@dataclass(frozen=True, eq=False)
class GlyphTable:
    """Every glyph of a Unifont file, indexed by code point, plus one blank glyph at ``BLANK``.

    Attributes:
        columns: uint8 (65537, 16, 16) indexed [glyph, column, row], 1 = ink; column-major so that
            painting copies whole 16-pixel columns.
        advance: int64 (65537,): the glyph's cell width in the font (8 or 16), 0 where the font has none.
        first_ink: int64 (65537,): first inked column, -1 for a glyph without ink.
        last_ink: int64 (65537,): last inked column, -1 for a glyph without ink.
    """

    columns: np.ndarray
    advance: np.ndarray
    first_ink: np.ndarray
    last_ink: np.ndarray


def default_font_path() -> Path:
    """The packaged GNU Unifont 15.0.01 file."""
    return Path(str(importlib.resources.files("clipforge.text") / "assets" / FONT_FILE))


@lru_cache(maxsize=4)
def load_unifont(path: str | None = None) -> GlyphTable:
    """Parses a Unifont ``.hex`` or ``.hex.gz`` file (cached per process and path).

    Lines for code points outside the Basic Multilingual Plane are skipped.

    Args:
        path: The font file; ``None`` is the packaged Unifont.

    Raises:
        FileNotFoundError: The file does not exist (the message names it).
        ValueError: The file is not a readable Unifont ``.hex`` file (the message names it and the line).
    """
    p = Path(path) if path is not None else default_font_path()
    if not p.is_file():
        raise FileNotFoundError(f"{p}: Unifont font file not found (the text renderer needs it)")
    try:
        raw = gzip.decompress(p.read_bytes()) if p.suffix == ".gz" else p.read_bytes()
        lines = raw.decode("ascii").splitlines()
    except (OSError, EOFError, UnicodeDecodeError, gzip.BadGzipFile) as e:
        raise ValueError(f"{p}: not a readable Unifont .hex file ({e})") from None

    narrow_cp: list[int] = []
    wide_cp: list[int] = []
    narrow_hex: list[str] = []
    wide_hex: list[str] = []
    for n, line in enumerate(lines, start=1):
        code, sep, hexbits = line.strip().partition(":")
        if not line.strip():
            continue
        try:
            cp = int(code, 16)
        except ValueError:
            cp = -1
        if not sep or cp < 0 or len(hexbits) not in (32, 64):
            raise ValueError(f"{p}: line {n} is not 'CODEPOINT:HEX' with 32 or 64 hex digits: {line[:80]!r}")
        if cp >= PLANE:
            continue
        (narrow_cp if len(hexbits) == 32 else wide_cp).append(cp)
        (narrow_hex if len(hexbits) == 32 else wide_hex).append(hexbits)
    if not narrow_cp and not wide_cp:
        raise ValueError(f"{p}: no glyphs of the Basic Multilingual Plane in this Unifont file")

    cells = np.zeros((PLANE + 1, CELL, CELL), dtype=np.uint8)  # [glyph, row, column]
    advance = np.zeros(PLANE + 1, dtype=np.int64)
    for cps, hexes, width in ((narrow_cp, narrow_hex, 8), (wide_cp, wide_hex, 16)):
        if not cps:
            continue
        try:
            data = np.frombuffer(bytes.fromhex("".join(hexes)), dtype=np.uint8)
        except ValueError:
            data = None
        if data is None or data.size != len(cps) * CELL * width // 8:  # fromhex also skips spaces
            raise ValueError(_bad_digits_message(p, lines))
        bits = np.unpackbits(data).reshape(len(cps), CELL, width)  # MSB first = leftmost pixel
        cells[cps, :, :width] = bits
        advance[cps] = width

    columns = np.ascontiguousarray(cells.transpose(0, 2, 1))  # (G, column, row)
    # (G, 16): columns with ink; numpy types a one-axis reduction as possibly a scalar, here it is 2-D
    inked = cast(np.ndarray, columns.any(axis=2))
    has_ink = inked.any(axis=1)
    first_ink = np.where(has_ink, inked.argmax(axis=1), -1)
    last_ink = np.where(has_ink, CELL - 1 - inked[:, ::-1].argmax(axis=1), -1)
    for a in (columns, advance, first_ink, last_ink):
        a.flags.writeable = False
    return GlyphTable(columns, advance, first_ink.astype(np.int64), last_ink.astype(np.int64))


_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")


def _bad_digits_message(path: Path, lines: list[str]) -> str:
    """Names the first line whose glyph bits are not all hex digits (searched only once parsing has failed)."""
    for n, line in enumerate(lines, start=1):
        hexbits = line.strip().partition(":")[2]
        if not _HEX_DIGITS.issuperset(hexbits):
            return f"{path}: line {n} has a glyph with characters that are not hex digits: {line[:80]!r}"
    return f"{path}: a glyph has invalid hex digits"
