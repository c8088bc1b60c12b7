"""CLIPPO's text renderer: strings → uint8 RGB images with GNU Unifont, pixel-exact with big_vision.

``mode="big_vision"`` reproduces big_vision's ``render_unifont`` (``pp/proj/clippo/pp_ops.py``), which
released CLIPPO checkpoints were trained with:

- lower-casing touches ASCII letters only (TensorFlow's ``strings.lower``);
- at most ``max_chars`` (768) characters are rendered;
- each glyph is a 16×16 cell (8-wide glyphs fill the left half), trimmed to the columns from one before
  its first inked column (not below 0) through its last inked column, widened to at least 4 columns
  (never past the cell); a glyph without ink, or a character the font lacks, is 4 blank columns;
- a glyph's row is floor(running width sum including it / (image width − widest glyph in the text)),
  computed in float32 as TensorFlow does; rows stack from the top-left, overflow is dropped;
- ink 0 on background 127, the grey image repeated to three channels.

The work is array indexing over one glyph table: no per-pixel Python.
"""

from __future__ import annotations

import gzip
import importlib.resources
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

FONT_FILE = "unifont-15.0.01.hex.gz"
CELL = 16
MISSING = 0x10000  # the table's extra all-blank row, for code points outside the font's plane
SPACING, MIN_WIDTH = 1, 4


