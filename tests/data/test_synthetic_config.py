"""The synthetic world's configs: one definition of the world's fields and bounds, shared by WorldConfig and the
train config's ``data:`` section (SyntheticDataConfig)."""

from __future__ import annotations

import dataclasses

import pytest

from clipforge.config import ConfigError, from_dict, parse_overrides
from clipforge.data.synthetic import SyntheticDataConfig, WorldConfig, WorldFields
from clipforge.train import load_config
from clipforge.train.data import world_config

WORLD_FIELDS = ("seed", "image_size", "languages", "holdout_fraction", "max_objects", "contrast_group", "typographic")
BAD_VALUES = [
    ("seed", -1),
    ("image_size", 8),
    ("image_size", 2048),
    ("languages", ()),
    ("languages", ("en", "de")),
    ("languages", ("en", "en")),
    ("holdout_fraction", 0.9),
    ("holdout_fraction", -0.1),
    ("max_objects", 0),
    ("max_objects", 4),
    ("contrast_group", 0),
    ("contrast_group", 9),
]


def test_the_world_fields_are_defined_once() -> None:
    assert tuple(f.name for f in dataclasses.fields(WorldFields)) == WORLD_FIELDS
    world = {f.name: f for f in dataclasses.fields(WorldConfig)}
    data = {f.name: f for f in dataclasses.fields(SyntheticDataConfig)}
    assert tuple(world) == WORLD_FIELDS
    for name in WORLD_FIELDS:
        if name != "image_size":  # the train side renders at the model's input size unless told otherwise
            assert data[name].default == world[name].default, name
    assert world["image_size"].default == 64 and data["image_size"].default is None


def test_the_data_section_keeps_its_yaml_keys() -> None:
    keys = {f.name for f in dataclasses.fields(SyntheticDataConfig)}
    assert keys == {"kind", "seed", "image_size", "languages", "holdout_fraction", "max_objects", "train_size",
                    "contrast_group", "contrast_start", "augment", "num_workers", "typographic"}
    from clipforge.data.config import SyntheticDataConfig as reexported

    assert reexported is SyntheticDataConfig


@pytest.mark.parametrize(("field", "value"), BAD_VALUES)
def test_one_bound_per_field_on_both_sides(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=rf"^world\.{field} must be"):
        WorldConfig(**{field: value})
    with pytest.raises(ConfigError, match=rf"^data\.{field} must be"):
        from_dict(SyntheticDataConfig, {field: list(value) if isinstance(value, tuple) else value}, "data")


def test_bounds_reach_the_train_config() -> None:
    with pytest.raises(ConfigError, match="data.max_objects must be in 1..3"):
        load_config(None, parse_overrides(["data.max_objects=4"]))
    with pytest.raises(ConfigError, match="data.languages must be"):
        load_config(None, parse_overrides(["data.languages=[en, de]"]))


def test_image_size_may_be_left_to_the_model_on_the_train_side_only() -> None:
    assert SyntheticDataConfig(image_size=None).image_size is None
    with pytest.raises(ConfigError, match="world.image_size"):
        WorldConfig(image_size=None)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="world.languages"):
        WorldConfig(languages=["en"])  # type: ignore[arg-type]  # a tuple, so that configs hash and compare


def test_world_config_maps_every_world_field() -> None:
    data = SyntheticDataConfig(seed=5, languages=("ru", "ja"), holdout_fraction=0.3, max_objects=2,
                               contrast_group=4, train_size=400)
    expected = WorldConfig(seed=5, image_size=48, languages=("ru", "ja"), holdout_fraction=0.3, max_objects=2,
                           contrast_group=4)
    assert world_config(data, 48) == data.world_config(48) == expected
    assert world_config(dataclasses.replace(data, image_size=96), 48) == dataclasses.replace(expected, image_size=96)
    with pytest.raises(ConfigError, match="world.image_size"):
        data.world_config(8)


def test_train_side_fields_are_checked() -> None:
    for overrides, message in [
        ({"train_size": 0}, "data.train_size: must be positive"),
        ({"train_size": 30, "contrast_group": 4}, "multiple of data.contrast_group"),
        ({"contrast_start": -1}, "data.contrast_start must be ≥ 0"),
        ({"num_workers": -1}, "data.num_workers must be >= 0"),
    ]:
        with pytest.raises(ConfigError, match=message):
            SyntheticDataConfig(**overrides)
