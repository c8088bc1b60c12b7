"""An embedded collection on disk, as ``clipforge embed`` writes it, read back for indexing, search and serving.

The layout is clip-retrieval's (so its users' tools read it) plus a manifest and per-part commit markers. The
manifest records the model (spec, fingerprint, dimension, scoring), the data, the part size, the storage dtype, the
precision and the backend (``torch``, or ``onnx`` with its ``quantize``), all of which a resumed run must repeat::

    DIR/embed.json                      the manifest: model (spec, fingerprint, dim, scoring), data, parts
    DIR/img_emb/img_emb_0000.npy        (n, D) L2-normalised rows, float16 (default) or float32
    DIR/text_emb/text_emb_0000.npy      with ``--texts``: each row's caption embedded, aligned row for row
    DIR/metadata/metadata_0000.parquet  row, path, caption, width, height of each embedding row
    DIR/parts/part_0000.json            a part's commit marker, written last; no marker: the part is redone
    DIR/stats.json                      inputs, embedded, skipped by reason, images/s
    DIR/onnx/fp32/, DIR/onnx/int8/      with ``--backend onnx``: the towers' ONNX export (reused on resume and search)
    DIR/index/image.faiss, index.json   ``clipforge index``

Collection ids ``0 … N-1`` are the rows of the parts concatenated in part order; the vector index uses the same
ids. :class:`Collection` opens a finished collection lazily: embeddings are memory-mapped, metadata columns are
read once on first use.
"""

from __future__ import annotations

import json
import tarfile
import threading
from collections.abc import Iterator, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "clipforge-collection"
VERSION = 1
MANIFEST = "embed.json"
STATS = "stats.json"
MODALITIES = {"image": ("img_emb", "img_emb"), "text": ("text_emb", "text_emb")}
METADATA_COLUMNS = ("row", "path", "caption", "width", "height")


def part_name(kind: str, part: int) -> str:
    """The relative path of part ``part`` of ``kind`` (``image``, ``text``, ``metadata`` or ``marker``)."""
    if kind in MODALITIES:
        folder, stem = MODALITIES[kind]
        return f"{folder}/{stem}_{part:04d}.npy"
    return {"metadata": f"metadata/metadata_{part:04d}.parquet", "marker": f"parts/part_{part:04d}.json"}[kind]


def read_json(path: Path, what: str) -> dict[str, Any]:
    """A JSON object from ``path``; ``ValueError`` naming the file when it is missing or not an object."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{path}: no {what} (is {path.parent} a collection written by `clipforge embed`?)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def pyarrow_parquet() -> Any:
    """``pyarrow.parquet``, or an ImportError naming the extra."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ImportError("collections store metadata as parquet, which needs pyarrow: "
                          "pip install 'clipforge[search]'") from None
    return pq


