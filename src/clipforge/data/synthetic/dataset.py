"""``SyntheticDataset``: one split of a synthetic world as a map-style torch dataset of ``(image, caption)``."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image

from clipforge.data.synthetic.vocab import SPLITS

if TYPE_CHECKING:
    from clipforge.data.synthetic.world import SyntheticWorld


class SyntheticDataset(torch.utils.data.Dataset):
    """Map-style view of one split: item ``i`` is sample ``start + i`` as ``(image, caption)``.

    Picklable (DataLoader workers regenerate samples from the world's config). With ``cache``, each
    process keeps the (image, caption) pairs it generated.

    Args:
        world: The generating world.
        split: ``"train"``, ``"val"`` or ``"test"``.
        size: Number of items.
        transform: Applied to each image.
        start: Index of the first sample.
        cache: Keep generated items in memory.
    """

    def __init__(
        self,
        world: SyntheticWorld,
        split: str,
        size: int,
        transform: Callable[[Image.Image], Any] | None = None,
        *,
        start: int = 0,
        cache: bool = False,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {tuple(SPLITS)}, got {split!r}")
        if size < 0 or start < 0:
            raise ValueError(f"size and start must be non-negative, got size={size}, start={start}")
        self.world, self.split, self.size, self.start = world, split, size, start
        group = world.group_size(split)
        if group > 1 and (start % group or size % group):
            raise ValueError(f"with contrast groups of {group}, start and size must be multiples of {group}, "
                             f"got start={start}, size={size}")
        self.group_size = group  # StepBatches keeps each group's consecutive items in one batch
        self.transform = transform
        self._cache: dict[int, tuple[Image.Image, str]] | None = {} if cache else None

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> tuple[Any, str]:
        if not -self.size <= i < self.size:
            raise IndexError(f"index {i} out of range for a dataset of {self.size}")
        i %= self.size
        item = self._cache.get(i) if self._cache is not None else None
        if item is None:
            sample = self.world.sample(self.split, self.start + i)
            item = (sample.image, sample.caption)
            if self._cache is not None:
                self._cache[i] = item
        image, caption = item
        return (self.transform(image) if self.transform is not None else image), caption
