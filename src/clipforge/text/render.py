"""CLIPPO's text renderer: strings → uint8 RGB images drawn with GNU Unifont.

Two modes (``RenderConfig.mode``):

``"big_vision"`` (the default; what converted big_vision checkpoints were trained with) reproduces
big_vision's ``render_unifont`` (``big_vision/pp/proj/clippo/pp_ops.py``) pixel for pixel:

- lower-casing touches ASCII letters only (TensorFlow's ``strings.lower``);
- at most ``max_chars`` (768) characters are rendered; the rest is cut before any other work (bytes are cut to
  ``4 * max_chars`` before they are decoded), so the work per text is bounded whatever its length;
- each glyph is a 16×16 cell (8-wide glyphs fill the left half), trimmed to the columns from one before
  its first inked column (not below 0) through its last inked column, widened to the right to at least
  4 columns (never past the cell); a glyph without ink, or a character the font lacks, is 4 blank columns;
- a glyph's row is floor(running width sum including it / (image width − widest glyph in the text)),
  in float32 as TensorFlow computes it; words are split across rows; rows stack from the top-left and
  whatever falls below the image is dropped;
- ink 0 on background 127, the grey image repeated to three channels.

The divisor is clamped to at least 1, which only matters for images narrower than 32 pixels with a
16-wide glyph, where big_vision divides by zero.

``"improved"`` is for training new models: NFC normalisation and Unicode-aware lower-casing, control and
format characters dropped (whitespace becomes a space), word-aware wrapping (a word longer than a row is
split), right-to-left runs reordered (a simplified Unicode bidi algorithm on ``unicodedata.bidirectional``),
a visible U+FFFD glyph for characters the font lacks, and proportional (ink-trimmed glyphs, one column of
spacing, at least 4 columns wide) or monospace (the font's 8- or 16-column cells) layout. Arabic contextual
shaping and combining-mark stacking are not done: a mark left after NFC is drawn as its own glyph.

Both modes first lay glyphs out (which glyph, which source columns, which row, which x), then paint
columns from one glyph table by array indexing; ``render`` paints with numpy (``numpy`` gives it in the model's
(N, 3, H, W) layout, without importing torch), ``__call__`` with torch on any device, pixel-identical.
"""

from __future__ import annotations

import itertools
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, fields
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from clipforge.config import ConfigError, from_dict, to_dict
from clipforge.text.unifont import BLANK, CELL, PLANE, GlyphTable, load_unifont

if TYPE_CHECKING:
    import torch

MODES = ("big_vision", "improved")
SPACING, MIN_WIDTH = 1, 4  # big_vision's defaults, kept by the improved proportional layout
REPLACEMENT = 0xFFFD


