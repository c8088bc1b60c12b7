"""Which data source a config names, answered in one place for training, evaluation, embedding and
``clipforge data shards``.

- :func:`source_config` turns a path (what a command line gives) into a data config: ``synthetic``; a ``.tar``
  file, a brace range or glob of shards, or a folder holding ``*.tar`` files → ``shards``; another folder →
  ``folder``; a ``.csv``/``.txt``, ``.tsv``/``.tab`` or ``.parquet``/``.pq`` file → that table.
- :func:`check_source` does the checks that touch the file system (the path exists, the table has the columns,
  the shard globs expand), raising ``ConfigError`` naming the field; a config itself is inert data.
- :func:`build_source` checks, then returns the reader: the synthetic world's training split, a
  :class:`~clipforge.data.tables.TablePairs`, a :class:`~clipforge.data.folders.FolderPairs` or
  :class:`~clipforge.data.folders.ClassFolder`, or a :class:`~clipforge.data.shards.ShardSource`.

Every reader decodes through ``clipforge.data.decode`` under the config's ``decode`` limits, and every bad
sample surfaces as a ``BadSample`` with one of the reasons listed there.
"""

from __future__ import annotations

import dataclasses
import glob
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from clipforge.config import ConfigError
from clipforge.data.config import (
    CSVDataConfig,
    DataConfig,
    FolderDataConfig,
    ParquetDataConfig,
    ShardsDataConfig,
    SyntheticDataConfig,
    TSVDataConfig,
)
from clipforge.data.decode import draft_size
from clipforge.data.tables import EXTENSIONS, FORMATS, table_columns

KINDS = ("synthetic", *FORMATS, "folder", "shards")
CONFIGS: dict[str, type] = {"synthetic": SyntheticDataConfig, "csv": CSVDataConfig, "tsv": TSVDataConfig,
                            "parquet": ParquetDataConfig, "folder": FolderDataConfig, "shards": ShardsDataConfig}


def source_kind(path: str) -> str:
    """The kind of data ``path`` holds (rules in the module docstring).

    Raises:
        FileNotFoundError: nothing exists at ``path`` (and it is neither ``synthetic`` nor a shard pattern).
        ValueError: a file of no known kind.
    """
    if path == "synthetic":
        return "synthetic"
    p = Path(path)
    if p.is_dir():
        return "shards" if any(f.is_file() for f in p.glob("*.tar")) else "folder"
    if p.is_file():
        suffix = p.suffix.lower()
        if suffix == ".tar":
            return "shards"
        if suffix in EXTENSIONS:
            return EXTENSIONS[suffix]
        raise ValueError(f"{path}: not a folder, a table ({', '.join(EXTENSIONS)}) or a .tar shard")
    if "::" in path or glob.has_magic(path) or ("{" in path and ".." in path):
        return "shards"
    raise FileNotFoundError(f"no such file or folder: {path}")


def source_config(path: str, kind: str = "auto", **fields: Any) -> DataConfig:
    """The data config of ``path``: of ``kind``, or (``auto``) of the kind :func:`source_kind` finds.

    Args:
        path: The data (``synthetic`` for the synthetic world).
        kind: One of :data:`KINDS`, or ``auto``.
        **fields: Config fields (``image_key``, ``layout``, ``decode`` …); those the kind lacks are left out, so
            a command line's table flags do no harm when the path is a folder.

    Raises:
        FileNotFoundError: nothing exists at ``path`` (``auto``).
        ValueError: a file of no known kind (``auto``), or an unknown ``kind``.
        ConfigError: a field out of its range.
    """
    kind = source_kind(path) if kind == "auto" else kind
    if kind not in CONFIGS:
        raise ValueError(f"data kind must be one of {KINDS} or auto, got {kind!r}")
    cls = CONFIGS[kind]
    names = {f.name for f in dataclasses.fields(cls)}
    where = {"shards": "urls", "synthetic": None}.get(kind, "path")
    values = {k: v for k, v in fields.items() if k in names}
    if where is not None:
        values[where] = path
    return cls(**values)


