"""Style-shifted splits of the synthetic world: new pixels, the same scenes and labels; the plain world untouched."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from clipforge.data.synthetic import COLOUR_RGB, SyntheticWorld, WorldConfig
from clipforge.data.synthetic.shifts import (
    SHIFTS,
    shift_image,
    shift_rng,
    shifted_sample,
    shifted_task,
    write_shift_folders,
)

WORLD = SyntheticWorld(WorldConfig(seed=0))


def digest(images) -> str:
    h = hashlib.sha256()
    for im in images:
        h.update(np.asarray(im).tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("shift", SHIFTS)
def test_shift_changes_pixels_but_not_the_scene(shift) -> None:
    for i in range(4):
        plain = WORLD.sample("test", i)
        shifted = shifted_sample(WORLD, "test", i, shift)
        a, b = np.asarray(plain.image, np.float64), np.asarray(shifted.image, np.float64)
        assert a.shape == b.shape and shifted.image.mode == "RGB"
        assert np.abs(a - b).mean() > 4, f"{shift} barely changed sample {i}"
        assert shifted.attributes == plain.attributes and shifted.caption == plain.caption
        assert np.array_equal(shifted.mask, plain.mask)
        again = shifted_sample(WORLD, "test", i, shift)  # a pure function of (seed, split, index, shift)
        assert np.array_equal(np.asarray(again.image), np.asarray(shifted.image))


def test_shifts_differ_from_each_other_and_keep_the_objects_where_they_were() -> None:
    index = next(i for i in range(100) if WORLD.sample("test", i).attributes["size"] == "large"
                 and WORLD.sample("test", i).attributes["shape"] in ("circle", "square", "hexagon"))
    sample = WORLD.sample("test", index)
    images = {s: np.asarray(shifted_sample(WORLD, "test", index, s).image, np.float64) for s in SHIFTS}
    assert len({v.tobytes() for v in images.values()}) == len(SHIFTS)
    inside, outside = sample.mask == 255, sample.mask == 0
    fill = np.array(COLOUR_RGB[sample.attributes["colour"]], np.float64)
    # background: the objects keep their colour, the backdrop changes.
    bg = images["background"]
    assert np.abs(bg[inside] - fill).max() < 20
    assert np.abs(bg[outside] - np.asarray(sample.image, np.float64)[outside]).mean() > 10
    # outline: the edges are in the objects' colour, the objects' interiors show the backdrop.
    from PIL import Image, ImageFilter

    core = np.asarray(Image.fromarray(sample.mask).filter(ImageFilter.MinFilter(7))) == 255
    assert core.any()
    outline = images["outline"]
    assert np.abs(outline[core] - fill).mean() > 40
    # sketch: greyscale.
    sketch = images["sketch"]
    assert np.array_equal(sketch[..., 0], sketch[..., 1]) and np.array_equal(sketch[..., 1], sketch[..., 2])


def test_unknown_shift_and_recolouring_on_colour_labels() -> None:
    with pytest.raises(ValueError, match="unknown shift 'blur'"):
        shift_rng(WORLD, "test", 0, "blur")
    with pytest.raises(ValueError, match="unknown shift"):
        shift_image(WORLD.sample("test", 0), "blur", np.random.default_rng(0))
    colour_task = next(t for t in WORLD.zeroshot_tasks(4) if t.name == "colour")
    with pytest.raises(ValueError, match="colour task's labels would not hold"):
        shifted_task(WORLD, colour_task, "colour")
    assert len(shifted_task(WORLD, colour_task, "outline").images) == 4  # the objects keep their colour


def test_shifted_task_keeps_labels_and_the_world_stays_byte_identical() -> None:
    before = digest(WORLD.sample("test", i).image for i in range(8))
    tasks = {t.name: t for t in WORLD.zeroshot_tasks(12)}
    shape = tasks["shape"]
    for shift in SHIFTS:
        shifted = shifted_task(WORLD, shape, shift)
        assert shifted.labels == shape.labels and shifted.indices == shape.indices
        assert shifted.classnames == shape.classnames and shifted.templates == shape.templates
        assert digest(shifted.images) != digest(shape.images)
    # Re-drawing read the world's samples and changed nothing: a fresh world draws the same bytes.
    assert digest(WORLD.sample("test", i).image for i in range(8)) == before
    assert digest(SyntheticWorld(WorldConfig(seed=0)).sample("test", i).image for i in range(8)) == before
    assert digest(shape.images) == digest(WORLD.sample("test", i).image for i in shape.indices)


def test_write_shift_folders(tmp_path) -> None:
    written = write_shift_folders(tmp_path, size=10, shifts=("outline", "sketch"), train_size=6)
    assert written == {"train": 6, "id": 10, "outline": 10, "sketch": 10}
    classes = sorted(p.name for p in (tmp_path / "id").iterdir())
    assert classes == sorted(WORLD.SHAPES)  # every class folder, even an empty one
    for folder in ("train", "outline", "sketch"):
        assert sorted(p.name for p in (tmp_path / folder).iterdir()) == classes
    ids = sorted(p.relative_to(tmp_path / "id") for p in (tmp_path / "id").rglob("*.png"))
    assert ids == sorted(p.relative_to(tmp_path / "sketch") for p in (tmp_path / "sketch").rglob("*.png"))
    assert "{}" in (tmp_path / "templates.txt").read_text()
    with pytest.raises(ValueError, match="task must be one of"):
        write_shift_folders(tmp_path / "x", size=2, task="texture")
