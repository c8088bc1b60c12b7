"""A CSV/TSV table of image–caption rows, some of them bad in known ways."""

from __future__ import annotations

from pathlib import Path

from helpers.images import image_bytes

GOOD = 6


# (image file or None, caption as raw bytes, expected reason or None)
ROWS = [*[(f"img/{i}.jpg", f"photo number {i}".encode(), None) for i in range(GOOD)],
        ("img/missing.jpg", b"a caption", "no_image"),
        ("img/corrupt.jpg", b"a caption", "not_image"),
        ("img/0.jpg", b"caf\xe9 \xff", "bad_text"),
        ("img/1.jpg", b"", "no_caption")]


def write_table(folder: Path, delimiter: str = ",") -> Path:
    """A table with columns ``img`` and ``text`` (written as raw bytes: one caption is not UTF-8)."""
    (folder / "img").mkdir(parents=True, exist_ok=True)
    for i in range(GOOD):
        (folder / f"img/{i}.jpg").write_bytes(image_bytes(i))
    (folder / "img/corrupt.jpg").write_bytes(b"\x00not a jpeg" * 50)
    lines = [f"id{delimiter}img{delimiter}text".encode()]
    lines += [delimiter.encode().join([str(i).encode(), path.encode(), caption]) for i, (path, caption, _) in
              enumerate(ROWS)]
    path = folder / ("pairs.tsv" if delimiter == "\t" else "pairs.csv")
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path

