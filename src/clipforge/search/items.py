"""What ``clipforge embed`` reads from each kind of data source: the inputs of one collection part, each turned into
an :class:`Item` (a decoded image and its metadata) or a ``BadSample``.

A source is cut into parts (``clipforge.search.collection``'s layout): the indexable kinds (an image folder, a
CSV/TSV/parquet table, the synthetic world) into ranges of ``part_size`` inputs, tar shards one part per shard.
:meth:`ItemSource.inputs` lists a part's inputs as ``(position in the part, row, handle)``; :meth:`ItemSource.load`
turns a handle into an :class:`Item`, decoding under the config's limits (``clipforge.data.decode``, reduced on
decode to the model's input side), so a bad image is a ``BadSample`` with training's reasons.

**Captions.** Without ``--texts`` a caption is metadata: a missing or blank one (an image folder without sidecar
files, an empty table cell, a shard sample without ``.txt``) is ``""``, not a bad sample. With ``--texts`` every
row needs a caption to embed, so a sample without one is skipped and counted as ``no_caption``, as training does.
A caption field with several lines gives its first. Other caption faults (not UTF-8: ``bad_text``; over the size
limit: ``too_large``) skip the sample either way, as in training.

**Paths** in the metadata are absolute: an image file, ``TABLE:ROW`` for an image stored inside a parquet table,
``SHARD.tar::MEMBER`` (the image member's name in the shard, e.g. ``000120.jpg``) and ``synthetic:INDEX``.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from clipforge.data.config import DataConfig, FolderDataConfig, ShardsDataConfig, SyntheticDataConfig
from clipforge.data.decode import (
    BadSample,
    DecodeLimits,
    as_bad_sample,
    broken_or,
    decode_image,
    decode_text,
    open_image,
    read_bytes,
    sample_captions,
    sample_image_bytes,
)
from clipforge.data.webdataset import ShardStats, iter_shard


@dataclass
class Item:
    """One input ready for the transform: the decoded RGB image and the row's metadata (width and height are the
    original's, read from its header before any reduce-on-decode)."""

    image: Image.Image
    caption: str
    path: str
    width: int
    height: int


def _first_caption(read: Callable[[], list[str]], required: bool) -> str:
    """The first caption ``read`` gives; ``""`` for a missing or blank one unless ``required``."""
    try:
        return read()[0]
    except BadSample as e:
        if e.reason == "no_caption" and not required:
            return ""
        raise


def _decode(data: bytes, limits: DecodeLimits, min_size: int | None, caption: str, path: str) -> Item:
    width, height = open_image(data, limits).size  # the header alone: microseconds, beside the decode
    return Item(decode_image(data, limits, min_size), caption, path, width, height)


