"""The one config machinery: strict dict → dataclass, dotted overrides, YAML, and back to plain data.

Every config in clipforge (models, training, the renderer, the synthetic world, VQA) is a frozen dataclass
built through ``from_dict``: unknown keys are errors with a "did you mean", values are checked against the
field's annotation (no silent coercion; NaN and infinities are refused), and ``__post_init__`` checks shapes
and ranges only. Anything that touches the file system or loads a file is a separate, explicit step of the
code that uses the config, so a config can be built, printed and compared without I/O.

    from clipforge.config import from_dict, load_yaml, parse_overrides, apply_overrides

    data = apply_overrides(load_yaml("run.yaml"), parse_overrides(["optim.lr=1e-3"]))
    config = from_dict(TrainConfig, data, "config")

Limits on what a config may hold (outside input is bounded before any work is done on it; each is a
``ConfigError`` naming the field or file):

- ``MAX_DEPTH`` (32): mappings and lists nested deeper than this;
- ``MAX_STRING_LENGTH`` (4,096 characters): any string, key or value;
- ``MAX_ITEMS`` (1,000,000): values in one config, counting repeats (a YAML alias expands every time it is used);
- ``MAX_INT`` (2**63 - 1): the magnitude of an integer field;
- ``MAX_FILE_BYTES`` (16 MiB): a YAML or JSON config file read by ``load_yaml`` / ``read_config_text``.

Every error that quotes a value cuts it to 80 characters (``shorten``).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import reprlib
import types
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import yaml

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")  # a dataclass

MAX_DEPTH = 32
MAX_STRING_LENGTH = 4096
MAX_ITEMS = 1_000_000
MAX_INT = 2**63 - 1
MAX_FILE_BYTES = 16 * 2**20


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
            raise ConfigError(f"{where}: expected one of {list(args)}, got {shorten(value)}")
        return value
    if origin in (typing.Union, types.UnionType):
        kinds = {_kind(a): a for a in args if isinstance(a, type) and dataclasses.is_dataclass(a)}
        if isinstance(value, dict) and len(kinds) > 1 and None not in kinds:  # a tagged union: dispatch on kind
            kind = value.get("kind", next(iter(kinds)))
            if not isinstance(kind, str) or kind not in kinds:
                raise ConfigError(f"{where}.kind: expected one of {list(kinds)}, got {shorten(kind)}")
            return from_dict(kinds[kind], value, where)
        if isinstance(value, dict) and len(kinds) == 1:  # ``Section | None`` given a mapping: the section's own error
            return from_dict(next(iter(kinds.values())), value, where)
        for arg in args:
            try:
                return _check_type(value, arg, where)
            except ConfigError:
                pass
        raise ConfigError(f"{where}: {shorten(value)} matches none of {annotation}")
    if annotation is type(None):
        if value is not None:
            raise ConfigError(f"{where}: expected None, got {shorten(value)}")
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
            raise ConfigError(f"{where}: expected a finite number, got {shorten(value)}")
        return float(value)
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {type(value).__name__} {shorten(value)}")
        if abs(value) > MAX_INT:
            raise ConfigError(f"{where}: {shorten(value)} is out of range (at most {MAX_INT:,} in magnitude)")
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
        raise ConfigError(f"{where}: expected {annotation.__name__}, got {type(value).__name__} {shorten(value)}")
    return value


def shorten(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters, so an error never echoes a huge value whole.

    Bounded in time and depth however large or deeply nested ``value`` is: strings are cut before ``repr``,
    containers are shown a few items and levels deep.
    """
    if isinstance(value, str | bytes) and len(value) > limit:
        return f"{value[:limit]!r}… ({len(value):,} characters)"
    text = _REPR.repr(value)
    return text if len(text) <= limit else f"{text[:limit]}…"


def _clip(text: str, limit: int = 200) -> str:
    """Plain ``text`` (a message or a name, not quoted) cut to ``limit`` characters."""
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text):,} characters)"


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlong = 3, 80, 80, 80
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = _REPR.maxfrozenset = 8


