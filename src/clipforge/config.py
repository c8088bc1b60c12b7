"""The one config machinery: strict dict → dataclass, dotted overrides, YAML, and back to plain data.

Every config in clipforge (models, training, the renderer, the synthetic world, VQA) is a frozen dataclass
built through ``from_dict``: unknown keys are errors with a "did you mean", values are checked against the
field's annotation (no silent coercion; NaN and infinities are refused), and ``__post_init__`` checks shapes
and ranges only. Anything that touches the file system or loads a file is a separate, explicit step of the
code that uses the config, so a config can be built, printed and compared without I/O.

    from clipforge.config import from_dict, load_yaml, parse_overrides, apply_overrides

    data = apply_overrides(load_yaml("run.yaml"), parse_overrides(["optim.lr=1e-3"]))
    config = from_dict(TrainConfig, data, "config")
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import yaml

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")  # a dataclass

class ConfigError(ValueError):
    """A config field is unknown, missing or of the wrong type or value."""


def _check_type(value: Any, annotation: Any, where: str) -> Any:
    """Checks ``value`` against a (simple) type annotation and returns it, converted where lossless."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: expected one of {list(args)}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        kinds = {_kind(a): a for a in args if isinstance(a, type) and dataclasses.is_dataclass(a)}
        if isinstance(value, dict) and len(kinds) > 1 and None not in kinds:  # a tagged union: dispatch on kind
            kind = value.get("kind", next(iter(kinds)))
            if kind not in kinds:
                raise ConfigError(f"{where}.kind: expected one of {list(kinds)}, got {kind!r}")
            return from_dict(kinds[kind], value, where)
        for arg in args:
            try:
                return _check_type(value, arg, where)
            except ConfigError:
                pass
        raise ConfigError(f"{where}: {value!r} matches none of {annotation}")
    if annotation is type(None):
        if value is not None:
            raise ConfigError(f"{where}: expected None, got {value!r}")
        return value
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__} {shorten(value)}")
        return dict(value)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {shorten(value)}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_check_type(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}")
        return tuple(_check_type(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
        if isinstance(value, annotation):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        return from_dict(annotation, value, where)
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {type(value).__name__} {shorten(value)}")
        if not math.isfinite(value):
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return float(value)
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {type(value).__name__} {shorten(value)}")
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {type(value).__name__} {shorten(value)}")
        return value
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {type(value).__name__} {shorten(value)}")
        return value
    if isinstance(annotation, type) and not isinstance(value, annotation):
        raise ConfigError(f"{where}: expected {annotation.__name__}, got {type(value).__name__}")
    return value


def shorten(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters, so an error never echoes a huge value whole."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


def _kind(cls: type[DataclassInstance]) -> object:
    """The default of the dataclass's ``kind`` field (its tag in a tagged union), or ``None`` without one."""
    kind = cls.__dataclass_fields__.get("kind")
    return kind.default if kind is not None else None


def from_dict(cls: type[T], data: dict[str, Any], where: str | None = None) -> T:
    """Builds dataclass ``cls`` from a mapping, rejecting unknown keys and wrong types.

    Args:
        cls: A dataclass type.
        data: Field values; nested dataclass fields take nested mappings.
        where: Dotted prefix used in error messages.

    Raises:
        ConfigError: naming the offending field.
    """
    where = where or cls.__name__
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        suggestion = closest(unknown[0], list(fields))
        hint = f" (did you mean {suggestion!r}?)" if suggestion else ""
        raise ConfigError(f"{where}: unknown field {unknown[0]!r}{hint}; known fields: {sorted(fields)}")
    kwargs = {name: _check_type(value, hints[name], f"{where}.{name}") for name, value in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as e:  # a required field is missing
        raise ConfigError(f"{where}: {e}") from None


def replace(config: T, overrides: dict[str, Any], where: str | None = None) -> T:
    """Returns a copy of ``config`` with (possibly nested, dotted) overrides applied and validated.

    ``overrides`` keys may be plain field names or dotted paths (``"vision.width"``); nested mappings
    are merged into nested configs.
    """
    data = to_dict(config)
    for key, value in overrides.items():
        _set_dotted(data, key.split("."), value, where or type(config).__name__)
    return from_dict(type(config), data, where)


def _set_dotted(data: dict[str, Any], path: list[str], value: Any, where: str) -> None:
    head, rest = path[0], path[1:]
    if rest:
        if not isinstance(data.get(head), dict):
            raise ConfigError(f"{where}: unknown field {'.'.join(path)!r}")
        _set_dotted(data[head], rest, value, f"{where}.{head}")
    elif isinstance(value, dict) and isinstance(data.get(head), dict):
        for k, v in value.items():
            _set_dotted(data[head], [k], v, f"{where}.{head}")
    else:
        data[head] = value


def to_dict(config: Any) -> dict[str, Any]:
    """Converts a dataclass config to JSON-ready nested dicts (tuples become lists)."""

    def convert(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: convert(getattr(v, f.name)) for f in dataclasses.fields(v) if f.init}
        if isinstance(v, list | tuple):
            return [convert(x) for x in v]
        return v

    return convert(config)


def closest(name: str, candidates: list[str]) -> str | None:
    """The candidate most like ``name`` (for "did you mean"), or ``None``."""
    match = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    return match[0] if match else None


def check_positive(where: str, **values: float) -> None:
    """Raises ``ConfigError`` naming the first of ``values`` that is not positive (``where.name``)."""
    for name, value in values.items():
        if value <= 0:
            raise ConfigError(f"{where}.{name}: must be positive, got {value}")


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["optim.lr=1e-3", "lock=image"]`` → ``{"optim.lr": 0.001, "lock": "image"}`` (values parsed as YAML).

    Raises:
        ConfigError: an item is not ``key=value``, or its value is not valid YAML (naming the override).
    """
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {shorten(item)} is not of the form key=value")
        try:
            out[key.strip()] = parse_value(value)
        except yaml.YAMLError as e:
            reason = str(e).splitlines()[0]
            raise ConfigError(f"override {key.strip()}: {shorten(value)} is not a valid YAML value ({reason})"
                              ) from None
    return out


def parse_value(text: str) -> Any:
    """A YAML scalar or list, with YAML 1.1's gap filled: ``1e-3`` is a number, not a string."""
    value = yaml.safe_load(text) if text.strip() else None
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def apply_overrides(data: dict[str, Any], overrides: dict[str, Any], where: str = "override",
                    kinds: dict[str, str] | None = None) -> dict[str, Any]:
    """Sets each dotted key of ``overrides`` in the nested mapping ``data`` (in place) and returns ``data``.

    Intermediate mappings are created as needed.

    Args:
        data: The nested mapping (a YAML file's content).
        overrides: Dotted keys to values (``parse_overrides``).
        where: Names the overrides in errors.
        kinds: Sections that are tagged unions, with their default kind (``{"data": "synthetic"}``): an
            override of ``<section>.kind`` to another kind starts that section from the new kind's defaults,
            since the old kind's fields would not fit it.

    Raises:
        ConfigError: a key's prefix names a value that is not a mapping.
    """
    kinds = kinds or {}
    for key, value in overrides.items():
        path = key.split(".")
        section = ".".join(path[:-1])
        if path[-1] == "kind" and section in kinds:
            node = _node(data, path[:-1], key, where)
            if value != node.get("kind", kinds[section]):
                node.clear()  # another kind starts from its own defaults
        _node(data, path[:-1], key, where)[path[-1]] = value
    return data


def _node(data: dict[str, Any], path: list[str], key: str, where: str) -> dict[str, Any]:
    node = data
    for part in path:
        if not isinstance(node.setdefault(part, {}), dict):
            raise ConfigError(f"{where} {key}: {part!r} is not a mapping")
        node = node[part]
    return node


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Reads a YAML file holding a mapping (an empty file is an empty mapping).

    Raises:
        FileNotFoundError: ``path`` does not exist (naming it).
        ConfigError: the file is not valid YAML (a one-line message with the line and column), not UTF-8, or
            not a mapping at the top level (naming the file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such config file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a UTF-8 text file") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def save_yaml(config: Any, path: str | Path) -> None:
    """Writes a dataclass config (or a mapping) as YAML, fields in declaration order."""
    data = to_dict(config) if dataclasses.is_dataclass(config) else config
    Path(path).write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