class ItemSource:
    """The inputs of a data source, part by part (see the module docstring).

    Args:
        config: The data config (``clipforge.data.sources.source_config``); its files are checked first
            (``check_source``), raising ``ConfigError`` naming the field.
        image_size: The model's input side: images decode at least this large on their shorter side (``None``:
            full size); the synthetic world renders at it.
        part_size: Inputs per part of an indexable source.
        require_caption: Whether a missing caption is a bad sample (``--texts``).
        limit: Embed only the first ``limit`` inputs (indexable sources).
        names: How check errors call each field (a command line's flags).

    Raises:
        ConfigError: from ``check_source``.
        ValueError: ``limit`` for tar shards, or a source with no input.
    """

    def __init__(self, config: DataConfig, image_size: int | None, part_size: int, require_caption: bool = False,
                 limit: int | None = None, names: dict[str, str] | None = None):
        from clipforge.data.config import CSVDataConfig
        from clipforge.data.sources import build_source

        if isinstance(config, FolderDataConfig):  # absolute paths, recorded and resolved as such
            config = dataclasses.replace(config, path=os.path.abspath(config.path))
        elif isinstance(config, CSVDataConfig):
            root = os.path.abspath(config.image_root) if config.image_root else ""
            config = dataclasses.replace(config, path=os.path.abspath(config.path), image_root=root)
        if part_size < 1:
            raise ValueError(f"--part-size must be >= 1, got {part_size}")
        self.config, self.part_size, self.require_caption = config, part_size, require_caption
        self.kind = str(config.kind)
        self.limits: DecodeLimits = getattr(config, "decode", DecodeLimits())
        self.image_size = image_size  # also the decode's min_size: the transform then resizes from at most 2x
        reader = build_source(config, image_size, names)
        self.shards: list[str] = []
        self.reader: Any = reader
        if isinstance(config, ShardsDataConfig):
            if limit is not None:
                raise ValueError("--limit applies to folders, tables and the synthetic world; tar shards are embedded "
                                 "whole, one part per shard")
            self.shards = [os.path.abspath(p) for source in reader.sources for p in source]
            self.count = -1  # unknown until read
        else:
            total = len(reader)
            self.count = total if limit is None else min(total, limit)
        if self.count == 0:
            raise ValueError(f"{self.describe()['path']}: no inputs to embed")

    @property
    def num_parts(self) -> int:
        """How many parts the source is cut into."""
        return len(self.shards) if self.shards else math.ceil(self.count / self.part_size)

    def part_length(self, part: int) -> int | None:
        """The number of inputs in ``part`` (``None`` for a shard: known once read)."""
        if self.shards:
            return None
        return min(self.part_size, self.count - part * self.part_size)

    def describe(self) -> dict[str, Any]:
        """The manifest's ``data`` entry: what was read, and every setting that changes which rows are made."""
        from clipforge.config import to_dict

        c = self.config
        data: dict[str, Any] = {"kind": self.kind}
        if isinstance(c, SyntheticDataConfig):
            data.update(path="synthetic", config=to_dict(c), image_size=self.image_size)
        elif isinstance(c, ShardsDataConfig):
            data.update(path=os.path.abspath(c.urls) if isinstance(c.urls, str) and "://" not in c.urls
                        else c.urls, shards=self.shards, image_fields=list(c.image_fields),
                        caption_field=c.caption_field)
        elif isinstance(c, FolderDataConfig):
            data.update(path=os.path.abspath(c.path))
        else:
            data.update(path=os.path.abspath(c.path), image_key=c.image_key, caption_key=c.caption_key,
                        image_root=os.path.abspath(c.image_root) if c.image_root else "")
        if not isinstance(c, SyntheticDataConfig):
            data["decode"] = dataclasses.asdict(self.limits)
            data["decode"]["formats"] = list(self.limits.formats)
        data["inputs"] = self.count if self.count >= 0 else None
        return data

    # -- a part's inputs ---------------------------------------------------------------------------------------

    def inputs(self, part: int, stats: ShardStats | None = None) -> Iterator[tuple[int, int, Any]]:
        """Part ``part``'s inputs as ``(position in the part, row, handle for load)``; a shard is read as it goes
        (its tar-level faults counted in ``stats``)."""
        if self.shards:
            for position, sample in enumerate(iter_shard(self.shards[part], stats)):
                yield position, position, sample
            return
        first = part * self.part_size
        for position in range(self.part_length(part) or 0):
            yield position, first + position, first + position

    def load(self, part: int, handle: Any) -> Item:
        """The :class:`Item` of one input (``handle`` from :meth:`inputs`).

        Raises:
            BadSample: with the reason (``clipforge.data.decode``); other exceptions are the caller's to count.
        """
        if self.shards:
            return self._load_sample(part, handle)
        if isinstance(self.config, SyntheticDataConfig):
            image, caption = self.reader[handle]
            image = image.convert("RGB")
            return Item(image, caption, f"synthetic:{handle}", image.width, image.height)
        if isinstance(self.config, FolderDataConfig):
            return self._load_file(handle)
        return self._load_row(handle)

    def _load_file(self, i: int) -> Item:
        file = self.reader.files[i]
        sidecar = file.with_suffix(".txt")

        def captions() -> list[str]:
            if not sidecar.is_file():
                raise BadSample("no_caption", f"no {sidecar.name} beside {file}")
            return decode_text(read_bytes(sidecar, self.limits.max_text_bytes, "no_caption"), self.limits)

        caption = _first_caption(captions, self.require_caption)
        data = read_bytes(file, self.limits.max_image_bytes)
        return _decode(data, self.limits, self.image_size, caption, os.path.abspath(file))

    def _load_row(self, i: int) -> Item:
        table = self.reader
        cell = table.rows[i][1]

        def captions() -> list[str]:
            if cell is None:
                raise BadSample("no_caption", f"row {i}: empty caption cell")
            return decode_text(cell if isinstance(cell, str | bytes) else str(cell), self.limits)

        caption = _first_caption(captions, self.require_caption)
        ref = table.rows[i][0]
        name = ref.get("path") if isinstance(ref, dict) and not ref.get("bytes") else ref  # as TablePairs reads it
        inline = f"{os.path.abspath(table.path)}:{i}"  # an image stored in the cell: the table and the row
        path = os.path.abspath(table.root / name) if isinstance(name, str) and name else inline
        return _decode(table.image_bytes(i), self.limits, self.image_size, caption, path)

    def _load_sample(self, part: int, sample: dict[str, object]) -> Item:
        config = self.config
        assert isinstance(config, ShardsDataConfig)
        oversized = sample.get("__oversized__")
        if isinstance(oversized, dict) and oversized:
            ext, size = next(iter(oversized.items()))
            raise BadSample("too_large", f"{sample.get('__key__')}: member .{ext} of {size:,} bytes was not read")
        try:
            caption = _first_caption(lambda: sample_captions(sample, config.caption_field, self.limits),
                                     self.require_caption)
            data = sample_image_bytes(sample, config.image_fields)
        except BadSample as e:
            raise broken_or(sample, e) from None
        field = next(f for f in config.image_fields if f in sample)
        return _decode(data, self.limits, self.image_size, caption, f"{self.shards[part]}::{sample['__key__']}.{field}")


