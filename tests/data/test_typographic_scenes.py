"""Typographic scenes: a word on a paper label in the synthetic world's images, switched on by
``WorldConfig.typographic``; off, the world is the one the golden digests pin (tests/data/test_synthetic_golden.py)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from clipforge.config import ConfigError, from_dict
from clipforge.data.synthetic import SHAPES, SyntheticDataConfig, SyntheticWorld, WorldConfig
from clipforge.data.synthetic.config import TypographicConfig
from clipforge.data.synthetic.typographic import BACKGROUND, INK, mention, word_ink
from clipforge.train import load_config, parse_overrides

N = 120


def pixels(world: SyntheticWorld, split: str, index: int) -> np.ndarray:
    return np.asarray(world.sample(split, index).image, dtype=np.uint8)


def test_off_is_the_plain_world_byte_for_byte() -> None:
    plain = SyntheticWorld(WorldConfig(contrast_group=4))
    off = SyntheticWorld(WorldConfig(contrast_group=4, typographic=None))
    assert WorldConfig().typographic is None and SyntheticDataConfig().typographic is None
    for split in ("train", "test"):
        for i in range(24):
            a, b = plain.sample(split, i), off.sample(split, i)
            assert a.image.tobytes() == b.image.tobytes() and a.caption == b.caption
            assert a.attributes == b.attributes and "text" not in a.attributes
            assert a.mask.tobytes() == b.mask.tobytes()


def test_on_adds_labels_and_changes_nothing_else() -> None:
    config = TypographicConfig(fraction=0.5, own_name_fraction=0.6)
    plain = SyntheticWorld(WorldConfig(seed=3, contrast_group=4))
    typo = SyntheticWorld(WorldConfig(seed=3, contrast_group=4, typographic=config))
    words = []
    for i in range(N):
        a, b = plain.sample("train", i), typo.sample("train", i)
        assert a.caption == b.caption and a.mask.tobytes() == b.mask.tobytes()
        assert {k: v for k, v in b.attributes.items() if k != "text"} == a.attributes
        word = b.attributes["text"]
        words.append((word, a.attributes["shape"]))
        diff = np.any(pixels(plain, "train", i) != pixels(typo, "train", i), axis=-1)  # (H, W)
        if word is None:
            assert not diff.any()
            continue
        assert word in SHAPES
        ys, xs = np.nonzero(diff)
        h, w = word_ink(word).shape
        assert ys.max() - ys.min() < h + 2 and xs.max() - xs.min() < w + 2  # only inside one label box
        box = pixels(typo, "train", i)[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
        assert set(np.unique(box)) <= {BACKGROUND, INK} | set(np.unique(pixels(plain, "train", i)))
        assert (box == INK).all(axis=-1).sum() == word_ink(word).sum()  # every ink pixel of the word is drawn
    labelled = [(w, s) for w, s in words if w is not None]
    assert 0.35 < len(labelled) / N < 0.65
    own = sum(w == s for w, s in labelled) / len(labelled)
    assert 0.4 < own < 0.8
    assert any(w != s for w, s in labelled)  # attacks: another shape's name


def test_labels_are_deterministic_and_in_the_training_split_unless_asked() -> None:
    config = WorldConfig(typographic=TypographicConfig(fraction=1.0, own_name_fraction=0.0))
    plain, labelled = SyntheticWorld(WorldConfig()), SyntheticWorld(config)
    for i in range(10):
        s = labelled.sample("train", i)
        assert s.attributes["text"] is not None and s.attributes["text"] != s.attributes["shape"]
        for split in ("val", "test"):  # evaluations during training see the plain scenes
            a, b = plain.sample(split, i), labelled.sample(split, i)
            assert a.image.tobytes() == b.image.tobytes() and b.attributes == a.attributes
    everywhere = WorldConfig(typographic=TypographicConfig(fraction=1.0, splits=("train", "val", "test")))
    a, b = SyntheticWorld(everywhere), SyntheticWorld(everywhere)
    for i in range(10):
        assert a.sample("val", i).image.tobytes() == b.sample("val", i).image.tobytes()
        assert a.sample("test", i).attributes["text"] is not None


def test_the_label_covers_little_of_the_objects() -> None:
    """Of the candidate positions the one covering the least of the objects wins: on average well under the share
    a label placed anywhere would cover."""
    world = SyntheticWorld(WorldConfig(typographic=TypographicConfig(fraction=1.0, splits=("test",))))
    plain = SyntheticWorld(WorldConfig())
    covered = []
    for i in range(40):
        diff = np.any(pixels(plain, "test", i) != pixels(world, "test", i), axis=-1)
        mask = world.sample("test", i).mask > 127
        covered.append((diff & mask).sum() / max(1, mask.sum()))
    assert np.mean(covered) < 0.1


def test_captions_quote_the_label_when_asked() -> None:
    assert mention("2 red stars.", "circle", "en") == '2 red stars labelled "circle".'
    assert mention("a photo of a ring", "star", "en") == 'a photo of a ring labelled "star"'
    assert mention("黄色い四角が二つ。", "star", "ja") == "黄色い四角が二つ「star」と書いてある。"
    assert mention("Синий треугольник", "ring", "ru") == "Синий треугольник с надписью «ring»"
    config = WorldConfig(languages=("en", "ru", "ja"), typographic=TypographicConfig(0.5, 0.5, 0.5))
    plain, typo = SyntheticWorld(dataclasses.replace(config, typographic=None)), SyntheticWorld(config)
    quoted = 0
    for i in range(N):
        a, b = plain.sample("train", i), typo.sample("train", i)
        word = b.attributes["text"]
        if word is None or b.caption == a.caption:
            assert b.caption == a.caption
            continue
        quoted += 1
        assert b.caption == mention(a.caption, word, b.attributes["language"])
    assert 0.15 * N < quoted < 0.35 * N


@pytest.mark.parametrize(("value", "message"), [
    ({"fraction": 0.0}, r"data\.typographic\.fraction must be a number in \(0, 1\]"),
    ({"fraction": 1.5}, r"data\.typographic\.fraction"),
    ({"own_name_fraction": -0.1}, r"data\.typographic\.own_name_fraction must be a number in \[0, 1\]"),
    ({"mention_fraction": 2}, r"data\.typographic\.mention_fraction must be a number in \[0, 1\]"),
    ({"splits": ["train", "dev"]}, r"data\.typographic\.splits must be a non-empty list of distinct splits"),
    ({"splits": []}, r"data\.typographic\.splits must be"),
    ({"fractoin": 0.5}, r"unknown field 'fractoin' \(did you mean 'fraction'\?\)"),
])
def test_bad_typographic_fields_are_named(value: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        from_dict(SyntheticDataConfig, {"typographic": value}, "data")


def test_the_train_config_switches_it_on() -> None:
    config = load_config(None, parse_overrides(["data.typographic.fraction=0.25",
                                                "data.typographic.own_name_fraction=1"]))
    assert config.data.typographic == TypographicConfig(0.25, 1.0, 0.0, ("train",))  # type: ignore[union-attr]
    world = config.data.world_config(64)  # type: ignore[union-attr]
    assert world.typographic == TypographicConfig(0.25, 1.0)
    assert dataclasses.replace(world, typographic=None) == WorldConfig()
    both = load_config(None, parse_overrides(["data.typographic.splits=[train, val]"]))
    assert both.data.typographic.splits == ("train", "val")  # type: ignore[union-attr]
    with pytest.raises(ConfigError, match="world.typographic must be a mapping"):
        WorldConfig(typographic={"fraction": 0.5})  # type: ignore[arg-type]
