"""Evaluation datasets, streamed: an image folder, a CSV/TSV file, or CLIP_benchmark's webdataset layout.

Each dataset is an iterable of :class:`Sample` (a decoded RGB image with a label or captions) that reads
one image at a time, so a dataset never has to fit in memory. Images that fail to decode are skipped and
recorded in ``dataset.skipped`` (``(source, reason)``), which every evaluation reports.

Layouts:

- **Image folder**: ``root/<class>/<image>``; classes are the sub-folder names, sorted.
- **CSV/TSV**: a header row; an image column (paths relative to the file) and a label column (a class
  index, or a class name) or a caption column (several rows of one image give it several captions).
- **CLIP_benchmark webdataset** (``clip_benchmark/datasets/builder.py::build_wds_dataset``)::

      root/classnames.txt                       one class name a line (classification)
      root/zeroshot_classification_templates.txt
      root/dataset_type.txt                     optional: "retrieval" (else classification)
      root/test/nshards.txt                     optional: shards are then {0..n-1}.tar
      root/test/*.tar                           samples: webp|png|jpg|jpeg + cls (int) or txt (captions, one a line)
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from clipforge.data.webdataset import ShardStats, expand_shards, iter_tar_samples

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
WDS_IMAGE_FIELDS = ("webp", "png", "jpg", "jpeg", "0.webp")

# What PIL raises on truncated, corrupt or hostile files.
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError, EOFError)


@dataclass
class Sample:
    """One decoded image with its label (classification) or captions (retrieval)."""

    image: Image.Image
    label: int | None = None
    captions: list[str] | None = None
    source: str = ""


@dataclass
class EvalDataset:
    """Common state of the readers below: class names, templates, and the record of skipped images."""

    classes: list[str] | None = None
    templates: list[str] | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)
    task: str = "classification"

    def __iter__(self) -> Iterator[Sample]:
        raise NotImplementedError

    def decode(self, data: bytes | str | os.PathLike[str], source: str) -> Image.Image | None:
        """Decodes an image file or bytes to RGB; on failure records ``source`` in ``skipped`` and returns None."""
        try:
            with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as im:
                return im.convert("RGB")
        except _DECODE_ERRORS as e:
            self.skipped.append((source, f"{type(e).__name__}: {e}"))
            return None


class ImageFolder(EvalDataset):
    """``root/<class>/<image>`` → labelled samples (classes: the sorted sub-folder names).

    Raises:
        FileNotFoundError: When ``root`` is missing.
        ValueError: When it has no class sub-folder or no image.
    """

    def __init__(self, root: str | Path):
        super().__init__()
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder not found: {self.root}")
        self.classes = sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not self.classes:
            raise ValueError(f"{self.root}: no class sub-folders (expected {self.root}/<class>/<image>)")
        if next(self._files(), None) is None:
            raise ValueError(f"{self.root}: no images found (suffixes: {', '.join(IMAGE_SUFFIXES)})")

    def _files(self) -> Iterator[tuple[Path, int]]:
        for label, name in enumerate(self.classes):
            for dirpath, dirnames, filenames in os.walk(self.root / name):
                dirnames.sort()
                for f in sorted(filenames):
                    if f.lower().endswith(IMAGE_SUFFIXES) and not f.startswith("."):
                        yield Path(dirpath) / f, label

    def __iter__(self) -> Iterator[Sample]:
        self.skipped.clear()
        for path, label in self._files():
            image = self.decode(path, str(path))
            if image is not None:
                yield Sample(image, label=label, source=str(path))


class CsvDataset(EvalDataset):
    """A CSV/TSV file of image paths with labels or captions, read row by row.

    Args:
        path: The file; ``.tsv`` (or ``.tab``) files are tab-separated, others comma-separated.
        image_col: The column holding image paths (relative paths are taken from the file's folder,
            or from ``image_root``).
        label_col: A column of class indices or class names (classification); exclusive with ``caption_col``.
        caption_col: A column of captions (retrieval); several rows of one image give it several captions.
        classes: Class names; a label that is a name is looked up here. When ``None`` and the labels are
            names, the classes are the sorted distinct names (one pass over the text, no image read).
        image_root: Folder that relative paths are resolved against.

    Raises:
        FileNotFoundError: When the file is missing.
        ValueError: When a named column is not in the header (the message lists the columns).
    """

    def __init__(self, path: str | Path, image_col: str = "path", label_col: str | None = None,
                 caption_col: str | None = None, classes: list[str] | None = None,
                 image_root: str | Path | None = None):
        super().__init__(classes=classes, task="retrieval" if caption_col else "classification")
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"CSV file not found: {self.path}")
        if (label_col is None) == (caption_col is None):
            raise ValueError("give exactly one of a label column or a caption column")
        self.delimiter = "\t" if self.path.suffix.lower() in (".tsv", ".tab") else ","
        self.image_col, self.label_col, self.caption_col = image_col, label_col, caption_col
        self.image_root = Path(image_root) if image_root is not None else self.path.parent
        with self._open() as f:
            header = next(csv.reader(f, delimiter=self.delimiter), None)
        if not header:
            raise ValueError(f"{self.path}: empty file (expected a header row)")
        for col in (image_col, label_col or caption_col):
            if col not in header:
                raise ValueError(f"{self.path}: unknown column {col!r}; the columns are {header}")
        if label_col is not None and self.classes is None:
            self.classes = self._infer_classes()

    def _open(self) -> io.TextIOWrapper:
        return open(self.path, newline="", encoding="utf-8")

    def _rows(self) -> Iterator[dict[str, str]]:
        with self._open() as f:
            yield from csv.DictReader(f, delimiter=self.delimiter)

    def _infer_classes(self) -> list[str]:
        values = {row[self.label_col].strip() for row in self._rows()}
        if not values:
            raise ValueError(f"{self.path}: no rows")
        if all(v.lstrip("-").isdigit() for v in values):
            return [str(i) for i in range(max(int(v) for v in values) + 1)]
        return sorted(values)

    def _label(self, value: str, line: int) -> int:
        value = value.strip()
        assert self.classes is not None
        if value.lstrip("-").isdigit():
            label = int(value)
            if not 0 <= label < len(self.classes):
                raise ValueError(f"{self.path}:{line}: label {label} outside 0..{len(self.classes) - 1}")
            return label
        try:
            return self.classes.index(value)
        except ValueError:
            raise ValueError(f"{self.path}:{line}: unknown class name {value!r}") from None

    def __iter__(self) -> Iterator[Sample]:
        self.skipped.clear()
        if self.label_col is not None:
            for line, row in enumerate(self._rows(), start=2):
                label = self._label(row[self.label_col], line)
                image = self._load(row[self.image_col])
                if image is not None:
                    yield Sample(image, label=label, source=row[self.image_col])
            return
        # Captions are grouped by image over the whole file (text only; images are still read one by one).
        groups: dict[str, list[str]] = {}
        for row in self._rows():
            groups.setdefault(row[self.image_col], []).append(row[self.caption_col])
        for path, captions in groups.items():
            yield from self._caption_sample(path, captions)

    def _caption_sample(self, path: str, captions: list[str]) -> Iterator[Sample]:
        image = self._load(path)
        if image is not None:
            yield Sample(image, captions=captions, source=path)

    def _load(self, path: str) -> Image.Image | None:
        full = Path(path) if os.path.isabs(path) else self.image_root / path
        if not full.is_file():
            self.skipped.append((path, "file not found"))
            return None
        return self.decode(full, path)


class WdsBenchmark(EvalDataset):
    """A dataset in CLIP_benchmark's webdataset layout (see the module docstring), streamed shard by shard.

    Args:
        root: The dataset folder.
        split: The sub-folder holding the shards (``test`` or ``train``).

    Raises:
        FileNotFoundError: When ``root`` or its shards are missing.
    """

    def __init__(self, root: str | Path, split: str = "test"):
        super().__init__()
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"dataset folder not found: {self.root}")
        split_dir = self.root / split
        if not split_dir.is_dir():
            raise FileNotFoundError(f"{self.root}: no '{split}' folder of tar shards")
        nshards = split_dir / "nshards.txt"
        if nshards.is_file():
            n = int(nshards.read_text().strip())
            self.shards = [str(split_dir / f"{i}.tar") for i in range(n)]
            missing = [s for s in self.shards if not os.path.isfile(s)]
            if missing:
                raise FileNotFoundError(f"{nshards} says {n} shards but {missing[0]} is missing")
        else:
            self.shards = expand_shards(split_dir)
        kind = self.root / "dataset_type.txt"
        self.task = kind.read_text().strip().lower() if kind.is_file() else "classification"
        if (self.root / "classnames.txt").is_file():
            self.classes = _lines(self.root / "classnames.txt")
        templates = self.root / "zeroshot_classification_templates.txt"
        if templates.is_file():
            self.templates = _lines(templates)
        self.stats = ShardStats()

    def __iter__(self) -> Iterator[Sample]:
        self.skipped.clear()
        self.stats = ShardStats()
        for sample in iter_tar_samples(self.shards, self.stats):
            source = f"{sample['__url__']}:{sample['__key__']}"
            field_ = next((f for f in WDS_IMAGE_FIELDS if f in sample), None)
            if field_ is None:
                self.skipped.append((source, "no image field"))
                continue
            try:
                label, captions = self._target(sample)
            except (KeyError, ValueError, UnicodeDecodeError) as e:
                self.skipped.append((source, f"bad target: {e}"))
                continue
            image = self.decode(sample[field_], source)
            if image is not None:
                yield Sample(image, label=label, captions=captions, source=source)
        self.skipped.extend((url, reason) for url, reason in self.stats.bad_shards)

    def _target(self, sample: dict[str, object]) -> tuple[int | None, list[str] | None]:
        if "cls" in sample:
            return int(bytes(sample["cls"]).decode().strip()), None
        if "txt" in sample:
            captions = [c.strip() for c in bytes(sample["txt"]).decode("utf-8").splitlines() if c.strip()]
            if not captions:
                raise ValueError("empty caption")
            return None, captions
        raise KeyError("no 'cls' or 'txt' field")


def _lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def open_dataset(path: str | Path, *, image_col: str = "path", label_col: str | None = None,
                 caption_col: str | None = None, classes: list[str] | None = None, split: str = "test",
                 task: str = "classification") -> EvalDataset:
    """Opens ``path`` as whichever layout it is.

    A folder with a ``split`` sub-folder of tars (or ``classnames.txt``) is a CLIP_benchmark webdataset;
    another folder is an image folder; a ``.csv`` / ``.tsv`` file is a CSV dataset (``label_col`` defaults
    to ``label`` for classification, ``caption_col`` to ``caption`` for retrieval).

    Raises:
        FileNotFoundError: When ``path`` does not exist.
        ValueError: When its layout is not recognised.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"dataset not found: {path}")
    if path.is_dir():
        if (path / "classnames.txt").is_file() or ((path / split).is_dir() and any((path / split).glob("*.tar"))):
            return WdsBenchmark(path, split)
        return ImageFolder(path)
    if path.suffix.lower() in (".csv", ".tsv", ".tab", ".txt"):
        if task == "retrieval":
            return CsvDataset(path, image_col, caption_col=caption_col or "caption", classes=classes)
        return CsvDataset(path, image_col, label_col=label_col or "label", classes=classes)
    raise ValueError(f"{path}: not a folder, .csv or .tsv file")


def iter_batches(samples: Iterable[Sample], transform: Callable[[Image.Image], torch.Tensor],
                 batch_size: int) -> Iterator[tuple[torch.Tensor, list[Sample]]]:
    """Groups samples into (transformed images (B, 3, H, W), the samples without their images)."""
    images: list[torch.Tensor] = []
    metas: list[Sample] = []
    for s in samples:
        images.append(transform(s.image))
        metas.append(Sample(image=None, label=s.label, captions=s.captions, source=s.source))  # type: ignore[arg-type]
        if len(images) == batch_size:
            yield torch.stack(images), metas
            images, metas = [], []
    if images:
        yield torch.stack(images), metas