@dataclass(frozen=True)
class RenderConfig:
    """How text becomes pixels; saved in a CLIPPO model's config so it is served with its renderer.

    Attributes:
        image_size: Side of the square output image (the model's input size), at least 16.
        mode: ``big_vision`` (pixel-exact with the released CLIPPO renderer) or ``improved``.
        lower: Lower-case first (the paper's setting): ASCII letters only in ``big_vision`` mode, full
            Unicode in ``improved`` mode.
        background: Background brightness, 0–255.
        ink: Text brightness, 0–255.
        max_chars: Characters rendered at most; the rest is cut before any other work.
        monospace: ``improved`` mode only: the font's fixed 8/16-column cells instead of trimmed glyphs.
    """

    image_size: int = 224
    mode: Literal["big_vision", "improved"] = "big_vision"
    lower: bool = True
    background: int = 127
    ink: int = 0
    max_chars: int = 768
    monospace: bool = False

    def __post_init__(self) -> None:
        def is_int(value: Any) -> bool:
            return isinstance(value, int) and not isinstance(value, bool)

        # Checked here too, not only in ``from_dict``: the renderer is also built from keyword arguments.
        if self.mode not in MODES:
            raise ConfigError(f"render.mode: expected one of {MODES}, got {self.mode!r}")
        if not is_int(self.image_size) or self.image_size < CELL:
            raise ConfigError(f"render.image_size: expected an integer ≥ {CELL}, got {self.image_size!r}")
        for name in ("background", "ink"):
            value = getattr(self, name)
            if not is_int(value) or not 0 <= value <= 255:
                raise ConfigError(f"render.{name}: expected an integer in 0..255, got {value!r}")
        if not is_int(self.max_chars) or self.max_chars < 1:
            raise ConfigError(f"render.max_chars: expected a positive integer, got {self.max_chars!r}")
        for name in ("lower", "monospace"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"render.{name}: expected true/false, got {getattr(self, name)!r}")
        if self.monospace and self.mode != "improved":
            raise ConfigError("render.monospace: only the 'improved' mode has a monospace layout")

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict."""
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RenderConfig:
        """Builds a config from a mapping through the one config machinery (unknown keys and wrong types are
        ``ConfigError``s naming ``render.<field>``)."""
        return from_dict(cls, data, "render")


@dataclass(frozen=True)
class Layout:
    """Where every visible glyph of a batch goes; one entry per glyph, flat over the batch.

    Attributes:
        sample: Index of the text in the batch.
        glyph: Row of the glyph table.
        first: First source column of the glyph cell.
        width: Number of columns drawn (source columns past the cell are blank).
        row: Text row (16 pixels each) in the image.
        x: Left pixel column in the image.
    """

    sample: np.ndarray
    glyph: np.ndarray
    first: np.ndarray
    width: np.ndarray
    row: np.ndarray
    x: np.ndarray


def glyph_extents(font: GlyphTable, mode: str, monospace: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Per glyph of the table: (first source column, width in columns) for a mode."""
    first_ink, last_ink = font.first_ink, font.last_ink
    if mode == "big_vision":
        # big_vision slices letter[:, first:last] with first = max(first_ink - 1, 0) and
        # last = max(last_ink + 1, first + 4); the slice stops at the cell. No ink: first_ink = last_ink = 0.
        first = np.maximum(np.maximum(first_ink, 0) - SPACING, 0)
        last = np.minimum(np.maximum(np.maximum(last_ink, 0) + SPACING, first + MIN_WIDTH), CELL)
        return first, last - first
    if monospace:
        return np.zeros_like(first_ink), np.where(font.advance > 0, font.advance, CELL // 2)
    inked = first_ink >= 0
    first = np.where(inked, first_ink, 0)
    width = np.where(inked, np.maximum(last_ink - first_ink + 1 + SPACING, MIN_WIDTH), MIN_WIDTH)
    return first, width


# --- improved mode: character classes -------------------------------------------------------------------

_LTR, _RTL, _NUM, _NEUTRAL, _MARK = 0, 1, 2, 3, 4
_BIDI_CLASS = {"L": _LTR, "R": _RTL, "AL": _RTL, "EN": _NUM, "AN": _NUM, "NSM": _MARK}
_MIRROR_PAIRS = "()[]{}<>«»‹›⁅⁆⁽⁾₍₎⟨⟩⟪⟫"
_MIRROR = {ord(a): ord(b) for a, b in zip(_MIRROR_PAIRS[::2], _MIRROR_PAIRS[1::2])}
_MIRROR |= {b: a for a, b in _MIRROR.items()}


def bidi_class(cp: int) -> int:
    """Simplified bidi class of a code point: LTR, RTL (R and AL), number, neutral or nonspacing mark."""
    return _BIDI_CLASS.get(unicodedata.bidirectional(chr(cp)), _NEUTRAL)


@lru_cache(maxsize=1)
def _bmp_bidi_classes() -> np.ndarray:
    return np.array([bidi_class(cp) for cp in range(PLANE)], dtype=np.int8)


@lru_cache(maxsize=1)
def _cleanup_table() -> dict[int, int | None]:
    """str.translate table: whitespace → space; other control, format and separator characters → dropped."""
    table: dict[int, int | None] = {}
    for cp in (*range(PLANE), *range(0xE0000, 0xE0080)):
        ch = chr(cp)
        if unicodedata.category(ch) in ("Cc", "Cf", "Zs", "Zl", "Zp") and cp != 0x20:
            table[cp] = 0x20 if ch.isspace() else None
    return table


def bidi_levels(classes: list[int], rtl_paragraph: bool) -> list[int]:
    """Embedding levels of one line, a simplified Unicode bidi algorithm (rules W1, W2, W7, N1, N2, I1, I2).

    Args:
        classes: Simplified bidi class per character, in logical order.
        rtl_paragraph: Whether the paragraph direction is right to left.
    """
    base = _RTL if rtl_paragraph else _LTR
    resolved: list[int] = []
    strong = base
    for c in classes:
        if c == _MARK:  # W1: a nonspacing mark takes the class of the character before it
            c = resolved[-1] if resolved else _NEUTRAL
        if c in (_LTR, _RTL):
            strong = c
        resolved.append(c)
    # Numbers after an RTL letter count as RTL for the neutrals around them (N1); after LTR text they are LTR.
    context, strong = [], base
    for c in resolved:
        if c in (_LTR, _RTL):
            strong = c
        context.append(strong if c == _NUM else c)
    n = len(context)
    direction = list(context)
    i = 0
    while i < n:
        if direction[i] not in (_NEUTRAL, _MARK):
            i += 1
            continue
        j = i
        while j < n and direction[j] in (_NEUTRAL, _MARK):
            j += 1
        before = direction[i - 1] if i > 0 else base
        after = direction[j] if j < n else base
        direction[i:j] = [before if before == after else base] * (j - i)
        i = j
    levels = []
    for c, d in zip(resolved, direction):
        if c == _NUM:  # numbers keep left-to-right digit order inside RTL text
            levels.append(2 if (rtl_paragraph or d == _RTL) else 0)
        elif d == _RTL:
            levels.append(1)
        else:
            levels.append(2 if rtl_paragraph else 0)
    return levels


def visual_order(levels: list[int]) -> list[int]:
    """Logical indices in display order, left to right (rule L2: reverse runs from the highest level down)."""
    order = list(range(len(levels)))
    if not levels:
        return order
    top = max(levels)
    lowest_odd = min((lv for lv in levels if lv % 2), default=top + 1)
    for level in range(top, lowest_odd - 1, -1):
        i = 0
        while i < len(order):
            if levels[order[i]] >= level:
                j = i
                while j < len(order) and levels[order[j]] >= level:
                    j += 1
                order[i:j] = order[i:j][::-1]
                i = j
            else:
                i += 1
    return order


def wrap_words(widths: np.ndarray, is_space: np.ndarray, line_width: int, max_rows: int) -> np.ndarray:
    """Greedy word wrap: the row of every glyph, -1 for glyphs not drawn.

    Words (runs of non-space glyphs) move whole to the next row when they do not fit and do fit on an
    empty row; longer words are split glyph by glyph. Spaces that end a row or would start a wrapped row
    are dropped. Stops at ``max_rows``.
    """
    n = len(widths)
    rows = np.full(n, -1, dtype=np.int64)
    ends = np.cumsum(widths)
    bounds = [0, *(np.flatnonzero(is_space[1:] != is_space[:-1]) + 1).tolist(), n]
    row, x = 0, 0
    for a, b in itertools.pairwise(bounds):
        if is_space[a]:
            for i in range(a, b):
                w = int(widths[i])
                if (x == 0 and row > 0) or x + w > line_width:
                    continue
                rows[i], x = row, x + w
            continue
        span = int(ends[b - 1] - ends[a] + widths[a])
        if x + span <= line_width:
            rows[a:b], x = row, x + span
            continue
        if span <= line_width:
            row, x = row + 1, 0
            if row >= max_rows:
                break
            rows[a:b], x = row, span
            continue
        for i in range(a, b):  # a word longer than a row: split it wherever the row is full
            w = int(widths[i])
            if x + w > line_width and x > 0:
                row, x = row + 1, 0
                if row >= max_rows:
                    break
            rows[i], x = row, x + w
        if row >= max_rows:
            break
    rows[rows >= max_rows] = -1
    return rows


def _codepoints(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32).astype(np.int64)


class UnifontRenderer:
    """Renders strings as CLIPPO sees them.

    ``render(texts)`` gives a numpy uint8 (N, H, W, 3) array; ``renderer(texts, device)`` gives the model
    input, a uint8 tensor (N, 3, H, W) painted on ``device``; ``renderer.numpy(texts)`` the same input as a numpy
    array (torch is not imported). All paint the same pixels.

    Args:
        config: Size, colours and rules (see ``RenderConfig``).
        font_path: A Unifont ``.hex`` or ``.hex.gz`` file; default: the packaged Unifont 15.0.01.
    """

    def __init__(self, config: RenderConfig = RenderConfig(), font_path: str | Path | None = None):
        self.config = config
        self.font = load_unifont(None if font_path is None else str(font_path))
        self.first, self.width = glyph_extents(self.font, config.mode, config.monospace)
        self.rows = -(-config.image_size // CELL)  # text rows that reach into the image
        # Improved mode draws U+FFFD where the font has no glyph; big_vision draws the blank glyph.
        self._glyph_of = np.arange(PLANE + 1)
        if config.mode == "improved":
            self._glyph_of[self.font.advance == 0] = REPLACEMENT
        self._tables: dict[str, torch.Tensor] = {}
        # background + mask * step, modulo 256, is the ink colour where mask is 1 and the background elsewhere
        self._ink_step = (config.ink - config.background) % 256

    # --- layout -------------------------------------------------------------------------------------------

    def layout(self, texts: Sequence[str]) -> Layout:
        """Where every visible glyph of a batch of texts goes."""
        if self.config.mode == "big_vision":
            return self._layout_big_vision(texts)
        parts = [self._layout_improved(text) for text in texts]
        sample = np.repeat(np.arange(len(parts)), [len(p[0]) for p in parts])
        if not parts:
            return Layout(*(np.zeros(0, dtype=np.int64) for _ in range(6)))
        glyph, row, x = (np.concatenate([p[i] for p in parts]) for i in range(3))
        return Layout(sample, glyph, self.first[glyph], self.width[glyph], row, x)

    def _layout_big_vision(self, texts: Sequence[str]) -> Layout:
        cfg = self.config
        cut = [t[: cfg.max_chars] for t in texts]
        lengths = np.array([len(t) for t in cut], dtype=np.int64)
        cps = _codepoints("".join(cut))
        if cfg.lower:  # TensorFlow's strings.lower: ASCII A–Z only
            cps = np.where((cps >= 0x41) & (cps <= 0x5A), cps + 0x20, cps)
        glyph = np.minimum(cps, BLANK)
        width = self.width[glyph]
        text = np.repeat(np.arange(len(cut)), lengths)
        starts = np.cumsum(lengths) - lengths
        ends = np.cumsum(width)
        before = np.concatenate([[0], ends])[starts]  # width of all earlier texts
        end = ends - before[text]  # running width sum within the text, this glyph included
        widest = np.zeros(len(cut), dtype=np.int64)
        nonempty = lengths > 0
        if nonempty.any():
            widest[nonempty] = np.maximum.reduceat(width, starts[nonempty])
        divisor = np.maximum(cfg.image_size - widest, 1).astype(np.float32)
        row = np.floor(end.astype(np.float32) / divisor[text]).astype(np.int64)
        start = end - width
        head = np.ones(len(glyph), dtype=bool)  # first glyph of each (text, row)
        head[1:] = (row[1:] != row[:-1]) | (text[1:] != text[:-1])
        head_index = np.maximum.accumulate(np.where(head, np.arange(len(glyph)), 0))
        x = start - start[head_index]
        keep = row < self.rows
        return Layout(text[keep], glyph[keep], self.first[glyph[keep]], width[keep], row[keep], x[keep])

    def _layout_improved(self, text: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        cfg = self.config
        text = unicodedata.normalize("NFC", text[: cfg.max_chars])
        if cfg.lower:
            text = text.lower()
        text = text.translate(_cleanup_table())[: cfg.max_chars]
        empty = np.zeros(0, dtype=np.int64)
        if not text:
            return empty, empty, empty
        cps = _codepoints(text)
        glyph = self._glyph_of[np.minimum(cps, BLANK)]
        glyph[cps >= PLANE] = REPLACEMENT
        width = self.width[glyph]
        size = cfg.image_size
        rows = wrap_words(width, cps == 0x20, size, self.rows)
        drawn = np.flatnonzero(rows >= 0)
        glyph, width, rows, cps = glyph[drawn], width[drawn], rows[drawn], cps[drawn]
        classes = _bmp_bidi_classes()[np.minimum(cps, PLANE - 1)]
        astral = np.flatnonzero(cps >= PLANE)
        classes[astral] = [bidi_class(int(cp)) for cp in cps[astral]]
        if not (classes == _RTL).any():  # left to right only: glyphs sit in logical order
            ends = np.cumsum(width)
            head = np.ones(len(rows), dtype=bool)
            head[1:] = rows[1:] != rows[:-1]
            row_start = (ends - width)[np.maximum.accumulate(np.where(head, np.arange(len(rows)), 0))]
            return glyph, rows, ends - width - row_start
        strong = classes[(classes == _LTR) | (classes == _RTL)]
        rtl_paragraph = bool(strong[0] == _RTL)
        x = np.zeros(len(rows), dtype=np.int64)
        for r in np.unique(rows).tolist():
            idx = np.flatnonzero(rows == r)
            levels = bidi_levels(classes[idx].tolist(), rtl_paragraph)
            for i, level in zip(idx.tolist(), levels):
                if level % 2 and int(cps[i]) in _MIRROR:  # "(" in right-to-left text is drawn as ")"
                    glyph[i] = self._glyph_of[_MIRROR[int(cps[i])]]
            order = idx[visual_order(levels)]
            w = self.width[glyph[order]]
            x[order] = np.cumsum(w) - w + (size - int(w.sum()) if rtl_paragraph else 0)
        return glyph, rows, np.maximum(x, 0)

    # --- painting -----------------------------------------------------------------------------------------

    def render(self, texts: str | Sequence[str]) -> np.ndarray:
        """Texts → uint8 (N, H, W, 3) images, painted with numpy."""
        texts = _as_list(texts, self.config.max_chars)
        lay = self.layout(texts)
        size, n = self.config.image_size, len(texts)
        glyph_of_column = np.repeat(np.arange(len(lay.width)), lay.width)
        k = np.arange(glyph_of_column.size) - np.repeat(np.cumsum(lay.width) - lay.width, lay.width)
        src = lay.first[glyph_of_column] + k
        dst = lay.x[glyph_of_column] + k
        keep = (src < CELL) & (dst < size)  # columns past the glyph cell are blank; past the image, dropped
        glyph_of_column, src, dst = glyph_of_column[keep], src[keep], dst[keep]
        canvas = np.zeros((n, self.rows, size, CELL), dtype=np.uint8)  # (N, text row, x, y in row)
        canvas[lay.sample[glyph_of_column], lay.row[glyph_of_column], dst] = self.font.columns[
            lay.glyph[glyph_of_column], src]
        ink = canvas.transpose(0, 1, 3, 2).reshape(n, self.rows * CELL, size)[:, :size]  # (N, H, W), 1 = ink
        grey = ink * np.uint8(self._ink_step) + np.uint8(self.config.background)  # uint8 arithmetic wraps
        out = np.empty((n, size, size, 3), dtype=np.uint8)
        for channel in range(3):
            out[..., channel] = grey
        return out

    def numpy(self, texts: str | Sequence[str]) -> np.ndarray:
        """Texts → uint8 array (N, 3, H, W): the pixels ``__call__`` gives, painted with numpy (no torch)."""
        return np.ascontiguousarray(self.render(texts).transpose(0, 3, 1, 2))

    def __call__(self, texts: str | Sequence[str], device: torch.device | str | None = None) -> torch.Tensor:
        """Texts → uint8 tensor (N, 3, H, W), the model's text input, painted with torch on ``device``."""
        import torch

        texts = _as_list(texts, self.config.max_chars)
        device = torch.device(device if device is not None else "cpu")
        lay = self.layout(texts)
        table = self._table(device)
        size, n = self.config.image_size, len(texts)

        def tensor(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(a).to(device, non_blocking=True)

        sample, glyph, first, width, row, x = (tensor(getattr(lay, f.name)) for f in fields(Layout))
        glyph_of_column = torch.repeat_interleave(torch.arange(len(width), device=device), width)
        k = torch.arange(glyph_of_column.numel(), device=device) - (torch.cumsum(width, 0) - width)[glyph_of_column]
        src = first[glyph_of_column] + k
        dst = x[glyph_of_column] + k
        keep = (src < CELL) & (dst < size)
        glyph_of_column, src, dst = glyph_of_column[keep], src[keep], dst[keep]
        canvas = torch.zeros((n, self.rows, size, CELL), dtype=torch.uint8, device=device)
        canvas[sample[glyph_of_column], row[glyph_of_column], dst] = table[glyph[glyph_of_column], src]
        ink = canvas.permute(0, 1, 3, 2).reshape(n, self.rows * CELL, size)[:, None, :size]  # (N, 1, H, W)
        grey = ink * self._ink_step + self.config.background  # uint8 arithmetic wraps
        return grey.expand(-1, 3, -1, -1).contiguous()

    def save_pretrained(self, directory: str | Path) -> None:
        """Writes nothing: the renderer is rebuilt from the model's config (``render``), which every model
        directory holds. Present so that the renderer fills the ``TextProcessor`` role."""
        return None

    def _table(self, device: torch.device) -> torch.Tensor:
        """The glyph table as a tensor on ``device`` (copied once per device)."""
        import torch

        key = str(device)
        if key not in self._tables:
            self._tables[key] = torch.from_numpy(self.font.columns.copy()).to(device)
        return self._tables[key]


def _as_list(texts: str | bytes | Sequence[str], max_chars: int) -> list[str]:
    """Texts as strings of at most ``max_chars`` characters, cut before any other work: bytes are cut to
    ``4 * max_chars`` (a UTF-8 character has at most 4) before they are decoded, so a huge byte string costs
    nothing, and the first ``max_chars`` characters are the same as decoding it whole would give."""
    items: Sequence[str | bytes] = [texts] if isinstance(texts, str | bytes) else texts
    return [(t[: 4 * max_chars].decode("utf-8", "replace") if isinstance(t, bytes) else str(t))[:max_chars]
            for t in items]
