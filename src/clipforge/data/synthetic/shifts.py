"""Style-shifted evaluation splits of the synthetic world: the same scenes, drawn another way.

A shifted sample is the world's own sample (same shape, colour, count, layout and labels; its mask says where the
objects are) re-drawn by one of :data:`SHIFTS`:

- ``background``: on wavy bands between two random colours at full contrast (no training scene has such a backdrop);
- ``texture``: the objects' surface striped, checkered or dotted at high contrast;
- ``outline``: only the objects' edges, in their colour;
- ``noise``: Gaussian pixel noise (σ = 32 of 255);
- ``colour``: every hue rotated by 90°–270° and a colour cast;
- ``sketch``: pencil strokes and hatching on paper, greyscale.

``colour`` and ``sketch`` change what colour the objects look, so they keep the labels of the shape and count tasks
but not of the colour task (or the composition task, which names colours): :func:`shifted_task` refuses those.

Every shifted image is a pure function of ``(world seed, split, index, shift)``: it draws from
``np.random.default_rng([seed, split_id, index, 0, _SHIFT_STREAM, shift_id])``, a key no other stream of the world
uses (six entries). The unshifted world is untouched: these functions only read its samples.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from PIL import Image

from clipforge.data.synthetic.drawing import (
    add_noise,
    draw_on_new_background,
    draw_outline,
    draw_sketch,
    draw_textured,
    object_fill,
    rotate_hue,
)
from clipforge.data.synthetic.vocab import COLOUR_RGB, SPLITS
from clipforge.data.synthetic.world import Sample, SyntheticWorld, ZeroShotTask

SHIFTS: tuple[str, ...] = ("background", "texture", "outline", "noise", "colour", "sketch")
RECOLOURING = frozenset({"colour", "sketch"})  # shifts after which an object's colour is no longer its label
_SHIFT_STREAM = 97


def _check(shift: str) -> None:
    if shift not in SHIFTS:
        raise ValueError(f"unknown shift {shift!r}; one of {list(SHIFTS)}")


def shift_rng(world: SyntheticWorld, split: str, index: int, shift: str) -> np.random.Generator:
    """The generator a shifted sample draws from (see the module docstring)."""
    _check(shift)
    key = [world.config.seed, SPLITS[split], index, 0, _SHIFT_STREAM, SHIFTS.index(shift)]
    return np.random.default_rng(key)


def shift_image(sample: Sample, shift: str, rng: np.random.Generator) -> Image.Image:
    """``sample``'s scene drawn with ``shift`` (a :data:`SHIFTS` entry), drawing from ``rng``."""
    _check(shift)
    attrs = sample.attributes
    fill = object_fill(sample.image, sample.mask, COLOUR_RGB[attrs["colour"]])
    if shift == "background":
        return draw_on_new_background(rng, sample.mask, fill)
    if shift == "texture":
        return draw_textured(rng, sample.mask, fill, attrs["background"])
    if shift == "outline":
        return draw_outline(rng, sample.mask, fill, attrs["background"])
    if shift == "noise":
        return add_noise(rng, sample.image)
    if shift == "colour":
        return rotate_hue(rng, sample.image)
    return draw_sketch(rng, sample.mask)


def shifted_sample(world: SyntheticWorld, split: str, index: int, shift: str) -> Sample:
    """Sample ``index`` of ``split`` with its image drawn by ``shift``; caption, attributes and mask unchanged."""
    sample = world.sample(split, index)
    image = shift_image(sample, shift, shift_rng(world, split, index, shift))
    return dataclasses.replace(sample, image=image)


def shifted_task(world: SyntheticWorld, task: ZeroShotTask, shift: str) -> ZeroShotTask:
    """``task`` (from ``world.zeroshot_tasks``) with every image drawn by ``shift``: same scenes, labels and prompts.

    Raises:
        ValueError: For an unknown shift, or a shift that recolours the objects (:data:`RECOLOURING`) on a task whose
            labels name colours.
    """
    _check(shift)
    if shift in RECOLOURING and task.name in ("colour", "composition"):
        raise ValueError(f"shift {shift!r} changes the objects' colours, so the {task.name} task's labels would not "
                         f"hold; use it with the shape or count task")
    images = [shifted_sample(world, task.split, i, shift).image for i in task.indices]
    return dataclasses.replace(task, images=images)


def _write(root: Path, task: ZeroShotTask) -> int:
    for name in task.classnames:  # every class folder, even one a small split draws no image of
        (root / name.replace(" ", "_")).mkdir(parents=True, exist_ok=True)
    for i, (image, label) in enumerate(zip(task.images, task.labels, strict=True)):
        image.save(root / task.classnames[label].replace(" ", "_") / f"{i:05d}.png")
    return len(task.images)


def write_shift_folders(root: str | Path, world: SyntheticWorld | None = None, size: int = 500, task: str = "shape",
                        shifts: tuple[str, ...] = SHIFTS, language: str = "en",
                        train_size: int | None = None) -> dict[str, int]:
    """One zero-shot task with its shifted copies as class folders, so ``clipforge eval robustness`` runs on them.

    Writes ``root/train/`` (the world's ``val`` split: the in-distribution training data of a linear probe),
    ``root/id/`` (``test``), ``root/<shift>/`` for each shift (the same ``test`` scenes, shifted), each
    ``<class>/<i>.png`` with spaces in class names as underscores, and ``root/templates.txt`` (the task's prompts)::

        clipforge eval robustness --model runs/quickstart/final --id root/id --templates root/templates.txt \\
            --shift outline=root/outline --shift sketch=root/sketch --linear-probe --train-data root/train

    Args:
        root: The output folder.
        world: The world (the default 64-px world, seed 0, when ``None``).
        size: Test images per set.
        task: ``shape``, ``colour``, ``count`` or ``composition``.
        shifts: Which shifts to write.
        language: Of the class names and templates.
        train_size: Images in ``train/`` (``size`` when ``None``).

    Returns:
        Images written per folder.
    """
    world = world if world is not None else SyntheticWorld()
    root = Path(root)
    written = {}
    for split, folder, n in (("val", "train", train_size or size), ("test", "id", size)):
        tasks = {t.name: t for t in world.zeroshot_tasks(n, language=language, split=split)}
        if task not in tasks:
            raise ValueError(f"task must be one of {sorted(tasks)}, got {task!r}")
        written[folder] = _write(root / folder, tasks[task])
        if folder == "id":
            for shift in shifts:
                written[shift] = _write(root / shift, shifted_task(world, tasks[task], shift))
            (root / "templates.txt").write_text("\n".join(tasks[task].templates) + "\n", encoding="utf-8")
    return written


__all__ = ["RECOLOURING", "SHIFTS", "shift_image", "shift_rng", "shifted_sample", "shifted_task",
           "write_shift_folders"]
