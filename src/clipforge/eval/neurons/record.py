"""Streamed recording of a layer's activations over a collection of images, keeping what a report needs.

One pass over the images keeps, for every recorded unit, its exact top ``k`` images (value and index), plus a
reservoir sample (Vitter's algorithm R, seeded) of every unit's activations from which quantiles and images from
other quantiles come; memory stays bounded however large the collection. The labels of every image are kept (small
integers) for the multimodal score. A second pass (``collect_images``) fetches only the images a report shows.

Collections are any iterable of ``clipforge.eval.datasets.Sample``: what ``open_task_data`` opens (an image folder of
class folders, a table, a CLIP_benchmark webdataset), ``ImageFiles`` (a folder of images without classes), or
``SyntheticImages``, a split of the synthetic world.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from clipforge.eval.adapter import EvalModel
from clipforge.eval.datasets import EvalDataset, Sample, iter_batches
from clipforge.eval.neurons.layers import Layer, layer_activations

SYNTHETIC = "synthetic"
SYNTHETIC_ATTRIBUTES = ("shape", "colour")


class SyntheticImages(EvalDataset):
    """Images ``0 .. size - 1`` of a split of the synthetic world, labelled by one attribute.

    Args:
        world: A ``SyntheticWorld``.
        split: ``train``, ``val`` or ``test``.
        size: How many images.
        attribute: The label: ``shape`` or ``colour``.
    """

    def __init__(self, world: object, split: str = "test", size: int = 1000, attribute: str = "shape"):
        from clipforge.data.synthetic import COLOURS, SHAPES

        super().__init__()
        if attribute not in SYNTHETIC_ATTRIBUTES:
            raise ValueError(f"attribute: expected one of {list(SYNTHETIC_ATTRIBUTES)}, got {attribute!r}")
        if size < 1:
            raise ValueError(f"size must be ≥ 1, got {size}")
        self.world, self.split, self.size, self.attribute = world, split, size, attribute
        self.names = list(SHAPES if attribute == "shape" else COLOURS)
        self.classes = self.names

    def __iter__(self) -> Iterator[Sample]:
        for i in range(self.size):
            sample = self.world.sample(self.split, i)  # type: ignore[attr-defined]
            label = self.names.index(sample.attributes[self.attribute])
            yield Sample(sample.image, label=label, source=f"{SYNTHETIC}:{self.split}:{i}")


class ImageFiles(EvalDataset):
    """Every image file under a folder (recursively, sorted), without labels; a bad image is skipped and recorded
    with training's decoding rules (``clipforge.data.decode``).

    Raises:
        NotADirectoryError: ``root`` is not a folder.
        FileNotFoundError: it holds no image file.
    """

    def __init__(self, root: str | Path):
        from clipforge.data.decode import DecodeLimits
        from clipforge.data.folders import CLASS_EXTENSIONS, list_images

        super().__init__()
        self.files = list_images(root, CLASS_EXTENSIONS)
        self.limits = DecodeLimits()

    def __iter__(self) -> Iterator[Sample]:
        from clipforge.data.decode import read_image

        self.skipped.clear()
        for path in self.files:
            try:
                image = read_image(path, self.limits)
            except Exception as e:  # the sample boundary: one bad image never ends a recording
                self.skip(str(path), e)
                continue
            yield Sample(image, source=str(path))


def _has_class_folders(path: Path) -> bool:
    return path.is_dir() and any(p.is_dir() and not p.name.startswith(".") for p in path.iterdir())


def open_images(spec: str | Path, image_size: int, *, attribute: str = "shape") -> EvalDataset:
    """A collection by name: ``synthetic[:SPLIT[:SIZE]]`` (the default world at ``image_size``; ``test``, 1000), a
    folder of images without sub-folders (``ImageFiles``: no labels), or a path ``open_task_data`` opens (image folder
    of class folders, table with labels, CLIP_benchmark webdataset).

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: a bad ``synthetic`` spelling or a layout that is not recognised.
    """
    text = str(spec)
    if text == SYNTHETIC or text.startswith(SYNTHETIC + ":"):
        from clipforge.data.synthetic import SPLITS, SyntheticWorld, WorldConfig

        parts = text.split(":")
        split = parts[1] if len(parts) > 1 and parts[1] else "test"
        if split not in SPLITS or len(parts) > 3 or (len(parts) == 3 and not parts[2].isdigit()):
            raise ValueError(f"--data {text!r}: expected synthetic[:SPLIT[:SIZE]] with SPLIT one of {list(SPLITS)} "
                             "and SIZE a whole number, e.g. synthetic:test:2000")
        size = int(parts[2]) if len(parts) == 3 else 1000
        return SyntheticImages(SyntheticWorld(WorldConfig(image_size=image_size)), split, size, attribute)
    from clipforge.eval.tasks import open_task_data

    path = Path(spec)
    if path.is_dir() and not _has_class_folders(path) and not (path / "classnames.txt").is_file():
        return ImageFiles(path)
    return open_task_data(spec, "zeroshot")


@dataclass
class Recording:
    """What one pass kept of a layer's activations.

    Attributes:
        layer: The layer's name.
        units: The recorded units; column ``j`` of every array is unit ``units[j]``.
        count: Images seen.
        top_values: (k, U) float32, each column in descending order.
        top_indices: (k, U) int64: the images (their position in the pass) of ``top_values``.
        labels: (count,) int64, the class of every image (-1 where it has none).
        classes: Class names of ``labels``, or ``None``.
        sources: Where every image came from (``Sample.source``).
        reservoir: (R, U) float32, the activations of a uniform sample of the images.
        reservoir_indices: (R,) int64, those images.
        mean: (U,) float64, each unit's mean activation.
        skipped: Images that could not be read, as ``(source, reason)``.
    """

    layer: str
    units: list[int]
    count: int
    top_values: np.ndarray
    top_indices: np.ndarray
    labels: np.ndarray
    classes: list[str] | None
    sources: list[str]
    reservoir: np.ndarray
    reservoir_indices: np.ndarray
    mean: np.ndarray
    skipped: list[tuple[str, str]]

    def column(self, unit: int) -> int:
        """The column of ``unit`` in the arrays."""
        return self.units.index(unit)

    def quantile_examples(self, unit: int, quantiles: tuple[float, ...]) -> list[tuple[float, int, float]]:
        """``(quantile, image index, value)`` for each of ``quantiles``: the reservoir's image nearest it."""
        values = self.reservoir[:, self.column(unit)]
        order = np.argsort(values, kind="stable")
        out = []
        for q in quantiles:
            j = int(order[min(len(order) - 1, int(round(q * (len(order) - 1))))])
            out.append((q, int(self.reservoir_indices[j]), float(values[j])))
        return out


