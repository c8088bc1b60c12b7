"""Golden outputs of the synthetic world: the same seeds give the same pixels, masks, captions, splits and tasks.

The digests were computed once from the world's output and are checked in; a change to any pixel, caption,
attribute, held-out pair or zero-shot prompt changes one of them. When the world's output is meant to change,
recompute them (``python tests/data/test_synthetic_golden.py`` prints the current ones) and say why in the commit.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from clipforge.data.synthetic import LANGUAGES, SyntheticWorld, WorldConfig

CONFIGS = Path(__file__).parents[2] / "configs"
WORLDS = {
    "default": WorldConfig(),
    "quickstart": WorldConfig(contrast_group=4),  # configs/quickstart.yaml at tiny-rn's 64 px
    "multilingual": WorldConfig(seed=3, languages=LANGUAGES),
    "grouped": WorldConfig(seed=7, image_size=96, languages=("ru", "ja"), contrast_group=4),
    "single": WorldConfig(seed=1, image_size=33, holdout_fraction=0.0, max_objects=1),
    "small": WorldConfig(seed=2, image_size=16, languages=("ja",), holdout_fraction=0.5, max_objects=2),
}

GOLDEN = {
    "default": "7a1a991412fbef2982bd6d0ad5aadf97f04b42c940258174ef1c059a26ce67f4",
    "quickstart": "142c38cd881c5d451dc3bd7e19fd0defbc3dd2addaebf8bf48736f657bcca521",
    "multilingual": "b52b4a5506a038e97380671e4b79e0e6c440ec36a41f5d5138bdf54bfd926d45",
    "grouped": "eabb3d1a684f2896f27f84b9acff94f67fe8ecea7cdf339bd71593f910985d08",
    "single": "53ca2030acd0cac941c3dd940161eabf1f086076f3ad6c2a1adc1f002b3abda1",
    "small": "ff12943ced180d21baf812a02b991d0c8ffac13f769c1e78f9b6aea6121f8192",
}
GOLDEN_QUICKSTART_SOURCE = "fd4387d22a3d78a3e8717768db6cb89f443e7b28bce64cf2411f45009af18911"


class _Digest:
    """SHA-256 over length-prefixed pieces, so that no two sequences of pieces hash alike."""

    def __init__(self) -> None:
        self.hash = hashlib.sha256()

    def add(self, piece: bytes | str | object) -> None:
        data = piece if isinstance(piece, bytes) else str(piece).encode("utf-8")
        self.hash.update(len(data).to_bytes(8, "little") + data)


def world_digest(config: WorldConfig) -> str:
    """A digest of everything the world generates for ``config``: samples, splits, captions, tasks."""
    world = SyntheticWorld(config)
    digest = _Digest()
    digest.add(world.heldout_pairs)
    digest.add(world.train_pairs)
    for split in ("train", "val", "test"):
        for index in [*range(24), 1_000, 123_456]:
            sample = world.sample(split, index)
            digest.add(np.asarray(sample.image, dtype=np.uint8).tobytes())
            digest.add(sample.mask.tobytes())
            digest.add(sample.caption)
            digest.add(sorted(sample.attributes.items()))
            digest.add(world.pair(split, index))
        for language in LANGUAGES:
            for index in (0, 5, 77):
                digest.add(world.captions(split, index, 5, language))
    for language in LANGUAGES:
        for task in world.zeroshot_tasks(12, language=language, split="val"):
            digest.add((task.name, task.classnames, task.templates, task.labels, task.indices, task.split))
            for image in task.images:
                digest.add(np.asarray(image, dtype=np.uint8).tobytes())
        images, captions = world.retrieval_set(4, language=language, captions_per_image=3)
        digest.add(captions)
        for image in images:
            digest.add(np.asarray(image, dtype=np.uint8).tobytes())
    return digest.hash.hexdigest()


@pytest.mark.parametrize("name", list(WORLDS))
def test_world_output_matches_the_golden_digest(name: str) -> None:
    assert world_digest(WORLDS[name]) == GOLDEN[name]


def source_digest(source: object, size: int) -> str:
    """A digest of the first ``size`` (image, caption) items of an indexable source."""
    digest = _Digest()
    for index in range(size):
        image, caption = source[index]  # type: ignore[index]
        digest.add(np.asarray(image, dtype=np.uint8).tobytes())
        digest.add(caption)
    return digest.hash.hexdigest()


def test_the_quickstart_trains_on_the_golden_world() -> None:
    """configs/quickstart.yaml (``make demo``) maps to the "quickstart" world and draws the same training items."""
    from clipforge.train import load_config
    from clipforge.train.data import build_source, world_config

    config = load_config(CONFIGS / "quickstart.yaml")
    image_size = config.model_config().vision.image_size
    assert world_config(config.data, image_size) == WORLDS["quickstart"]
    source = build_source(config.data, image_size)
    assert len(source) == 200_000 and source.group_size == 4  # type: ignore[attr-defined]
    assert source_digest(source, 48) == GOLDEN_QUICKSTART_SOURCE


if __name__ == "__main__":
    from clipforge.train import load_config
    from clipforge.train.data import build_source

    print("GOLDEN = {")
    for name, config in WORLDS.items():
        print(f'    "{name}": "{world_digest(config)}",')
    print("}")
    data = load_config(CONFIGS / "quickstart.yaml").data
    print(f'GOLDEN_QUICKSTART_SOURCE = "{source_digest(build_source(data, 64), 48)}"')
