"""The table reader: CSV, TSV or parquet, one row per image, with configurable columns.

Each row names an image (a path, relative to ``image_root`` or the table's folder; in parquet also the
image's bytes, or a ``{"bytes", "path"}`` struct as Hugging Face datasets store images) and a text cell: a
caption (training, retrieval) or a class label (classification; an index or a class name). Rows are read
once; images are read and decoded on access, and a bad row raises ``BadSample`` with the reason
(``no_image`` for a missing file, ``not_image`` for bytes that are no image, ...), which the caller counts
and skips. A CSV that is not valid UTF-8 is read with ``surrogateescape``, so one bad caption costs one
row (``bad_text`` when the caption is decoded), not the file.

The column defaults, shared by training, evaluation and ``clipforge data shards``: ``filepath`` (image),
``caption``, ``label``.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from clipforge.data.decode import BadSample, DecodeLimits, decode_image, read_bytes

FORMATS = ("csv", "tsv", "parquet")
EXTENSIONS = {".csv": "csv", ".txt": "csv", ".tsv": "tsv", ".tab": "tsv", ".parquet": "parquet", ".pq": "parquet"}
IMAGE_KEY, CAPTION_KEY, LABEL_KEY = "filepath", "caption", "label"
# The csv module refuses a cell over 128 KiB by failing the whole file; a huge cell is one bad row (its caption
# ``too_large`` under ``DecodeLimits.max_text_bytes``), so the reader allows cells up to this many characters.
CSV_FIELD_LIMIT = 1 << 26


def table_format(path: str | Path, kind: str | None = None) -> str:
    """``csv``, ``tsv`` or ``parquet``: ``kind`` when given, else from the file's extension (others: csv)."""
    fmt = kind or EXTENSIONS.get(Path(path).suffix.lower(), "csv")
    if fmt not in FORMATS:
        raise ValueError(f"table format must be one of {FORMATS}, got {fmt!r}")
    return fmt


def table_columns(path: str | Path, fmt: str) -> list[str]:
    """The column names of a table (reads only the header or the parquet schema).

    Raises:
        ImportError: a parquet file without ``pyarrow`` installed.
    """
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return list(pq.read_schema(path).names)
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:
        return next(csv.reader(f, delimiter="\t" if fmt == "tsv" else ","), [])


def read_table(path: str | Path, fmt: str, columns: tuple[str, str]) -> list[tuple[Any, Any]]:
    """The ``columns`` of every row as tuples.

    Raises:
        ValueError: a column is missing (the message lists the table's columns).
    """
    present = table_columns(path, fmt)
    missing = [c for c in columns if c not in present]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; the table has {present}")
    if fmt == "parquet":
        import pyarrow.parquet as pq

        data = pq.read_table(path, columns=list(columns)).to_pydict()
        return list(zip(*(data[c] for c in columns)))
    csv.field_size_limit(max(csv.field_size_limit(), CSV_FIELD_LIMIT))
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:
        return [(row.get(columns[0]), row.get(columns[1]))
                for row in csv.DictReader(f, delimiter="\t" if fmt == "tsv" else ",")]


class TablePairs(torch.utils.data.Dataset):
    """Item ``i`` is row ``i`` as ``(RGB image, text cell)``; a bad row raises ``BadSample``.

    Args:
        path: The table.
        image_key: Column with the image path (or bytes, in parquet).
        caption_key: Column with the caption, or (classification) the class label.
        image_root: Folder image paths are relative to; the table's folder when empty.
        fmt: ``csv``, ``tsv`` or ``parquet`` (``None``: from the extension).
        limits: Image size limits and the alpha rule.
        min_size: Decode at least this shorter side (reduce-on-decode); ``None``: full size.
    """

    def __init__(self, path: str | Path, image_key: str = IMAGE_KEY, caption_key: str = CAPTION_KEY,
                 image_root: str | Path = "", fmt: str | None = None, limits: DecodeLimits | None = None,
                 min_size: int | None = None):
        self.path, self.fmt, self.name = Path(path), table_format(path, fmt), os.fspath(path)
        self.root = Path(image_root) if image_root else self.path.parent
        self.limits, self.min_size = limits or DecodeLimits(), min_size
        self.rows = read_table(self.path, self.fmt, (image_key, caption_key))

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[Image.Image, str | bytes]:
        data, caption = self.raw(i)
        return decode_image(data, self.limits, self.min_size), caption

    def raw(self, i: int) -> tuple[bytes, str | bytes]:
        """Row ``i`` undecoded: ``(encoded image, caption text)``.

        Raises:
            BadSample: ``no_caption`` (empty cell) or ``no_image`` (no such file, empty cell).
        """
        caption = self.rows[i][1]
        if caption is None:
            raise BadSample("no_caption", f"row {i}")
        return self.image_bytes(i), caption if isinstance(caption, str | bytes) else str(caption)

    def image(self, i: int) -> Image.Image:
        """Row ``i``'s decoded image alone (the text cell unchecked).

        Raises:
            BadSample: With the reason (``clipforge.data.decode``).
        """
        return decode_image(self.image_bytes(i), self.limits, self.min_size)

    def source(self, i: int) -> str:
        """Row ``i`` as ``table:row`` (rows counted from 0, the header aside)."""
        return f"{self.name}:{i}"

    def image_bytes(self, i: int) -> bytes:
        """The encoded image row ``i`` refers to: a path (read from disk), bytes, or a ``{bytes, path}`` struct.

        Raises:
            BadSample: ``no_image`` (no such file, an unreadable one, an empty cell), ``too_large`` (a file over
                ``max_image_bytes``, refused before it is read).
        """
        ref = self.rows[i][0]
        if isinstance(ref, dict):
            ref = ref.get("bytes") or ref.get("path")
        if isinstance(ref, bytes | bytearray):
            return bytes(ref)
        if not isinstance(ref, str) or not ref:
            raise BadSample("no_image", f"row {i}: no image")
        try:
            return read_bytes(self.root / ref, self.limits.max_image_bytes)
        except BadSample as e:  # missing, a folder, unreadable, an unencodable name; over max_image_bytes
            raise BadSample(e.reason, f"row {i}: {e.args[0].split(': ', 1)[-1]}") from None
