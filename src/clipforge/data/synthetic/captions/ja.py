"""Japanese captions and zero-shot prompts: "水玉模様の背景に赤い円が三つある", "三つの赤い円の写真"."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from clipforge.data.synthetic.captions.common import finish, mentions, pick

SHAPE = {
    "circle": ("円", "丸"), "square": ("正方形", "四角"), "triangle": ("三角形",), "star": ("星", "星形"),
    "hexagon": ("六角形",), "cross": ("十字", "十字形"), "diamond": ("ひし形",), "ring": ("輪", "リング"),
}
GENERIC = "図形"
COLOUR = {
    "red": ("赤い", "赤色の"), "orange": ("オレンジ色の",), "yellow": ("黄色い", "黄色の"),
    "green": ("緑の", "緑色の"), "cyan": ("水色の",), "blue": ("青い", "青色の"), "purple": ("紫の", "紫色の"),
    "pink": ("ピンクの", "ピンク色の"), "white": ("白い",), "black": ("黒い",),
}
SIZE = {"small": ("小さい", "小さな"), "large": ("大きい", "大きな")}
COUNT = {1: ("一つ", "ひとつ", "1個"), 2: ("二つ", "ふたつ", "2個"), 3: ("三つ", "みっつ", "3個")}
POSITION = {
    "top left": ("左上",), "top": ("上", "上の方"), "top right": ("右上",), "left": ("左", "左側"),
    "centre": ("中央", "真ん中"), "right": ("右", "右側"), "bottom left": ("左下",), "bottom": ("下", "下の方"),
    "bottom right": ("右下",),
}
BACKGROUND = {
    "plain": ("無地の背景", "単色の背景"), "stripes": ("縞模様の背景", "ストライプの背景"),
    "dots": ("水玉模様の背景", "ドット柄の背景"), "checker": ("市松模様の背景", "チェッカー模様の背景"),
    "grid": ("方眼の背景", "格子模様の背景"), "noise": ("ざらざらした背景", "ノイズのある背景"),
}


def caption(attrs: dict[str, Any], rng: np.random.Generator) -> str:
    """One Japanese caption of a scene (``make_caption`` with ``language="ja"``)."""
    count = attrs["count"]
    say_colour, say_shape = mentions(rng)
    words = [pick(rng, SIZE[attrs["size"]])] if rng.random() < 0.6 else []
    words += [pick(rng, COLOUR[attrs["colour"]])] if say_colour else []
    noun_phrase = "".join([*words, pick(rng, SHAPE[attrs["shape"]]) if say_shape else GENERIC])
    number = pick(rng, COUNT[count])
    if rng.random() < 0.3:  # "三つの赤い円(の写真)"
        text = number + "の" + noun_phrase if count > 1 or rng.random() < 0.5 else noun_phrase
        return finish(rng, text + pick(rng, ("", "の写真", "の画像")), "。")
    place = pick(rng, BACKGROUND[attrs["background"]]) if rng.random() < 0.4 else ""
    if count == 1 and rng.random() < 0.5:
        place += ("の" if place else "") + pick(rng, POSITION[attrs["position"]])
    text = (place + "に" if place else "") + noun_phrase
    if count > 1 or rng.random() < 0.4:  # "赤い円が三つ(ある)"
        text += "が" + number + pick(rng, ("", "ある", "あります"))
    else:
        text += pick(rng, ("", "がある", "があります"))
    return finish(rng, text, "。")


def prompts(task: str, classes: Sequence[Any]) -> tuple[list[str], list[str]]:
    """Japanese class names (for ``classes``) and templates of a zero-shot task (``task_prompts``)."""
    if task == "shape":
        return [SHAPE[s][0] for s in classes], ["{}の写真", "{}", "{}の画像"]
    if task == "colour":
        return [COLOUR[c][0] for c in classes], ["{}図形", "{}図形の写真"]
    if task == "count":
        return [COUNT[c][0] + "の図形" for c in classes], ["{}", "{}の写真"]
    return [COLOUR[c][0] + SHAPE[s][0] for c, s in classes], ["{}の写真", "{}"]