@dataclass(frozen=True)
class RenderConfig:
    """How text becomes pixels.

    Attributes:
        image_size: Side of the square output image (the model's input size).
        mode: ``big_vision`` (pixel-exact with the released CLIPPO renderer; the default).
        lower: Lower-case ASCII letters first (the paper's setting).
        background: Background brightness, 0–255.
        ink: Text brightness, 0–255.
        max_chars: Characters rendered at most; the rest is dropped before any work.
    """

    image_size: int = 224
    mode: Literal["big_vision"] = "big_vision"
    lower: bool = True
    background: int = 127
    ink: int = 0
    max_chars: int = 768

    def __post_init__(self) -> None:
        if self.mode != "big_vision":
            raise ValueError(f"render.mode: expected 'big_vision', got {self.mode!r}")
        if not isinstance(self.image_size, int) or self.image_size < 2 * CELL:
            raise ValueError(f"render.image_size: expected an integer ≥ {2 * CELL}, got {self.image_size!r}")
        for name in ("background", "ink"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 0 <= value <= 255:
                raise ValueError(f"render.{name}: expected an integer in 0..255, got {value!r}")
        if not isinstance(self.max_chars, int) or self.max_chars < 1:
            raise ValueError(f"render.max_chars: expected a positive integer, got {self.max_chars!r}")
        if not isinstance(self.lower, bool):
            raise ValueError(f"render.lower: expected true/false, got {self.lower!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RenderConfig:
        """Builds a config from a mapping; an unknown key is an error naming it."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"render: unknown field {unknown[0]!r}; known fields: {sorted(known)}")
        return cls(**data)


def default_font_path() -> Path:
    """The packaged GNU Unifont file."""
    return Path(str(importlib.resources.files("clipforge.text") / "assets" / FONT_FILE))


@lru_cache(maxsize=4)
def load_glyphs(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Parses a Unifont ``.hex(.gz)`` file.

    Returns:
        glyphs: bool (0x10001, 16, 16), row-major; the last row is blank.
        first: int64 (0x10001,), first column of each trimmed glyph.
        width: int64 (0x10001,), width of each trimmed glyph.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: Unifont file not found (CLIPPO's renderer needs it)")
    opener = gzip.open if p.suffix == ".gz" else open
    bits = np.zeros((MISSING + 1, 32), dtype=np.uint8)
    try:
        with opener(p, "rt", encoding="ascii") as f:
            for n, line in enumerate(f, start=1):
                code, _, hexbits = line.strip().partition(":")
                cp = int(code, 16)
                if cp >= MISSING:
                    continue
                data = bytes.fromhex(hexbits)
                if len(data) == 32:
                    bits[cp] = np.frombuffer(data, np.uint8)
                elif len(data) == 16:  # 8-wide glyph: one byte per row, in the left half of the cell
                    bits[cp, 0::2] = np.frombuffer(data, np.uint8)
                else:
                    raise ValueError(f"line {n}: {len(data)} bytes of glyph data, expected 16 or 32")
    except (ValueError, OSError, EOFError, UnicodeDecodeError) as e:
        raise ValueError(f"{p}: not a readable Unifont .hex file ({e})") from None
    glyphs = np.unpackbits(bits, axis=1).reshape(-1, CELL, CELL).astype(bool)
    ink = glyphs.any(axis=1)  # (N, 16) inked columns
    has_ink = ink.any(axis=1)
    first_ink = np.where(has_ink, ink.argmax(axis=1), 0)
    last_ink = np.where(has_ink, CELL - 1 - ink[:, ::-1].argmax(axis=1), 0)
    first = np.maximum(first_ink - SPACING, 0)
    last = np.minimum(np.maximum(last_ink + SPACING, first + MIN_WIDTH), CELL)  # a slice stops at the cell edge
    return glyphs, first.astype(np.int64), (last - first).astype(np.int64)


def ascii_lower(text: str) -> str:
    """Lower-cases ASCII A–Z only, like TensorFlow's ``strings.lower``."""
    return text.translate(_ASCII_LOWER)


_ASCII_LOWER = {c: c + 32 for c in range(ord("A"), ord("Z") + 1)}


class UnifontRenderer:
    """Renders strings as CLIPPO sees them: ``renderer(texts) -> uint8 tensor (N, 3, H, W)``.

    Args:
        config: Size, colours and rules (see ``RenderConfig``).
        font_path: A Unifont ``.hex`` or ``.hex.gz`` file; default: the packaged Unifont 15.0.01.
    """

    def __init__(self, config: RenderConfig | None = None, font_path: str | Path | None = None):
        self.config = config or RenderConfig()
        self.glyphs, self.first, self.width = load_glyphs(str(font_path or default_font_path()))

    def render_grey(self, text: str) -> np.ndarray:
        """One text → uint8 (H, W) grey image."""
        cfg = self.config
        size = cfg.image_size
        text = text[: cfg.max_chars]
        if cfg.lower:
            text = ascii_lower(text)
        out = np.full((size, size), cfg.background, dtype=np.uint8)
        if not text:
            return out
        cps = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32).astype(np.int64)
        cps[cps >= MISSING] = MISSING
        widths = self.width[cps]
        ends = np.cumsum(widths)
        starts = ends - widths
        rows = np.floor(ends.astype(np.float32) / np.float32(size - widths.max())).astype(np.int64)
        row_start = np.full(rows.max() + 1, -1, dtype=np.int64)
        row_start[rows[::-1]] = starts[::-1]  # the first letter of each row wins
        x = starts - row_start[rows]
        visible = rows < -(-size // CELL)
        if not visible.any():
            return out
        letters = np.repeat(np.nonzero(visible)[0], widths[visible])  # one entry per rendered column
        offset = np.arange(letters.size) - np.repeat(np.cumsum(widths[visible]) - widths[visible], widths[visible])
        src_col = self.first[cps[letters]] + offset
        dst_x = x[letters] + offset
        columns = self.glyphs[cps[letters], :, src_col]  # (columns, 16)
        canvas = np.zeros((int(rows[visible].max() + 1) * CELL, size), dtype=bool)
        canvas[rows[letters][:, None] * CELL + np.arange(CELL), dst_x[:, None]] = columns
        canvas = canvas[:size]
        out[: canvas.shape[0]][canvas] = cfg.ink
        return out

    def render(self, texts: str | Sequence[str]) -> np.ndarray:
        """Texts → uint8 (N, H, W, 3) images."""
        if isinstance(texts, str):
            texts = [texts]
        grey = np.stack([self.render_grey(t) for t in texts]) if texts else np.zeros(
            (0, self.config.image_size, self.config.image_size), np.uint8)
        return np.repeat(grey[..., None], 3, axis=-1)

    def __call__(self, texts: str | Sequence[str], device: torch.device | str | None = None) -> torch.Tensor:
        """Texts → uint8 tensor (N, 3, H, W), the model's text input."""
        if isinstance(texts, str):
            texts = [texts]
        grey = torch.from_numpy(np.stack([self.render_grey(t) for t in texts]))
        return grey[:, None].expand(-1, 3, -1, -1).contiguous().to(device)
