"""Training batches as a pure function of ``(seed, step, rank)``: exact resume and sharding need no state.

Item ``step`` of ``StepBatches`` is this rank's slice of global batch ``step``. Global position
``p = step · batch_size + j`` maps to sample ``order(epoch)[p mod n]``, where ``order`` is a permutation
seeded by ``(seed, epoch)``; the crop of each sample is drawn from an rng seeded by ``(seed, p)``.
Rank ``r`` of ``W`` takes positions ``j ∈ [r · B/W, (r + 1) · B/W)`` of each global batch, so the union
over ranks is exactly the single-process batch.
"""

from __future__ import annotations

import csv
import random
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from clipforge.train.config import CSVDataConfig, DataConfig, SyntheticDataConfig


class CSVPairs(torch.utils.data.Dataset):
    """(PIL image, caption) pairs listed in a CSV file; image paths relative to the file's folder."""

    def __init__(self, config: CSVDataConfig):
        path = Path(config.path)
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
        missing = {config.image_key, config.caption_key} - set(rows[0] if rows else {})
        if missing:
            raise ValueError(f"{path}: missing column(s) {sorted(missing)}")
        self.root = path.parent
        self.items = [(row[config.image_key], row[config.caption_key]) for row in rows]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[Image.Image, str]:
        file, caption = self.items[i]
        with Image.open(self.root / file) as image:
            return image.convert("RGB"), caption


def build_source(config: DataConfig, image_size: int) -> Sequence[tuple[Image.Image, str]]:
    """The indexable (PIL image, caption) source a data config describes."""
    if isinstance(config, SyntheticDataConfig):
        from clipforge.data.synthetic import SyntheticWorld

        return SyntheticWorld(world_config(config, image_size)).dataset("train", config.train_size)
    return CSVPairs(config)


def world_config(config: SyntheticDataConfig, image_size: int) -> Any:
    """The ``WorldConfig`` of a synthetic data config (rendered at ``image_size`` unless it names one)."""
    from clipforge.data.synthetic import WorldConfig

    return WorldConfig(seed=config.seed, image_size=config.image_size or image_size, languages=config.languages,
                       holdout_fraction=config.holdout_fraction, max_objects=config.max_objects)


class StepBatches(torch.utils.data.Dataset):
    """Item ``step`` is ``(images (b, 3, H, W), text (b, T))``: this rank's share of global batch ``step``.

    Args:
        source: Indexable (PIL image, caption) pairs.
        transform: Image transform; called as ``transform(image, rng)`` when ``augment``.
        text_processor: ``texts -> Tensor``.
        batch_size: The global batch size.
        seed: Seeds the per-epoch order and the crops.
        rank: This process's rank.
        world_size: Number of processes.
        augment: Whether ``transform`` takes an rng (random crops).
    """

    def __init__(self, source: Sequence[tuple[Image.Image, str]], transform: Callable, text_processor: Callable,
                 batch_size: int, seed: int, rank: int = 0, world_size: int = 1, augment: bool = True):
        self.source, self.transform, self.text_processor = source, transform, text_processor
        self.batch_size, self.seed, self.augment = batch_size, seed, augment
        local = batch_size // world_size
        self.positions = range(rank * local, (rank + 1) * local)

    def __len__(self) -> int:
        return 2**62  # indexed by step; the sampler decides which steps are drawn

    def __getitem__(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        images, captions = [], []
        n = len(self.source)
        for j in self.positions:
            p = step * self.batch_size + j
            image, caption = self.source[int(_order(self.seed, p // n, n)[p % n])]
            if self.augment:
                images.append(self.transform(image, random.Random(self.seed * 2**40 + p)))
            else:
                images.append(self.transform(image))
            captions.append(caption)
        return torch.stack(images), self.text_processor(captions)


@lru_cache(maxsize=2)
def _order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The sample order of one pass over ``n`` samples."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def batch_loader(batches: StepBatches, start: int, stop: int, num_workers: int,
                 pin_memory: bool = False) -> torch.utils.data.DataLoader:
    """Steps ``start .. stop - 1`` of ``batches`` in order, prepared by ``num_workers`` processes."""
    return torch.utils.data.DataLoader(batches, batch_size=None, sampler=range(start, stop), num_workers=num_workers,
                                       pin_memory=pin_memory, persistent_workers=False,
                                       prefetch_factor=4 if num_workers else None)
