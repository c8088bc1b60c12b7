"""Fuzzing the config machinery (``clipforge.config``) and the model-size check (``clipforge.models.size``).

Whatever text, YAML bytes or JSON-like data comes in, the loaders either return a config or raise their documented
error (``ConfigError``; ``FileNotFoundError`` for a missing file), never anything else; a model config that would
not fit the size limits is refused before anything is built. Saved cases under ``regressions/config/`` replay on
every run: ``*.json`` model configs (``model_config_from_dict`` + ``build_model``), ``*.yaml`` training configs
(``load_yaml`` + ``from_dict``), ``*.txt`` override lines (``parse_overrides``); each must be refused with a
``ConfigError``.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from clipforge.config import (
    MAX_DEPTH,
    MAX_STRING_LENGTH,
    ConfigError,
    apply_overrides,
    from_dict,
    load_yaml,
    parse_overrides,
    parse_value,
    shorten,
    to_dict,
)
from clipforge.models import factory
from clipforge.models.config import CLIPConfig, CLIPPOConfig, model_config_from_dict
from clipforge.models.factory import build_config, build_model
from clipforge.models.presets import list_presets
from clipforge.models.size import MAX_ACTIVATION_BYTES, MAX_PARAMS, activation_bytes, parameter_count
from clipforge.train.config import TrainConfig
from conftest import regression_cases

DOCUMENTED = (ConfigError,)

scalars = (st.none() | st.booleans() | st.integers() | st.integers(min_value=-(2**70), max_value=2**70)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20)
           | st.sampled_from(["vit", "resnet", "clip", "clippo", "gelu", "cls", "map", "kind", "synthetic", "shards"]))
json_like = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                         | st.dictionaries(st.text(max_size=12) | st.sampled_from(["vision", "text", "kind", "width",
                                                                                  "layers", "model", "data"]),
                                           inner, max_size=4), max_leaves=25)
dotted_keys = st.lists(st.text(alphabet="abcdefghijklmnopqrstuvwxyz_.0", min_size=1, max_size=10), max_size=3).map(
    ".".join).filter(bool) | st.sampled_from(["vision.width", "text.layers", "optim.lr", "data.kind", "model",
                                              "vision", "embed_dim", "steps", "model_overrides.vision.width"])


@contextmanager
def nothing_is_built() -> Iterator[None]:
    """Makes building a model an error, so a test can show the size check refused it first."""
    def never(config: Any) -> None:
        raise AssertionError(f"a model was built from {shorten(config)}")

    saved = dict(factory.MODEL_CLASSES)
    factory.MODEL_CLASSES.update(dict.fromkeys(saved, never))  # every family, so a new one cannot slip by
    try:
        yield
    finally:
        factory.MODEL_CLASSES.update(saved)


def mutate(data: Any, path: list[Any], value: Any) -> Any:
    """``data`` with the value at ``path`` (keys chosen modulo what exists) replaced by ``value``."""
    if not path or not isinstance(data, dict | list) or not data:
        return value
    if isinstance(data, dict):
        key = sorted(data)[path[0] % len(data)]
        return {**data, key: mutate(data[key], path[1:], value)}
    i = path[0] % len(data)
    return [*data[:i], mutate(data[i], path[1:], value), *data[i + 1:]]


huge_ints = st.sampled_from([65536, 10**6, 10**9, 10**12, 2**62, 2**63, 2**64, -1, 0])
model_configs = st.builds(
    mutate, st.sampled_from(list_presets()).map(lambda name: to_dict(build_config(name))),
    st.lists(st.integers(min_value=0, max_value=20), min_size=1, max_size=3), json_like | huge_ints)


@given(st.lists(st.text(max_size=40) | st.builds("{}={}".format, dotted_keys, st.text(max_size=30)), max_size=4))
@example(["a=2001-02-30"])
@example(["a=" + "[" * 5000])
@example(["a=&x [*x]"])
@example(["a=!!timestamp x"])
@example(["a=!!python/object:os.system x"])
@example(["steps=" + "9" * 5000])
@example(["a=" + "x" * 10_000])
def test_parse_overrides_raises_only_config_errors(items: list[str]) -> None:
    try:
        overrides = parse_overrides(items)
    except DOCUMENTED:
        return
    assert all(isinstance(k, str) for k in overrides)


@given(st.text(max_size=60))
@example("[" * 10_000 + "]" * 10_000)
@example("{a: " * 40 + "1" + "}" * 40)
@example("- !!float abc")
@example("!!int 0xzz")
def test_parse_value_raises_only_config_errors(text: str) -> None:
    with suppress(DOCUMENTED):
        parse_value(text)


@given(st.sampled_from([CLIPConfig, CLIPPOConfig, TrainConfig]), json_like)
@example(CLIPConfig, {"vision": {"kind": ["vit"]}})
@example(CLIPConfig, {1: 2, None: 3})
@example(CLIPConfig, [1, 2])
@example(TrainConfig, {"data": {"kind": {"a": 1}}})
@example(TrainConfig, {"model": "x" * (MAX_STRING_LENGTH + 1)})
@example(TrainConfig, {"x" * 100_000: 1})
def test_from_dict_raises_only_config_errors(cls: type, data: Any) -> None:
    with suppress(DOCUMENTED):
        from_dict(cls, data)


@given(model_configs)
@example({"family": ["clip"]})
@example({"family": "clippo", "render": {"image_size": "x" * 10_000}})
@example({"vision": {"mlp_ratio": 1e308}})
def test_model_configs_are_checked_for_size_before_anything_is_built(data: Any) -> None:
    try:
        config = model_config_from_dict(data)
    except DOCUMENTED:
        return
    try:
        too_big = parameter_count(config) > MAX_PARAMS or activation_bytes(config) > MAX_ACTIVATION_BYTES
    except DOCUMENTED:  # an MLP width that is not finite (mlp_ratio near the float limit)
        too_big = True
    with nothing_is_built():
        try:
            build_model(config)
        except DOCUMENTED:
            assert too_big
            return
        except AssertionError:  # within the limits the model is built (here: the stand-in refuses)
            assert not too_big


@given(json_like.filter(lambda d: isinstance(d, dict)), st.dictionaries(dotted_keys, json_like, max_size=4))
@example({"a": 1}, {"a.b": 2})
@example({}, {"x" * 10_000: 1})
@example({"data": {"kind": "shards", "urls": "x"}}, {"data.kind": "synthetic"})
def test_apply_overrides_then_from_dict_raise_only_config_errors(data: dict[str, Any],
                                                                 overrides: dict[str, Any]) -> None:
    with suppress(DOCUMENTED):
        from_dict(TrainConfig, apply_overrides(data, overrides, kinds={"data": "synthetic"}), "config")


yaml_bytes = st.binary(max_size=200) | st.text(max_size=200).map(str.encode) | json_like.map(
    lambda d: json.dumps(d, default=str).encode())


@given(yaml_bytes)
@example(b"a: 2001-02-30\n")
@example(b"[" * 10_000)
@example(b"a: &x [*x, *x]\nb: *x\n")
@example(b"\xff\xfe\x00")
@example(b"!!timestamp x")
@example(b"? [1]\n: 2\n")
@example(b"1: 2\n")
@example("".join(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]\n" for i in range(1, 10)).replace(
    "*l0", "x").encode())
def test_load_yaml_of_any_bytes_raises_only_config_errors(content: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "run.yaml"
        path.write_bytes(content)
        with suppress(DOCUMENTED):
            from_dict(TrainConfig, load_yaml(path), "config")


def test_load_yaml_of_a_missing_file_is_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such config file"):
        load_yaml(tmp_path / "nowhere.yaml")


def test_the_bounds_name_the_field_and_cut_the_value() -> None:
    deep: Any = 1
    for _ in range(MAX_DEPTH + 1):
        deep = {"a": deep}
    with pytest.raises(ConfigError, match=f"model_overrides.a.a.*nested deeper than {MAX_DEPTH} levels"):
        from_dict(TrainConfig, {"model_overrides": deep})
    with pytest.raises(ConfigError) as info:
        from_dict(TrainConfig, {"output_dir": "x" * 100_000_000})
    assert len(str(info.value)) < 300 and "output_dir: a string of 100,000,000 characters" in str(info.value)
    with pytest.raises(ConfigError) as info:
        from_dict(TrainConfig, {"precision": "y" * 1_000_000})
    assert len(str(info.value)) < 300 and "precision" in str(info.value)
    with pytest.raises(ConfigError, match="more than 1,000,000 values"):
        parse_value("".join(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]\n" for i in range(1, 9)
                            ).replace("*l0", "x"))
    with pytest.raises(ConfigError, match=r"override a: .*not a valid YAML value.*day is out of range"):
        parse_overrides(["a=2001-02-30"])
    with pytest.raises(ConfigError, match="field names are strings, got int 1"):
        from_dict(CLIPConfig, {1: 2})
    with pytest.raises(ConfigError,
                       match=r"model.family: expected one of \['clip', 'clippo', 'siglip'\], got \['clip'\]"):
        model_config_from_dict({"family": ["clip"]})


@pytest.mark.parametrize("case", regression_cases("config"), ids=lambda p: p.name)
def test_regression_cases_are_refused(case: Path) -> None:
    with nothing_is_built(), pytest.raises(ConfigError):
        if case.suffix == ".json":
            data = json.loads(case.read_text(encoding="utf-8"))
            build_model(model_config_from_dict(data.get("model", data)))
        elif case.suffix == ".yaml":
            from_dict(TrainConfig, load_yaml(case), "config")
        else:
            parse_overrides(case.read_text(encoding="utf-8").splitlines())