class Collection:
    """A finished collection directory (see the module docstring).

    Args:
        directory: The collection.
        allow_incomplete: Open one whose ``embed`` run has not finished (its finished parts only).

    Raises:
        ValueError: naming the file, when ``directory`` holds no collection, an unfinished one (unless
            ``allow_incomplete``), or parts whose files disagree.
    """

    def __init__(self, directory: str | Path, allow_incomplete: bool = False):
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise ValueError(f"{self.directory}: no such collection folder")
        self.manifest = read_json(self.directory / MANIFEST, "embed.json manifest")
        if self.manifest.get("format") != FORMAT:
            raise ValueError(f"{self.directory / MANIFEST}: format is {self.manifest.get('format')!r}, expected "
                             f"{FORMAT!r}")
        if not self.manifest.get("complete") and not allow_incomplete:
            raise ValueError(f"{self.directory}: the embed run has not finished (embed.json complete: false); "
                             "rerun the same `clipforge embed` command to finish it")
        self.parts = self._finished_parts()
        self._lock = threading.Lock()
        self._tars: dict[str, tarfile.TarFile] = {}

    @classmethod
    def open(cls, directory: str | Path, allow_incomplete: bool = False) -> Collection:
        """Opens ``directory`` (see the class)."""
        return cls(directory, allow_incomplete)

    def _finished_parts(self) -> list[dict[str, Any]]:
        markers = []
        for k in range(int(self.manifest.get("num_parts", 0))):
            path = self.directory / part_name("marker", k)
            if path.is_file():
                markers.append(read_json(path, "part marker"))
            elif self.manifest.get("complete"):
                raise ValueError(f"{path}: missing, but embed.json says the collection is complete")
        return markers

    # -- what it holds ----------------------------------------------------------------------------------------

    @property
    def model(self) -> dict[str, Any]:
        """The manifest's model entry (spec, pretrained, name, family, fingerprint, dim, scoring)."""
        return dict(self.manifest["model"])

    @property
    def dim(self) -> int:
        """The embedding dimension."""
        return int(self.manifest["model"]["dim"])

    @property
    def modalities(self) -> tuple[str, ...]:
        """``("image",)`` or ``("image", "text")``."""
        return tuple(self.manifest.get("modalities", ["image"]))

    @cached_property
    def size(self) -> int:
        """The number of rows (embedded items)."""
        return sum(int(p["rows"]) for p in self.parts)

    def __len__(self) -> int:
        return self.size

    def part_arrays(self, modality: str = "image") -> Iterator[np.ndarray]:
        """Each finished part's embeddings, memory-mapped, in id order.

        Raises:
            ValueError: the collection has no ``modality`` embeddings, or a part's row count disagrees with its
                marker.
        """
        if modality not in self.modalities:
            raise ValueError(f"{self.directory}: no {modality} embeddings (it has {', '.join(self.modalities)}; "
                             "embed with --texts for text embeddings)")
        for marker in self.parts:
            path = self.directory / part_name(modality, int(marker["part"]))
            array = np.load(path, mmap_mode="r")
            if array.ndim != 2 or array.shape[0] != int(marker["rows"]) or (array.shape[0] and array.shape[1] !=
                                                                            self.dim):
                raise ValueError(f"{path}: shape {array.shape}, expected ({marker['rows']}, {self.dim}) from "
                                 f"{part_name('marker', int(marker['part']))}")
            yield array

    def embeddings(self, modality: str = "image") -> np.ndarray:
        """All ``modality`` embeddings as one float32 array (N, D) in memory (a copy; use :meth:`part_arrays` for
        collections larger than memory)."""
        arrays = [a.astype(np.float32) for a in self.part_arrays(modality)]
        return np.concatenate(arrays) if arrays else np.zeros((0, self.dim), np.float32)

    @cached_property
    def _metadata(self) -> dict[str, np.ndarray]:
        pq = pyarrow_parquet()
        columns: dict[str, list[Any]] = {c: [] for c in METADATA_COLUMNS}
        for marker in self.parts:
            path = self.directory / part_name("metadata", int(marker["part"]))
            table = pq.read_table(path)
            missing = [c for c in METADATA_COLUMNS if c not in table.column_names]
            if missing or table.num_rows != int(marker["rows"]):
                raise ValueError(f"{path}: expected {marker['rows']} rows with columns {list(METADATA_COLUMNS)}, "
                                 f"got {table.num_rows} rows with {table.column_names}")
            for c in METADATA_COLUMNS:
                columns[c].extend(table.column(c).to_pylist())
        return {c: np.asarray(v, dtype=object if c in ("path", "caption") else np.int64) for c, v in columns.items()}

    def check_id(self, item: int) -> int:
        """``item`` as a collection id; ``IndexError`` when outside ``0 … size-1``."""
        if isinstance(item, bool) or not isinstance(item, (int, np.integer)) or not 0 <= int(item) < self.size:
            raise IndexError(f"no item {item!r} in a collection of {self.size}")
        return int(item)

    def rows(self, ids: Sequence[int]) -> list[dict[str, Any]]:
        """The metadata of each id: ``{"id", "row", "path", "caption", "width", "height"}``.

        Raises:
            IndexError: an id outside the collection.
        """
        meta = self._metadata
        out = []
        for item in ids:
            i = self.check_id(item)
            out.append({"id": i, **{c: meta[c][i].item() if hasattr(meta[c][i], "item") else meta[c][i]
                                    for c in METADATA_COLUMNS}})
        return out

    # -- the model and the originals --------------------------------------------------------------------------

    @property
    def backend(self) -> str:
        """The backend the collection was embedded with: ``torch`` or ``onnx`` (``torch`` for manifests without)."""
        return str(self.manifest.get("backend") or "torch")

    def eval_model(self, device: str | None = None, spec: str | None = None, backend: str | None = None) -> Any:
        """The model the collection was embedded with, as an ``EvalModel``.

        Args:
            device: Where to run it (the onnx backend runs on the CPU only).
            spec: Another spelling of the model (a moved checkpoint, a local copy of a hub model); its weights
                must be the recorded ones.
            backend: ``torch``, or ``onnx`` (an ``OnnxEvalModel``: the towers exported into ``DIR/onnx/`` (reused
                when there) and run by onnxruntime; int8 when the collection was embedded with int8). Default: the
                one recorded in embed.json.

        Raises:
            ValueError: when the weights' fingerprint differs from the one recorded in embed.json (queries embedded
                by another model would not be comparable with the collection's rows); an unknown backend, or the
                onnx backend on a non-CPU device.
            ImportError: the onnx backend without onnxruntime.
        """
        from clipforge.eval.loading import load_eval_model

        backend = backend or self.backend
        if backend not in ("torch", "onnx"):
            raise ValueError(f"backend must be 'torch' or 'onnx', got {backend!r}")
        if backend == "onnx":
            from clipforge.search.onnx_backend import onnxruntime_module

            onnxruntime_module()  # before loading the model: the ImportError naming the extra
            if device is not None and not device.startswith("cpu"):
                raise ValueError(f"device {device!r}: the onnx backend runs on the CPU (onnxruntime's CPU execution "
                                 "provider); use the torch backend elsewhere")
            device = "cpu"
        recorded = self.model
        model, _, _ = load_eval_model(spec or recorded["spec"], device, pretrained=None if spec else
                                      recorded.get("pretrained"))
        if model.fingerprint() != recorded["fingerprint"]:
            raise ValueError(f"model {spec or recorded['spec']!r} (fingerprint {model.fingerprint()}) is not the one "
                             f"{self.directory} was embedded with ({recorded['spec']!r}, fingerprint "
                             f"{recorded['fingerprint']}): its queries would not be comparable")
        if backend == "onnx":
            from clipforge.search.onnx_backend import onnx_eval_model, variant

            quantize = self.manifest.get("quantize") if self.backend == "onnx" else None
            return onnx_eval_model(model, self._export_dir(variant(quantize), recorded["fingerprint"]), quantize)
        return model

    def _export_dir(self, name: str, fingerprint: str) -> Path:
        """Where the ONNX export lives: ``DIR/onnx/<name>`` when it exists or DIR is writable, else (a read-only
        collection) ``$CLIPFORGE_CACHE/onnx/<fingerprint>-<name>`` (default ``~/.cache/clipforge``)."""
        import os

        inside = self.directory / "onnx" / name
        if (inside / "export.json").is_file() or os.access(self.directory, os.W_OK):
            return inside
        from clipforge.eval.zeroshot import default_cache_dir  # $CLIPFORGE_CACHE/zeroshot: the same cache root

        return default_cache_dir().parent / "onnx" / f"{fingerprint}-{name}"

    def image_bytes(self, item: int, limit: int = 64 << 20) -> bytes:
        """The original file bytes of item ``item`` (a file, a tar shard member, an image stored in a table's cell);
        ``ValueError`` for a synthetic item (use :meth:`image`)."""
        path = str(self.rows([item])[0]["path"])
        if path.startswith("synthetic:"):
            raise ValueError(f"item {item} is a synthetic scene: it has no file")
        if "::" in path:
            shard, key = path.split("::", 1)
            with self._lock:
                if shard not in self._tars:  # kept open: a served collection reads many members of each shard
                    self._tars[shard] = tarfile.open(self._resolve(shard))  # noqa: SIM115
                tar = self._tars[shard]
                member = tar.getmember(key)
                if member.size > limit:
                    raise ValueError(f"{path}: {member.size} bytes, over the {limit}-byte limit")
                handle = tar.extractfile(member)
                if handle is None:
                    raise ValueError(f"{path}: not a regular file in its shard")
                return handle.read()
        data = self.manifest.get("data", {})
        if path.startswith(f"{data.get('path')}:") and path.rsplit(":", 1)[1].isdigit():  # bytes inside a table
            data_bytes = self._table().image_bytes(int(path.rsplit(":", 1)[1]))
            if len(data_bytes) > limit:
                raise ValueError(f"{path}: {len(data_bytes)} bytes, over the {limit}-byte limit")
            return data_bytes
        from clipforge.data.decode import read_bytes

        return read_bytes(self._resolve(path), limit)

    def _table(self) -> Any:
        with self._lock:
            if not hasattr(self, "_table_source"):
                from clipforge.data.tables import TablePairs

                data = self.manifest["data"]
                self._table_source = TablePairs(data["path"], data["image_key"], data["caption_key"],
                                                data.get("image_root") or "", data["kind"])
            return self._table_source

    def _resolve(self, path: str) -> Path:
        p = Path(path)
        return p if p.is_absolute() else Path(self.manifest["data"].get("root") or ".") / p

    def image(self, item: int) -> Any:
        """Item ``item``'s image, decoded (RGB PIL) under the default limits; synthetic scenes are redrawn.

        Raises:
            IndexError: an id outside the collection.
            clipforge.data.decode.BadSample: the original no longer decodes.
        """
        from clipforge.data.decode import DecodeLimits, decode_image

        row = self.rows([item])[0]
        path = str(row["path"])
        if path.startswith("synthetic:"):
            return self._synthetic()[int(path.split(":", 1)[1])][0].convert("RGB")
        return decode_image(self.image_bytes(item), DecodeLimits())

    def _synthetic(self) -> Any:
        with self._lock:
            if not hasattr(self, "_synthetic_source"):
                from clipforge.config import from_dict
                from clipforge.data.config import SyntheticDataConfig
                from clipforge.data.sources import build_source

                data = self.manifest["data"]
                config = from_dict(SyntheticDataConfig, dict(data.get("config") or {}))
                self._synthetic_source = build_source(config, data.get("image_size"))
            return self._synthetic_source