def _check_bounds(data: Any, where: str) -> None:
    """Raises ``ConfigError`` when ``data`` nests deeper than ``MAX_DEPTH``, holds a string longer than
    ``MAX_STRING_LENGTH`` or more than ``MAX_ITEMS`` values (walked iteratively: no recursion on outside input)."""
    stack: list[tuple[Any, str, int]] = [(data, where, 0)]
    seen = 0
    while stack:
        value, at, depth = stack.pop()
        seen += 1
        if seen > MAX_ITEMS:
            raise ConfigError(f"{where}: more than {MAX_ITEMS:,} values (a YAML alias counts each time it is used)")
        if isinstance(value, str):
            if len(value) > MAX_STRING_LENGTH:
                raise ConfigError(f"{at}: a string of {len(value):,} characters, longer than the limit of "
                                  f"{MAX_STRING_LENGTH:,}: {shorten(value)}")
        elif isinstance(value, dict | list | tuple | set | frozenset):
            if depth >= MAX_DEPTH:
                raise ConfigError(f"{at}: nested deeper than {MAX_DEPTH} levels")
            if isinstance(value, dict):
                for key, item in value.items():
                    if isinstance(key, str) and len(key) > MAX_STRING_LENGTH:
                        raise ConfigError(f"{at}: a key of {len(key):,} characters, longer than the limit of "
                                          f"{MAX_STRING_LENGTH:,}: {shorten(key)}")
                    stack.append((item, f"{at}.{shorten(key, 40) if not isinstance(key, str) else key[:40]}",
                                  depth + 1))
            else:
                stack.extend((item, f"{at}[{i}]", depth + 1) for i, item in enumerate(value))


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
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__} {shorten(data)}")
    _check_bounds(data, where)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    not_names = [k for k in data if not isinstance(k, str)]
    if not_names:
        bad = not_names[0]
        raise ConfigError(f"{where}: field names are strings, got {type(bad).__name__} {shorten(bad)}")
    unknown = sorted(set(data) - set(fields))
    if unknown:
        suggestion = closest(unknown[0], list(fields)) if len(unknown[0]) <= 100 else None
        hint = f" (did you mean {suggestion!r}?)" if suggestion else ""
        raise ConfigError(f"{where}: unknown field {shorten(unknown[0])}{hint}; known fields: {sorted(fields)}")
    kwargs = {name: _check_type(value, hints[name], f"{where}.{name}") for name, value in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as e:  # a required field is missing
        raise ConfigError(f"{where}: {_clip(str(e))}") from None


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
            raise ConfigError(f"{where}: unknown field {shorten('.'.join(path))}")
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
        except ConfigError as e:
            raise ConfigError(f"override {_clip(key.strip(), 80)}: {shorten(value)} is not a valid YAML value ({e})"
                              ) from None
    return out


def parse_value(text: str) -> Any:
    """A YAML scalar or list, with YAML 1.1's gap filled: ``1e-3`` is a number, not a string.

    Raises:
        ConfigError: ``text`` is not valid YAML (with the parser's one-line reason), or is nested deeper than
            ``MAX_DEPTH``, or holds too long a string (the limits of ``from_dict``).
    """
    value = _safe_load(text, "YAML") if text.strip() else None
    _check_bounds(value, "value")
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
            raise ConfigError(f"{where} {shorten(key)}: {shorten(part)} is not a mapping")
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
    try:
        data = _safe_load(read_config_text(path), f"{path}: not valid YAML") or {}
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such config file") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def read_config_text(path: str | Path, limit: int = MAX_FILE_BYTES) -> str:
    """The text of a (YAML or JSON) config file, refused before reading when it is larger than ``limit`` bytes.

    Raises:
        FileNotFoundError: ``path`` is not a file.
        ConfigError: the file is larger than ``limit`` or not UTF-8 (naming it).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    size = path.stat().st_size
    if size > limit:
        raise ConfigError(f"{path}: {size:,} bytes, more than a config file may hold ({limit:,})")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a UTF-8 text file") from None


def _safe_load(text: str, what: str) -> Any:
    """``yaml.safe_load``, with every way it fails on hostile text a one-line ``ConfigError`` (PyYAML raises
    ValueError, AttributeError, RecursionError … as well as YAMLError from its constructors)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{what}{where}: {_clip(str(problem))}") from None
    except RecursionError:
        raise ConfigError(f"{what}: nested too deeply") from None
    except Exception as e:  # the constructors' own errors on malformed tagged scalars
        raise ConfigError(f"{what}: {type(e).__name__}: {_clip(str(e))}") from None


def save_yaml(config: Any, path: str | Path) -> None:
    """Writes a dataclass config (or a mapping) as YAML, fields in declaration order."""
    data = to_dict(config) if dataclasses.is_dataclass(config) else config
    Path(path).write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