def record(model: EvalModel, layer: Layer, images: Iterable[Sample], units: list[int], *, k: int = 9,
           batch_size: int = 64, reservoir: int = 2048, limit: int | None = None, seed: int = 0,
           labeller: Callable[[torch.Tensor], torch.Tensor] | None = None, progress: bool = False) -> Recording:
    """Records ``units`` of ``layer`` over ``images`` in one streamed pass.

    Args:
        model: The model with its image transform.
        layer: Which layer (``get_layer``).
        images: The collection (a dataset of ``Sample``).
        units: Which of the layer's units.
        k: Top images kept per unit.
        batch_size: Images per forward pass.
        reservoir: Size of the reservoir sample.
        limit: Read at most this many images.
        seed: The reservoir's seed.
        labeller: For images without labels: embeddings (B, D) → class indices (B,), e.g. zero-shot over a
            vocabulary; the forward pass then runs to the end.
        progress: Show a progress bar.

    Raises:
        ValueError: no image could be read.
    """
    index = torch.tensor(units, dtype=torch.long)
    top_v = torch.empty(0, len(units))
    top_i = torch.empty(0, len(units), dtype=torch.long)
    res_v = np.zeros((reservoir, len(units)), np.float32)
    res_i = np.zeros(reservoir, np.int64)
    rng = np.random.default_rng(seed)
    labels: list[int] = []
    sources: list[str] = []
    total = np.zeros(len(units), np.float64)
    seen = 0
    samples: Iterable[Sample] = images
    if limit is not None:
        samples = (s for n, s in zip(range(limit), images))
    bar = tqdm(desc=f"recording {layer.name}", unit="img", disable=not progress)
    with torch.no_grad():
        for batch, metas in iter_batches(samples, model.transform, batch_size):
            batch = batch.to(model.device)
            if labeller is not None and any(m.label is None for m in metas):
                acts = layer_activations(model.model, layer, batch, stop=False)
                guessed = labeller(cast(Any, model.model).encode_image(batch).float()).tolist()
            else:
                acts = layer_activations(model.model, layer, batch)
                guessed = [-1] * len(metas)
            acts = acts.float().cpu()[:, index]  # (B, U)
            positions = torch.arange(seen, seen + len(metas))
            top_v, order = torch.cat([top_v, acts]).topk(min(k, len(top_v) + len(acts)), dim=0)
            top_i = torch.cat([top_i, positions[:, None].expand(-1, len(units))]).gather(0, order)
            values = acts.numpy()
            total += values.sum(0)
            for row, n in enumerate(range(seen, seen + len(metas))):  # algorithm R
                slot = n if n < reservoir else int(rng.integers(n + 1))
                if slot < reservoir:
                    res_v[slot], res_i[slot] = values[row], n
            labels.extend(m.label if m.label is not None else g for m, g in zip(metas, guessed))
            sources.extend(m.source for m in metas)
            seen += len(metas)
            bar.update(len(metas))
    bar.close()
    skipped = list(getattr(images, "skipped", []))
    if seen == 0:
        raise ValueError(f"no images could be read ({len(skipped)} skipped)")
    kept = min(seen, reservoir)
    return Recording(layer.name, list(units), seen, top_v.numpy(), top_i.numpy(), np.asarray(labels, np.int64),
                     getattr(images, "classes", None), sources, res_v[:kept], res_i[:kept], total / seen, skipped)


def collect_images(images: Iterable[Sample], wanted: set[int], thumbnail: int = 128,
                   limit: int | None = None) -> dict[int, Image.Image]:
    """The images at positions ``wanted`` of a second pass over ``images``, as RGB thumbnails (longer side at most
    ``thumbnail``). The pass reads the collection in the same order and skips the same bad images."""
    out: dict[int, Image.Image] = {}
    if not wanted:
        return out
    last = max(wanted)
    for n, sample in enumerate(images):
        if limit is not None and n >= limit:
            break
        if n in wanted:
            image = sample.image.convert("RGB")
            image.thumbnail((thumbnail, thumbnail))
            out[n] = image
        if n >= last:
            break
    return out