# -- batches, as DataLoader workers make them -----------------------------------------------------------------------


class PixelPrep:
    """The model's eval transform split in two: the geometry in the DataLoader worker, the normalisation on a whole
    batch on the model's device (for ``EvalTransform``: ``uint8`` pixels cross the process boundary, a quarter of
    the float bytes; the same operations in the same order, so the same values). Other transforms (NaFlex) run
    whole in the worker."""

    def __init__(self, transform: Any):
        from clipforge.transforms import EvalTransform

        self.transform = transform
        self.fast = isinstance(transform, EvalTransform)
        if self.fast:
            self.mean = torch.tensor(transform.mean, dtype=torch.float32).view(1, 3, 1, 1)
            self.std = torch.tensor(transform.std, dtype=torch.float32).view(1, 3, 1, 1)

    def __call__(self, image: Any) -> Any:
        """One image's model input (``uint8`` (H, W, 3) on the fast path)."""
        if not self.fast:
            return self.transform(image)
        from clipforge.geometry import resize

        rgb = image if image.mode == "RGB" else image.convert("RGB")
        pixels = resize(rgb, self.transform.size, self.transform.resize)
        return torch.from_numpy(np.asarray(pixels, dtype=np.uint8).copy())

    def batch(self, images: Any, device: torch.device) -> Any:
        """A stacked batch from the workers as the model's input on ``device``."""
        if not self.fast:
            return images.to(device, non_blocking=True)
        x = images.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255)  # (N, 3, H, W)
        return x.sub_(self.mean.to(device)).div_(self.std.to(device))


def identity(x: Any) -> Any:
    """``x`` (a DataLoader ``collate_fn`` that keeps the workers' batches as they are)."""
    return x


class PartStream(torch.utils.data.IterableDataset):
    """The batches of some parts, as a DataLoader worker makes them, and after each part an ``{"part", "end"}``
    message from every worker.

    A batch is always the good inputs among one chunk of ``batch_size`` consecutive inputs of a part, whoever makes
    it. Worker ``w`` of ``W`` takes chunks ``w, w + W, …`` of each part; for tar shards, when there are at least as
    many parts as workers, it takes whole parts ``w, w + W, …`` of the list instead, so each shard is read by one
    worker rather than by all of them.
    """

    def __init__(self, source: ItemSource, parts: list[int], batch_size: int, prep: PixelPrep):
        self.source, self.parts, self.batch_size, self.prep = source, parts, batch_size, prep

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        by_part = bool(self.source.shards) and len(self.parts) >= workers
        for n, part in enumerate(self.parts):
            stats = ShardStats()
            if by_part and n % workers != worker:
                yield {"part": part, "end": True, "shard_errors": 0}
                continue
            chunk: list[tuple[Any, ...]] = []
            current, inputs, skipped = -1, 0, Counter[str]()
            for position, row, handle in self.source.inputs(part, stats):
                index = position // self.batch_size
                if not by_part and index % workers != worker:
                    continue
                if index != current:
                    if current >= 0:
                        yield self._batch(part, inputs, skipped, chunk)
                    current, chunk, inputs, skipped = index, [], 0, Counter()
                inputs += 1
                try:  # the sample boundary: whatever one input raises is counted, never the run's end
                    item = self.source.load(part, handle)
                    chunk.append((row, self.prep(item.image), item.caption, item.path, item.width, item.height))
                except Exception as e:
                    skipped[as_bad_sample(e).reason] += 1
            if current >= 0:
                yield self._batch(part, inputs, skipped, chunk)
            reader = by_part or worker == 0  # every worker met the same shard errors: one counts them
            yield {"part": part, "end": True, "shard_errors": len(stats.bad_shards) if reader else 0}

    @staticmethod
    def _batch(part: int, inputs: int, skipped: Counter[str], chunk: list[tuple[Any, ...]]) -> dict[str, Any]:
        columns: list[Any] = list(zip(*chunk)) if chunk else [()] * 6
        return {"part": part, "inputs": inputs, "skipped": dict(skipped),
                "images": torch.stack(list(columns[1])) if chunk else None,
                **{c: list(columns[i]) for i, c in ((0, "row"), (2, "caption"), (3, "path"), (4, "width"),
                                                    (5, "height"))}}