def check_source(config: DataConfig, names: Mapping[str, str] | None = None) -> None:
    """Checks what ``config`` names on disk: the table and its columns, the image root, the folder, the shards.

    Args:
        config: A data config.
        names: How the messages call each field (``{"path": "--data", "image_key": "--image-key"}``; ``""``
            is the section); the default is the train config's ``data.<field>``.

    Raises:
        ConfigError: naming the field and what was expected.
    """
    def name(field: str) -> str:
        default = f"data.{field}" if field else "data"
        return names.get(field, default) if names is not None else default

    if isinstance(config, CSVDataConfig):
        if not Path(config.path).is_file():
            raise ConfigError(f"{name('path')}: no such file: {config.path}")
        if config.image_root and not Path(config.image_root).is_dir():
            raise ConfigError(f"{name('image_root')}: no such folder: {config.image_root}")
        try:
            columns = table_columns(config.path, config.kind)
        except ImportError:
            raise ConfigError("data.kind=parquet needs pyarrow: pip install 'clipforge[parquet]'") from None
        text = "label_key" if config.label_key else "caption_key"
        missing = [c for c in (config.image_key, getattr(config, text)) if c not in columns]
        if missing:
            raise ConfigError(f"{name('')}: {config.path} has no column(s) {missing}; its columns: {columns} "
                              f"(set {name('image_key')} / {name(text)})")
    elif isinstance(config, FolderDataConfig):
        if not Path(config.path).is_dir():
            raise ConfigError(f"{name('path')}: a folder data source needs an existing folder, got {config.path!r}")
    elif isinstance(config, ShardsDataConfig):
        try:
            config.sources()
        except (FileNotFoundError, ValueError) as e:
            raise ConfigError(f"{name('urls')}: {e}") from None


def is_labelled(config: DataConfig) -> bool:
    """Whether ``config`` names class labels rather than captions (a class folder, a table's ``label_key``)."""
    return bool(getattr(config, "label_key", "")) or getattr(config, "layout", "captions") == "classes"


def build_source(config: DataConfig, image_size: int | None = None, names: Mapping[str, str] | None = None) -> Any:
    """The reader of the data ``config`` names, after :func:`check_source` (callers need not check first).

    Args:
        config: A data config.
        image_size: The model's input side. Images are then decoded at least this large (more for random
            crops: ``draft_size``) on their shorter side, reduced on decode where the format allows; ``None``
            decodes at full size (evaluation). The synthetic world renders at it unless its config names a size.
        names: How :func:`check_source`'s messages call each field (a command line's flag names).

    Returns:
        Indexable ``(PIL image, caption or label)`` items for the synthetic world, tables and folders (items
        of tables and folders may raise ``BadSample``); a ``ShardSource`` for tar shards.

    Raises:
        ConfigError: from :func:`check_source`.
    """
    check_source(config, names)
    if isinstance(config, SyntheticDataConfig):
        from clipforge.data.synthetic import SyntheticWorld

        return SyntheticWorld(config.world_config(image_size)).dataset("train", config.train_size)  # type: ignore[arg-type]
    min_size = draft_size(image_size, config.augment) if image_size is not None else None
    if isinstance(config, ShardsDataConfig):
        from clipforge.data.shards import ShardSource

        return ShardSource(config, min_size)
    if isinstance(config, FolderDataConfig):
        from clipforge.data.folders import ClassFolder, FolderPairs

        cls = ClassFolder if config.layout == "classes" else FolderPairs
        return cls(config.path, config.decode, min_size)
    from clipforge.data.tables import TablePairs

    return TablePairs(config.path, config.image_key, config.label_key or config.caption_key, config.image_root,
                      config.kind, config.decode, min_size)

