"""English captions and zero-shot prompts: "a photo of two small red stars on a dotted background"."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from clipforge.data.synthetic.captions.common import finish, mentions, pick

SHAPE = {
    "circle": ("circle", "circles"), "square": ("square", "squares"), "triangle": ("triangle", "triangles"),
    "star": ("star", "stars"), "hexagon": ("hexagon", "hexagons"), "cross": ("cross", "crosses"),
    "diamond": ("diamond", "diamonds"), "ring": ("ring", "rings"),
}  # (singular, plural)
GENERIC = (("shape", "shapes"), ("object", "objects"))
SIZE = {"small": ("small", "little", "tiny"), "large": ("large", "big", "huge")}
COUNT = {1: ("a", "one", "a single"), 2: ("two", "2", "a pair of"), 3: ("three", "3")}
POSITION = {
    "top left": ("in the top left", "in the upper left corner", "at the top left"),
    "top": ("at the top", "near the top", "at the top centre"),
    "top right": ("in the top right", "in the upper right corner", "at the top right"),
    "left": ("on the left", "on the left side", "at the left"),
    "centre": ("in the centre", "in the middle", "in the center"),
    "right": ("on the right", "on the right side", "at the right"),
    "bottom left": ("in the bottom left", "in the lower left corner", "at the bottom left"),
    "bottom": ("at the bottom", "near the bottom", "at the bottom centre"),
    "bottom right": ("in the bottom right", "in the lower right corner", "at the bottom right"),
}
BACKGROUND = {
    "plain": ("a plain background", "a blank background", "a flat grey background"),
    "stripes": ("a striped background", "a background of faint stripes", "a stripy background"),
    "dots": ("a dotted background", "a polka-dot background", "a background of faint dots"),
    "checker": ("a checkered background", "a chequered background", "a checkerboard background"),
    "grid": ("a grid background", "a background of thin grid lines", "graph paper"),
    "noise": ("a noisy background", "a grainy background", "a speckled background"),
}


def caption(attrs: dict[str, Any], rng: np.random.Generator) -> str:
    """One English caption of a scene (``make_caption`` with ``language="en"``)."""
    count, plural = attrs["count"], attrs["count"] > 1
    say_colour, say_shape = mentions(rng)
    noun = (SHAPE[attrs["shape"]] if say_shape else GENERIC[int(rng.integers(2))])[plural]
    words = [pick(rng, SIZE[attrs["size"]])] if rng.random() < 0.6 else []
    words += [attrs["colour"]] if say_colour else []
    determiner = pick(rng, COUNT[count])
    if determiner == "a" and (words[0] if words else noun)[0] in "aeiou":
        determiner = "an"
    text = " ".join([determiner, *words, noun])
    if not plural and rng.random() < 0.5:
        text += " " + pick(rng, POSITION[attrs["position"]])
    if rng.random() < 0.4:
        text += " " + pick(rng, ("on", "against")) + " " + pick(rng, BACKGROUND[attrs["background"]])
    there = "there are " if plural else "there is "
    prefix = pick(rng, ("", "", "a photo of ", "a picture of ", "an image of ", there))
    return finish(rng, prefix + text, ".")


def prompts(task: str, classes: Sequence[Any]) -> tuple[list[str], list[str]]:
    """English class names (for ``classes``) and templates of a zero-shot task (``task_prompts``)."""
    if task == "shape":
        return list(classes), ["a photo of a {}.", "a {}.", "a picture of a {}."]
    if task == "colour":
        return list(classes), ["{} shape.", "a photo of {} shapes.", "{} objects."]
    if task == "count":
        return [("one shape", "two shapes", "three shapes")[c - 1] for c in classes], ["a photo of {}.", "{}."]
    return [f"{c} {s}" for c, s in classes], ["a photo of one {}.", "one {}.", "{}."]
