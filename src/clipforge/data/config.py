"""The data-source configs: one frozen dataclass per kind (``synthetic``, ``csv``, ``tsv``, ``parquet``, ``folder``,
``shards``), chosen in a config by its ``kind`` field (``DataConfig``); ``CaptionsFromLabels`` turns a labelled
table or class folder into training captions (FLYP)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from clipforge.config import ConfigError
from clipforge.data.decode import IMAGE_FIELDS, DecodeLimits
from clipforge.data.shards import parse_sources, split_sources
from clipforge.data.synthetic.config import SyntheticDataConfig  # defined beside the world it configures
from clipforge.data.tables import CAPTION_KEY, IMAGE_KEY


def _check_decode(limits: DecodeLimits) -> None:
    try:
        limits.validate()
    except ValueError as e:
        raise ConfigError(f"data.decode: {e}") from None


def _check_workers(num_workers: int) -> None:
    if num_workers < 0:
        raise ConfigError(f"data.num_workers must be >= 0, got {num_workers}")


@dataclass(frozen=True)
class CaptionsFromLabels:
    """Training captions made from class labels (FLYP, "fine-tune like you pre-train"): each sample's caption is
    one template, picked per sample by the data's seeded rng, filled with its class name.

    Built-in template sets and files are resolved when training starts (``clipforge.train.flyp``); here only the
    shape is checked.

    Attributes:
        templates: A built-in template set (``imagenet``, ``cifar10``, ``cifar100``, ``siglip``), a ``.txt`` (one
            template a line) or ``.json`` (a list) file, or a list of templates; each holds ``{}`` (or ``{c}``)
            where the class name goes.
        classnames: The name put in the prompt for each class, in class order (a class folder's sorted
            sub-folders; a table's label indices, or its sorted distinct label names): a list, a file (as
            ``templates``) or a built-in set (``imagenet``, ``cifar10``, ``cifar100``). ``None``: a folder's
            names with underscores as spaces, or a table's label names.
    """

    templates: str | tuple[str, ...] = "imagenet"
    classnames: str | tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        where = "data.captions_from_labels"
        if not self.templates:
            raise ConfigError(f"{where}.templates: expected a template set, a file or a non-empty list")
        if not isinstance(self.templates, str):
            for i, t in enumerate(self.templates):
                if not isinstance(t, str) or ("{}" not in t and "{c}" not in t):
                    raise ConfigError(f"{where}.templates[{i}]: {t!r} has no '{{}}' for the class name")
                if "\n" in t or "\r" in t:
                    raise ConfigError(f"{where}.templates[{i}]: a template is one line, got {t!r}")
        if self.classnames is not None and not self.classnames:
            raise ConfigError(f"{where}.classnames: expected a file, a list of names or null")
        if self.classnames is not None and not isinstance(self.classnames, str):
            for i, name in enumerate(self.classnames):
                if not isinstance(name, str) or not name.strip() or "\n" in name or "\r" in name:
                    raise ConfigError(f"{where}.classnames[{i}]: expected a non-empty one-line name, got {name!r}")


@dataclass(frozen=True)
class CSVDataConfig:
    """Image–caption pairs listed in a table, one row per pair (``clipforge.data.tables``).

    The file itself (that it exists and has the columns) is checked by ``clipforge.data.check_source``.

    Attributes:
        kind: ``csv``; ``tsv`` and ``parquet`` are the same fields (``TSVDataConfig``, ``ParquetDataConfig``).
        path: The table.
        image_key: Column holding the image path (in parquet also the image's bytes).
        caption_key: Column holding the caption.
        label_key: Column holding a class label (an index or a class name), for classification: read in
            place of ``caption_key``. Empty (the default): a table of captions. Training on labels needs
            ``captions_from_labels``.
        captions_from_labels: Class prompts as training captions (FLYP; needs ``label_key``), or ``None``.
        image_root: Folder the image paths are relative to; empty: the table's folder.
        augment: Random resized crops (else the eval transform).
        num_workers: DataLoader worker processes.
        decode: Limits on image size, and the alpha rule; images outside the limits are skipped and counted.
    """

    kind: Literal["csv"] = "csv"
    path: str = ""
    image_key: str = IMAGE_KEY
    caption_key: str = CAPTION_KEY
    label_key: str = ""
    image_root: str = ""
    augment: bool = True
    num_workers: int = 0
    decode: DecodeLimits = field(default_factory=DecodeLimits)
    captions_from_labels: CaptionsFromLabels | None = None

    def __post_init__(self) -> None:
        if not self.path:
            raise ConfigError(f"data.path: a {self.kind} data source needs a path")
        if not self.image_key or not self.caption_key:
            raise ConfigError("data.image_key and data.caption_key must name columns")
        if self.captions_from_labels is not None and not self.label_key:
            raise ConfigError("data.captions_from_labels: needs data.label_key (the table's column of class labels)")
        _check_workers(self.num_workers)
        _check_decode(self.decode)


@dataclass(frozen=True)
class TSVDataConfig(CSVDataConfig):
    """A tab-separated table with a header row (fields as ``CSVDataConfig``)."""

    kind: Literal["tsv"] = "tsv"  # type: ignore[assignment]


@dataclass(frozen=True)
class ParquetDataConfig(CSVDataConfig):
    """A parquet table (fields as ``CSVDataConfig``; needs ``pip install 'clipforge[parquet]'``)."""

    kind: Literal["parquet"] = "parquet"  # type: ignore[assignment]


@dataclass(frozen=True)
class FolderDataConfig:
    """A folder of images (``clipforge.data.folders``), searched recursively: each with a sidecar caption file
    (``cat.jpg`` + ``cat.txt``), or one sub-folder per class.

    That the folder exists is checked by ``clipforge.data.check_source``.

    Attributes:
        kind: ``folder``.
        path: The folder.
        layout: ``captions`` (sidecar files) or ``classes`` (``path/<class>/<image>``, for classification;
            training on it needs ``captions_from_labels``).
        captions_from_labels: Class prompts as training captions (FLYP; needs ``layout: classes``), or ``None``.
        augment: Random resized crops (else the eval transform).
        num_workers: DataLoader worker processes.
        decode: Limits on image size, and the alpha rule; images outside the limits are skipped and counted.
    """

    kind: Literal["folder"] = "folder"
    path: str = ""
    layout: Literal["captions", "classes"] = "captions"
    augment: bool = True
    num_workers: int = 0
    decode: DecodeLimits = field(default_factory=DecodeLimits)
    captions_from_labels: CaptionsFromLabels | None = None

    def __post_init__(self) -> None:
        if not self.path:
            raise ConfigError(f"data.path: a folder data source needs an existing folder, got {self.path!r}")
        if self.captions_from_labels is not None and self.layout != "classes":
            raise ConfigError("data.captions_from_labels: needs data.layout=classes (path/<class>/<image>)")
        _check_workers(self.num_workers)
        _check_decode(self.decode)


@dataclass(frozen=True)
class ShardsDataConfig:
    """Webdataset tar shards as img2dataset writes them (``key.jpg`` + ``key.txt`` + ``key.json``), streamed.

    That the shards exist is checked by ``clipforge.data.check_source``.

    Attributes:
        kind: ``shards``.
        urls: Sources separated by ``::`` (``a/{00000..00099}.tar::b/{0..3}.tar``), or a list with one
            source per item (an item may itself be a list of shard paths). Brace ranges, globs, folders;
            local paths, fsspec URLs (``s3://``, ``gs://``, ``hf://``, ...) or ``pipe:CMD`` commands.
        weights: One relative sampling weight per source; ``null``: uniform over sources.
        resampled: Draw shards with replacement (long runs); else epoch by epoch with no duplicates.
        interleave: Shards each reader has open at once per source (sample-level mixing).
        image_fields: Fields tried for the image, in order.
        caption_field: Field with the caption(s), one per line; the json's ``captions``/``caption`` otherwise.
        augment: Random resized crops (else the eval transform).
        num_workers: DataLoader worker processes (each reads its own shards).
        decode: Limits on image size, and the alpha rule; images outside the limits are skipped and counted.
        gpu_decode: Decode JPEGs on the run's CUDA device (nvJPEG via torchvision); the workers only read
            bytes, check headers and draw crop boxes. Without CUDA or torchvision: a message, CPU decoding.
    """

    kind: Literal["shards"] = "shards"
    urls: str | tuple[str | tuple[str, ...], ...] = ""
    weights: tuple[float, ...] | None = None
    resampled: bool = False
    interleave: int = 4
    image_fields: tuple[str, ...] = IMAGE_FIELDS
    caption_field: str = "txt"
    augment: bool = True
    num_workers: int = 0
    decode: DecodeLimits = field(default_factory=DecodeLimits)
    gpu_decode: bool = False

    def __post_init__(self) -> None:
        try:
            sources = split_sources(self.urls)  # counted, not expanded: check_source looks for the files
        except ValueError as e:
            raise ConfigError(f"data.urls: {e}") from None
        if self.weights is not None and len(self.weights) != len(sources):
            raise ConfigError(f"data.weights: {len(self.weights)} weight(s) for {len(sources)} source(s)")
        if self.weights is not None and not all(w > 0 for w in self.weights):
            raise ConfigError(f"data.weights must be positive, got {list(self.weights)}")
        if self.interleave < 1 or not self.image_fields:
            raise ConfigError("data.interleave must be >= 1 and data.image_fields non-empty")
        _check_workers(self.num_workers)
        _check_decode(self.decode)

    def sources(self) -> list[list[str]]:
        """The shard paths of each source."""
        return parse_sources(self.urls)


DataConfig = (SyntheticDataConfig | CSVDataConfig | TSVDataConfig | ParquetDataConfig | FolderDataConfig
              | ShardsDataConfig)
