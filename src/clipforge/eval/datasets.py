"""Evaluation datasets, streamed: a folder of class folders, a table (CSV/TSV/parquet), or CLIP_benchmark's
webdataset layout.

Each dataset is an iterable of :class:`Sample` (a decoded RGB image with a label or captions) that reads one
image at a time, so a dataset never has to fit in memory. The images come from ``clipforge.data``'s readers
(``build_source``): the decoder, size limits and alpha rule of training (``DecodeLimits``; ``alpha="drop"``
reproduces OpenAI's ``convert("RGB")``). A bad sample is skipped and recorded in ``dataset.skipped`` as
``(source, "reason: detail")`` with the reasons of ``clipforge.data.decode`` (``not_image``, ``bad_size``,
``no_caption``, ...; a damaged shard is ``shard_errors``), which every evaluation reports.

Layouts:

- **Image folder**: ``root/<class>/<image>``; classes are the sub-folder names, sorted.
- **Table** (CSV/TSV with a header row, or parquet): an image column (default ``filepath``; paths relative to
  the file, or to ``image_root``) and a label column (default ``label``; a class index or a class name) or a
  caption column (default ``caption``; several rows of one image give it several captions). The defaults are
  training's (``clipforge.data.tables``).
- **CLIP_benchmark webdataset** (``clip_benchmark/datasets/builder.py::build_wds_dataset``)::

      root/classnames.txt                       one class name a line (classification)
      root/zeroshot_classification_templates.txt
      root/dataset_type.txt                     optional: "retrieval" (else classification)
      root/test/nshards.txt                     optional: shards are then {0..n-1}.tar
      root/test/*.tar                           samples: webp|png|jpg|jpeg + cls (int) or txt (captions, one a line)
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from clipforge.data import build_source, source_config, source_kind
from clipforge.data.config import FolderDataConfig, ShardsDataConfig
from clipforge.data.decode import BadSample, DecodeLimits, as_bad_sample, broken_or, decode_text, sample_image_bytes
from clipforge.data.folders import CLASS_EXTENSIONS
from clipforge.data.tables import CAPTION_KEY, FORMATS, IMAGE_KEY, LABEL_KEY, table_format
from clipforge.data.webdataset import ShardStats, expand_shards

IMAGE_SUFFIXES = CLASS_EXTENSIONS
WDS_IMAGE_FIELDS = ("webp", "png", "jpg", "jpeg", "0.webp")
# How ``clipforge eval`` names the data fields in its messages (the train config says ``data.image_key``).
FLAG_NAMES = {"": "--data", "path": "--data", "image_key": "--image-key", "caption_key": "--caption-key",
              "label_key": "--label-key", "image_root": "--image-root"}


MAX_INFERRED_CLASSES = 100_000  # numeric labels imply classes 0..max; more than this needs --classnames


@dataclass
class Sample:
    """One decoded image with its label (classification) or captions (retrieval)."""

    image: Image.Image
    label: int | None = None
    captions: list[str] | None = None
    source: str = ""


@dataclass
class EvalDataset:
    """Common state of the readers below: class names, templates, and the record of skipped samples."""

    classes: list[str] | None = None
    templates: list[str] | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)
    task: str = "classification"

    def __iter__(self) -> Iterator[Sample]:
        raise NotImplementedError

    def skip(self, source: str, error: Exception) -> None:
        """Records a skipped sample as ``(source, "reason: detail")`` (any exception but a ``BadSample`` is an
        ``error``: the sample boundary, where one bad sample never ends an evaluation)."""
        self.skipped.append((source, str(as_bad_sample(error))))

    def skip_counts(self) -> Counter[str]:
        """Skipped samples of the last pass by reason (the names of ``clipforge.data.decode``)."""
        return Counter(reason.split(":", 1)[0] for _, reason in self.skipped)


class ImageFolder(EvalDataset):
    """``root/<class>/<image>`` → labelled samples (classes: the sorted sub-folder names).

    Args:
        root: The folder of class folders.
        limits: Image size limits and the alpha rule (``DecodeLimits()``: training's).

    Raises:
        FileNotFoundError: When ``root`` is missing.
        ValueError: When it has no class sub-folder or no image.
    """

    def __init__(self, root: str | Path, limits: DecodeLimits | None = None):
        super().__init__()
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder not found: {self.root}")
        config = FolderDataConfig(path=str(self.root), layout="classes", decode=limits or DecodeLimits())
        self.source = build_source(config)
        self.classes = list(self.source.classes)

    def __iter__(self) -> Iterator[Sample]:
        self.skipped.clear()
        for i in range(len(self.source)):
            try:
                image, label = self.source[i]
            except Exception as e:  # the sample boundary (``skip``)
                self.skip(self.source.source(i), e)
                continue
            yield Sample(image, label=label, source=self.source.source(i))


class CsvDataset(EvalDataset):
    """A table (CSV, TSV or parquet) of images with labels or captions, read row by row.

    Args:
        path: The file; ``.tsv`` (or ``.tab``) files are tab-separated, ``.parquet`` files parquet, others CSV.
        image_col: The column holding image paths (relative paths are taken from the file's folder, or from
            ``image_root``).
        label_col: A column of class indices or class names (classification); exclusive with ``caption_col``.
        caption_col: A column of captions (retrieval); several rows of one image give it several captions.
        classes: Class names; a label that is a name is looked up here. When ``None`` and the labels are
            names, the classes are the sorted distinct names (one pass over the text, no image read).
        image_root: Folder that relative paths are resolved against.
        limits: Image size limits and the alpha rule (``DecodeLimits()``: training's).

    Raises:
        FileNotFoundError: When the file is missing.
        ValueError: When a named column is not in the header (the message lists the columns).
    """

    def __init__(self, path: str | Path, image_col: str = IMAGE_KEY, label_col: str | None = None,
                 caption_col: str | None = None, classes: list[str] | None = None,
                 image_root: str | Path | None = None, limits: DecodeLimits | None = None):
        super().__init__(classes=classes, task="retrieval" if caption_col else "classification")
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"table not found: {self.path}")
        if (label_col is None) == (caption_col is None):
            raise ValueError("give exactly one of a label column or a caption column")
        config = source_config(str(self.path), table_format(self.path), image_key=image_col,
                               caption_key=caption_col or CAPTION_KEY, label_key=label_col or "",
                               image_root=str(image_root or ""), decode=limits or DecodeLimits())
        self.table = build_source(config, names=FLAG_NAMES)
        if label_col is not None and self.classes is None:
            self.classes = self._infer_classes()

    def _source(self, i: int) -> str:
        """Row ``i``'s image as the table names it (its path cell), else ``table:row``."""
        ref = self.table.rows[i][0]
        return ref if isinstance(ref, str) and ref else self.table.source(i)

    def _where(self, i: int) -> str:
        return f"{self.path}:{i + 2}" if self.table.fmt != "parquet" else f"{self.path}: row {i}"

    def _infer_classes(self) -> list[str]:
        values = {str(v).strip() for _, v in self.table.rows if v is not None and str(v).strip()}
        if not values:
            raise ValueError(f"{self.path}: no rows")
        if all(v.lstrip("-").isdigit() for v in values):
            top = max(int(v) for v in values)
            if top >= MAX_INFERRED_CLASSES:  # one stray label would otherwise build a classifier of that size
                raise ValueError(f"{self.path}: numeric label {top} implies {top + 1:,} classes (more than "
                                 f"{MAX_INFERRED_CLASSES:,}); pass --classnames to name them")
            return [str(i) for i in range(top + 1)]
        return sorted(values)

    def _label(self, i: int) -> int:
        """Row ``i``'s class index.

        Raises:
            BadSample: ``no_caption`` (an empty label cell).
            ValueError: A label outside the classes (the dataset does not fit them: not a sample to skip).
        """
        assert self.classes is not None
        value = self.table.rows[i][1]
        value = "" if value is None else str(value).strip()
        if not value:
            raise BadSample("no_caption", f"{self._where(i)}: no label")
        if value.lstrip("-").isdigit():
            label = int(value)
            if not 0 <= label < len(self.classes):
                raise ValueError(f"{self._where(i)}: label {label} outside 0..{len(self.classes) - 1}")
            return label
        try:
            return self.classes.index(value)
        except ValueError:
            raise ValueError(f"{self._where(i)}: unknown class name {value!r}") from None

    def __iter__(self) -> Iterator[Sample]:
        self.skipped.clear()
        if self.task == "classification":
            for i in range(len(self.table)):
                try:
                    label = self._label(i)  # a label outside the classes is the dataset's misfit: raised
                except BadSample as e:
                    self.skip(self._source(i), e)
                    continue
                try:
                    image = self.table.image(i)
                except Exception as e:  # the sample boundary (``skip``)
                    self.skip(self._source(i), e)
                    continue
                yield Sample(image, label=label, source=self._source(i))
            return
        # Captions are grouped by image over the whole file (text only; images are still read one by one).
        groups: dict[Any, list[int]] = {}
        for i, (ref, _) in enumerate(self.table.rows):
            groups.setdefault(ref if isinstance(ref, str) else i, []).append(i)
        for rows in groups.values():
            captions = [caption for i in rows for caption in self._captions(i)]
            source = self._source(rows[0])
            try:
                if not captions:
                    raise BadSample("no_caption", "no usable caption")
                image = self.table.image(rows[0])
            except Exception as e:  # the sample boundary (``skip``)
                self.skip(source, e)
                continue
            yield Sample(image, captions=captions, source=source)

    def _captions(self, i: int) -> list[str]:
        """The captions of row ``i``'s cell; a bad cell is recorded as skipped and gives none."""
        try:
            caption = self.table.rows[i][1]
            if caption is None:
                raise BadSample("no_caption", "empty cell")
            return decode_text(caption, self.table.limits)
        except BadSample as e:
            self.skip(self._where(i), e)
            return []


class WdsBenchmark(EvalDataset):
    """A dataset in CLIP_benchmark's webdataset layout (see the module docstring), streamed shard by shard.

    Args:
        root: The dataset folder.
        split: The sub-folder holding the shards (``test`` or ``train``).
        limits: Image size limits and the alpha rule (``DecodeLimits()``: training's).

    Raises:
        FileNotFoundError: When ``root`` or its shards are missing.
    """

    def __init__(self, root: str | Path, split: str = "test", limits: DecodeLimits | None = None):
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
        config = ShardsDataConfig(urls=(tuple(self.shards),), image_fields=WDS_IMAGE_FIELDS, caption_field="txt",
                                  decode=limits or DecodeLimits())
        self.source = build_source(config)
        self.stats = ShardStats()

    def __iter__(self) -> Iterator[Sample]:
        self.skipped.clear()
        for sample in self.source:
            source = f"{sample['__url__']}:{sample['__key__']}"
            try:
                label, captions = self._target(sample)
                image = self.source.decode(sample_image_bytes(sample, WDS_IMAGE_FIELDS))
            except Exception as e:  # the sample boundary (``skip``)
                self.skip(source, broken_or(sample, as_bad_sample(e)))
                continue
            yield Sample(image, label=label, captions=captions, source=source)
        self.stats = self.source.stats
        self.skipped.extend((url, f"shard_errors: {reason}") for url, reason in self.stats.bad_shards)

    def _target(self, sample: dict[str, object]) -> tuple[int | None, list[str] | None]:
        """The sample's class (``cls``) or captions (``txt``).

        Raises:
            BadSample: ``no_caption`` (neither field, or a blank one), ``bad_text`` (not UTF-8, not an integer) or
                ``too_large`` (a field over ``max_text_bytes``).
        """
        if "cls" in sample:
            value = decode_text(sample["cls"], self.source.config.decode)[0]  # type: ignore[arg-type]
            try:
                return int(value), None
            except ValueError:
                raise BadSample("bad_text", f"cls {value!r} is not an integer") from None
        if "txt" in sample:
            return None, decode_text(sample["txt"], self.source.config.decode)  # type: ignore[arg-type]
        raise BadSample("no_caption", "no 'cls' or 'txt' field")


def _lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def open_dataset(path: str | Path, *, image_col: str = IMAGE_KEY, label_col: str | None = None,
                 caption_col: str | None = None, classes: list[str] | None = None, split: str = "test",
                 task: str = "classification", image_root: str | Path | None = None,
                 limits: DecodeLimits | None = None) -> EvalDataset:
    """Opens ``path`` as whichever layout it is.

    A folder with a ``split`` sub-folder of tars (or ``classnames.txt``) is a CLIP_benchmark webdataset;
    otherwise the kind is ``clipforge.data.source_kind``'s: another folder is an image folder (one sub-folder
    per class), a table file a :class:`CsvDataset` (``label_col`` defaults to ``label`` for classification,
    ``caption_col`` to ``caption`` for retrieval).

    Raises:
        FileNotFoundError: When ``path`` does not exist.
        ValueError: When its layout is not recognised.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"dataset not found: {path}")
    if path.is_dir() and ((path / "classnames.txt").is_file() or
                          ((path / split).is_dir() and any((path / split).glob("*.tar")))):
        return WdsBenchmark(path, split, limits)
    kind = source_kind(str(path))
    if kind == "folder":
        return ImageFolder(path, limits)
    if kind in FORMATS:
        if task == "retrieval":
            return CsvDataset(path, image_col, caption_col=caption_col or CAPTION_KEY, classes=classes,
                              image_root=image_root, limits=limits)
        return CsvDataset(path, image_col, label_col=label_col or LABEL_KEY, classes=classes, image_root=image_root,
                          limits=limits)
    raise ValueError(f"{path}: tar shards outside CLIP_benchmark's layout (expected {path}/{split}/*.tar)")


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
