"""Embedding a data source into a collection (``clipforge embed``): resumable part by part, torchrun-parallel.

The output is the layout of ``clipforge.search.collection``. How it is made:

- **Decoding.** DataLoader workers read and decode (``clipforge.search.items``: reduce-on-decode to the model's
  input side, so a 640×480 JPEG is decoded at 320×240 for a 224-pixel model) and run the geometry of the model's
  eval transform; for the standard transform they hand over ``uint8`` pixels and the main process normalises a
  whole batch at once on the model's device. A bad input is skipped and counted by its reason
  (``clipforge.data.decode``), never fatal.
- **Batches** are fixed chunks of ``batch_size`` consecutive inputs of one part (the bad ones dropped); worker
  ``w`` of ``W`` takes chunks ``w, w + W, …`` of every part (of tar shards, whole shards when there are enough, so
  each is read once). A batch never depends on the number of workers or ranks, so every run of the same command
  gives the same rows.
- **Parts** are the unit of work and of resumption. A finished part's files are written to temporary names and
  renamed into place (``os.replace``), the marker ``parts/part_NNNN.json`` last. A killed run leaves at most
  unfinished parts without markers; the same command skips the finished parts and redoes the others, ending with
  the same files as an uninterrupted run. The manifest (``embed.json``) is the identity of the command: another
  model, data, part size, storage dtype, precision, backend, quantisation or modality set on an existing collection
  is an error naming the difference (``overwrite`` replaces the collection instead).
- **Backends.** ``torch`` runs the ``EvalModel`` (fp32, or bf16/fp16 autocast). ``onnx`` exports its towers into
  ``DIR/onnx/fp32/`` (or ``DIR/onnx/int8/`` with ``quantize="int8"``), checked against PyTorch, and runs them with
  onnxruntime on the CPU (``clipforge.search.onnx_backend``); the export belongs to the collection and is reused
  when the run is resumed. fp32 only: autocast is PyTorch's.
- **torchrun.** Rank ``r`` of ``W`` embeds parts ``r, r + W, …``; rank 0 writes the manifest before any part and
  ``stats.json`` and ``complete: true`` after every rank has finished.
- **Texts** (``texts=True``): each row's caption is embedded into ``text_emb/``, aligned row for row. A text row
  exists for every image row, so a sample without a caption is then skipped and counted as ``no_caption`` (the
  empty string is never embedded); without ``texts`` captions are metadata and may be ``""``.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections import Counter
from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from clipforge.distributed import Runtime, gather_objects, init_runtime, shutdown
from clipforge.search.collection import FORMAT, MANIFEST, METADATA_COLUMNS, STATS, VERSION, part_name, read_json
from clipforge.search.items import ItemSource, PartStream, PixelPrep, identity

PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
DTYPES = ("float16", "float32")
BACKENDS = ("torch", "onnx")
QUANTIZATIONS = ("int8",)
ONNX_DIR = "onnx"  # DIR/onnx/<fp32|int8>/: the onnx backend's export of the model
OWN_FILES = ("img_emb", "text_emb", "metadata", "parts", "index", ONNX_DIR, MANIFEST, STATS, "index.json")
CHECKED = ("model.fingerprint", "data", "part_size", "num_parts", "dtype", "modalities", "precision", "backend",
           "quantize")
DEFAULTS = {"backend": "torch", "quantize": None}  # what a manifest written before these fields were recorded meant


def default_workers() -> int:
    """DataLoader workers when not given: one per CPU core, at most 8."""
    return max(1, min(8, os.cpu_count() or 1))


@dataclass(frozen=True)
class EmbedSettings:
    """How to embed (none of it changes what a row is, except ``precision``, ``backend``, ``quantize``, ``dtype``,
    ``part_size``, ``texts`` and ``limit``, which the manifest records).

    Attributes:
        batch_size: Inputs per batch.
        workers: DataLoader worker processes decoding images (0: in the main process).
        precision: ``fp32``, or ``bf16`` / ``fp16`` autocast (``torch`` backend only).
        backend: ``torch`` (the PyTorch model) or ``onnx`` (its towers exported and run by onnxruntime on the CPU).
        quantize: ``None``, or ``int8`` with the ``onnx`` backend (dynamic quantisation of the MatMul weights).
        dtype: Storage dtype of the embeddings, ``float16`` or ``float32``.
        part_size: Inputs per part of an indexable source (tar shards: one part per shard).
        texts: Also embed each row's caption into ``text_emb/``.
        limit: Embed only the first ``limit`` inputs (folders, tables, synthetic).
        overwrite: Replace an existing collection made by another command.
        progress: Show a progress bar (rank 0).
    """

    batch_size: int = 64
    workers: int = field(default_factory=default_workers)
    precision: str = "fp32"
    backend: str = "torch"
    quantize: str | None = None
    dtype: str = "float16"
    part_size: int = 10_000
    texts: bool = False
    limit: int | None = None
    overwrite: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.workers < 0 or self.part_size < 1 or (self.limit is not None and
                                                                              self.limit < 1):
            raise ValueError(f"batch_size, part_size and limit must be >= 1 and workers >= 0, got {self}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {tuple(PRECISIONS)}, got {self.precision!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.quantize is not None and self.quantize not in QUANTIZATIONS:
            raise ValueError(f"quantize must be None or one of {QUANTIZATIONS}, got {self.quantize!r}")
        if self.backend == "onnx" and self.precision != "fp32":
            raise ValueError(f"precision {self.precision!r} is PyTorch autocast: the onnx backend runs fp32 (or "
                             "quantize='int8'); use backend='torch' for bf16/fp16")
        if self.quantize is not None and self.backend != "onnx":
            raise ValueError(f"quantize={self.quantize!r} quantises the ONNX export: it needs backend='onnx'")


# -- the command's entry point ------------------------------------------------------------------------------------


def embed(model: str, data: Any, output: str | Path, settings: EmbedSettings | None = None, *,
          pretrained: str | None = None, device: str | None = None, allow_pickle: bool = False,
          names: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Embeds ``data`` with ``model`` into the collection ``output`` (see the module docstring).

    Args:
        model: Anything ``clipforge.eval.loading.load_eval_model`` opens (a saved model, a checkpoint, a hub name,
            ``NAME:TAG``, a preset name alone for random weights).
        data: A data config (``clipforge.data.sources.source_config``), or a path for it.
        output: The collection directory.
        settings: How to embed.
        pretrained: OpenCLIP's pretrained tag of ``model``.
        device: ``cpu``, ``cuda``, ``cuda:1`` … (default: CUDA when available; the CPU with the onnx backend,
            which runs nowhere else); under torchrun each rank takes its ``LOCAL_RANK``'s GPU.
        allow_pickle: Allow a pickled checkpoint as ``model``.
        names: How data-check errors call each field (a command line's flags).

    Returns:
        The stats written to ``output/stats.json`` (on rank 0; ``{}`` on the other ranks).

    Raises:
        FileNotFoundError: an unknown model or missing data.
        ValueError: (``ConfigError`` among them) bad settings or data, an output that holds another collection, a
            non-CPU device with the onnx backend, a model the ONNX export cannot reproduce.
        ImportError: the onnx backend without onnxruntime (naming ``pip install 'clipforge[onnx]'``).
        OSError: an unwritable output.
    """
    from clipforge.data.sources import source_config
    from clipforge.eval.loading import load_eval_model

    settings = settings or EmbedSettings()
    if settings.backend == "onnx":
        if device is not None and torch.device(device).type != "cpu":
            raise ValueError(f"--device {device}: the onnx backend runs on the CPU (onnxruntime's CPU execution "
                             "provider); drop --device, or use --backend torch")
        device = "cpu"
    config = source_config(data) if isinstance(data, str) else data
    runtime = init_runtime(device)
    try:
        eval_model, _, _ = load_eval_model(model, str(runtime.device), allow_pickle, None, pretrained)
        spec = os.path.abspath(model) if os.path.exists(model) else model
        return embed_source(eval_model, {"spec": spec, "pretrained": pretrained}, config, output, settings,
                            runtime, names)
    finally:
        shutdown(runtime)


def model_entry(model: Any, spec: str, pretrained: str | None) -> dict[str, Any]:
    """The manifest's ``model`` entry of an ``EvalModel``."""
    config = getattr(model.model, "config", None)
    # A saved model directory's config has no preset name: call it by its path's last two parts (runs/x/final).
    name = getattr(config, "name", None) or ("/".join(Path(spec).parts[-2:]) if os.path.exists(spec) else spec)
    return {"spec": spec, "pretrained": pretrained, "name": str(name), "family": getattr(config, "family", "clip"),
            "fingerprint": model.fingerprint(), "dim": int(getattr(config, "embed_dim", 0)) or None,
            "scoring": model.scoring}


def embed_source(model: Any, spec: Mapping[str, Any], config: Any, output: str | Path, settings: EmbedSettings,
                 runtime: Runtime | None = None, names: Mapping[str, str] | None = None) -> dict[str, Any]:
    """:func:`embed` with the model loaded (an ``EvalModel``) and the data config built; ``spec`` holds the
    model's ``spec`` and ``pretrained`` as recorded in the manifest. With the onnx backend ``model`` is the PyTorch
    ``EvalModel`` (exported into ``output/onnx/``) or an ``OnnxEvalModel`` already made of it."""
    if settings.backend == "onnx":
        from clipforge.search.onnx_backend import onnxruntime_module

        onnxruntime_module()  # the ImportError naming the extra, on every rank alike
    runtime = runtime or Runtime(device=model.device)
    out = Path(output)
    size = getattr(model.transform, "size", None)
    source = ItemSource(config, size if isinstance(size, int) else None, settings.part_size, settings.texts,
                        settings.limit, dict(names) if names else None)
    manifest = {"format": FORMAT, "version": VERSION, "model": model_entry(model, spec["spec"], spec["pretrained"]),
                "data": source.describe(), "part_size": settings.part_size, "num_parts": source.num_parts,
                "dtype": settings.dtype, "modalities": ["image", "text"] if settings.texts else ["image"],
                "precision": settings.precision, "backend": settings.backend, "quantize": settings.quantize,
                "complete": False}
    failure = None
    if runtime.rank == 0:
        try:
            prepare_output(out, manifest, settings.overwrite)
            model = backend_model(model, out, settings)  # rank 0 exports; the others reuse its export below
        except (ValueError, OSError) as e:
            failure = (type(e).__name__, str(e))
    failure = gather_objects(failure, runtime)[0]
    if failure is not None:
        raise (OSError if failure[0] in ("OSError", "PermissionError") else ValueError)(failure[1])
    if runtime.rank != 0:
        model = backend_model(model, out, settings)
    mine = range(runtime.rank, source.num_parts, runtime.world_size)
    todo = [k for k in mine if not (out / part_name("marker", k)).is_file()]
    start = time.perf_counter()
    done = run_parts(model, source, todo, out, settings, runtime)
    seconds = time.perf_counter() - start
    results = gather_objects((done, seconds), runtime)
    stats: dict[str, Any] = {}
    if runtime.rank == 0:
        stats = finish(out, manifest, sum(r[0] for r in results), max(r[1] for r in results), runtime.world_size)
    return stats


def backend_model(model: Any, out: Path, settings: EmbedSettings) -> Any:
    """The ``EvalModel`` that embeds under ``settings.backend``: ``model`` itself for torch; for onnx, an
    ``OnnxEvalModel`` on the collection's export ``out/onnx/<fp32|int8>/`` (made, or reused when it matches).

    Raises:
        ValueError: ``model`` is an ``OnnxEvalModel`` of another backend or quantisation than ``settings``'.
    """
    from clipforge.search.onnx_backend import OnnxEvalModel, onnx_eval_model, variant

    if isinstance(model, OnnxEvalModel):
        if settings.backend != "onnx" or model.quantize != settings.quantize:
            raise ValueError(f"the model given is an ONNX export ({variant(model.quantize)}); the settings ask for "
                             f"backend {settings.backend!r}, quantize {settings.quantize!r}")
        return model
    if settings.backend == "torch":
        return model
    return onnx_eval_model(model, out / ONNX_DIR / variant(settings.quantize), settings.quantize)


# -- the loop ------------------------------------------------------------------------------------------------------


@dataclass
class _Part:
    """A part being gathered from the workers' batches."""

    start: float
    ends: int = 0
    inputs: int = 0
    shard_errors: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    rows: list[np.ndarray] = field(default_factory=list)
    meta: dict[str, list[Any]] = field(default_factory=lambda: {c: [] for c in METADATA_COLUMNS})


def run_parts(model: Any, source: ItemSource, todo: list[int], out: Path, settings: EmbedSettings,
              runtime: Runtime) -> int:
    """Embeds parts ``todo`` into ``out`` (each written as soon as all its batches are in); returns the rows made."""
    from tqdm import tqdm

    if not todo:
        return 0
    device, prep = runtime.device, PixelPrep(model.transform)
    workers = settings.workers
    loader = torch.utils.data.DataLoader(
        PartStream(source, todo, settings.batch_size, prep), batch_size=None, num_workers=workers,
        collate_fn=identity, pin_memory=device.type == "cuda", prefetch_factor=4 if workers else None,
        multiprocessing_context="fork" if workers and sys.platform == "linux" else None)
    lengths = [source.part_length(k) for k in todo]
    total = None if None in lengths else sum(n or 0 for n in lengths)
    bar = tqdm(total=total, desc="embed", unit="img", file=sys.stderr, dynamic_ncols=True,
               disable=not settings.progress or runtime.rank != 0)
    dtype = PRECISIONS[settings.precision]
    autocast = torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()
    parts: dict[int, _Part] = {}
    made = 0
    try:
        for message in loader:
            part = parts.setdefault(message["part"], _Part(time.perf_counter()))
            if message.get("end"):
                part.ends, part.shard_errors = part.ends + 1, part.shard_errors + message["shard_errors"]
                if part.ends == max(1, workers):
                    made += _write(model, out, message["part"], parts.pop(message["part"]), settings, autocast)
                continue
            bar.update(message["inputs"])
            part.inputs += message["inputs"]
            part.skipped.update(message["skipped"])
            if message["images"] is not None:
                with torch.inference_mode(), autocast:
                    x = model.encode_images(prep.batch(message["images"], device), normalize=False)
                part.rows.append(F.normalize(x.float(), dim=-1).numpy().astype(settings.dtype))
                for c in METADATA_COLUMNS:
                    part.meta[c].extend(message[c])
    finally:
        bar.close()
    return made


def _write(model: Any, out: Path, k: int, part: _Part, settings: EmbedSettings, autocast: Any) -> int:
    """Writes one gathered part in row order (with its captions embedded under ``texts``); returns its rows."""
    order = np.argsort(np.asarray(part.meta["row"], dtype=np.int64), kind="stable")
    dim = part.rows[0].shape[1] if part.rows else model_dim(model)
    images = np.concatenate(part.rows)[order] if part.rows else np.zeros((0, dim), settings.dtype)
    meta = {c: [part.meta[c][i] for i in order] for c in METADATA_COLUMNS}
    texts = None
    if settings.texts:
        texts = np.zeros((0, dim), settings.dtype)
        if meta["caption"]:
            with torch.inference_mode(), autocast:
                t = model.encode_texts(meta["caption"], normalize=False, batch_size=settings.batch_size)
            texts = F.normalize(t.float(), dim=-1).numpy().astype(settings.dtype)
    marker: dict[str, Any] = {"part": k, "rows": len(order), "inputs": part.inputs,
                              "skipped": dict(sorted(part.skipped.items())),
                              "seconds": round(time.perf_counter() - part.start, 3)}
    if part.shard_errors:
        marker["shard_errors"] = part.shard_errors
    write_part(out, k, images, texts, meta, marker)
    return len(order)


def model_dim(model: Any) -> int:
    """The embedding dimension of an ``EvalModel`` (its config's ``embed_dim``, else one probe)."""
    dim = getattr(getattr(model.model, "config", None), "embed_dim", None)
    if isinstance(dim, int):
        return dim
    return int(model.encode_texts(["a"]).shape[1])


# -- the output directory ------------------------------------------------------------------------------------------


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping):
        return {k: v for key, sub in value.items() for k, v in _flat(sub, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): value}


def differences(recorded: Mapping[str, Any], wanted: Mapping[str, Any]) -> list[str]:
    """What differs between two manifests in the fields that make a collection (:data:`CHECKED`), as
    ``"field: X there, Y now"`` (a manifest without ``backend`` / ``quantize`` was written by the torch backend)."""
    old, new = _flat({**DEFAULTS, **recorded}), _flat({**DEFAULTS, **wanted})
    keys = sorted(k for k in old.keys() | new.keys() if any(k == c or k.startswith(c + ".") for c in CHECKED))
    return [f"{k}: {old.get(k)!r} there, {new.get(k)!r} now" for k in keys if old.get(k) != new.get(k)]


def prepare_output(out: Path, manifest: dict[str, Any], overwrite: bool) -> None:
    """Makes ``out`` ready for ``manifest``'s run and writes the manifest (``complete: false``).

    An empty or new folder is fine; one holding the same command's collection is resumed (stale temporary files
    removed); one holding another collection is an error unless ``overwrite`` (its files are then removed).

    Raises:
        ValueError: ``out`` is a file, holds files that are no collection, or holds another command's collection.
        OSError: ``out`` cannot be written.
    """
    if out.exists() and not out.is_dir():
        raise ValueError(f"--output {out}: a file, not a folder")
    recorded_path = out / MANIFEST
    if recorded_path.is_file():
        recorded = read_json(recorded_path, "embed.json manifest")
        if recorded.get("format") != FORMAT:
            raise ValueError(f"{recorded_path}: format {recorded.get('format')!r}, not a {FORMAT!r}; choose another "
                             "--output")
        changed = differences(recorded, manifest)
        if changed and not overwrite:
            raise ValueError(f"{out} holds a collection made by another command ({'; '.join(changed)}); use another "
                             "--output, or --overwrite to replace it")
        if changed:
            for name in OWN_FILES:
                path = out / name
                shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    elif out.is_dir() and any(out.iterdir()):
        raise ValueError(f"--output {out}: the folder holds files but no collection ({MANIFEST}); choose an empty "
                         "or new folder")
    try:
        for folder in ("img_emb", "metadata", "parts", *(["text_emb"] if "text" in manifest["modalities"] else [])):
            (out / folder).mkdir(parents=True, exist_ok=True)
            for stale in (out / folder).glob("*.tmp*"):  # a killed run's half-written file
                stale.unlink()
        write_json(out / MANIFEST, manifest)
    except OSError as e:
        raise OSError(f"--output {out}: cannot write there ({e.strerror or e})") from None


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Writes ``data`` to ``path`` atomically (a temporary file, then ``os.replace``)."""
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def _save_npy(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        np.save(f, array)
    os.replace(tmp, path)


def write_part(out: Path, part: int, images: np.ndarray, texts: np.ndarray | None, meta: Mapping[str, list[Any]],
               marker: dict[str, Any]) -> None:
    """Writes part ``part``'s embeddings and metadata, each atomically, then its marker (the commit)."""
    from clipforge.search.collection import pyarrow_parquet

    pq = pyarrow_parquet()  # the ImportError naming the extra
    import pyarrow as pa
    _save_npy(out / part_name("image", part), images)
    if texts is not None:
        _save_npy(out / part_name("text", part), texts)
    types = {"row": pa.int64(), "path": pa.string(), "caption": pa.string(), "width": pa.int32(),
             "height": pa.int32()}
    table = pa.table({c: pa.array(meta[c], type=types[c]) for c in METADATA_COLUMNS})
    path = out / part_name("metadata", part)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    pq.write_table(table, tmp)
    os.replace(tmp, path)
    write_json(out / part_name("marker", part), marker)


def finish(out: Path, manifest: dict[str, Any], embedded_now: int, seconds: float, world_size: int) -> dict[str, Any]:
    """Sums the part markers into ``stats.json`` and marks the manifest complete (rank 0, after every rank)."""
    inputs, embedded, skipped = 0, 0, Counter[str]()
    shard_errors, complete = 0, True
    for k in range(manifest["num_parts"]):
        path = out / part_name("marker", k)
        if not path.is_file():
            complete = False
            continue
        marker = read_json(path, "part marker")
        inputs, embedded = inputs + marker["inputs"], embedded + marker["rows"]
        skipped.update(marker["skipped"])
        shard_errors += marker.get("shard_errors", 0)
    stats = {"inputs": inputs, "embedded": embedded, "skipped": dict(sorted(skipped.items())),
             "images_per_s": round(embedded_now / seconds, 2) if seconds > 0 and embedded_now else 0.0,
             "seconds": round(seconds, 3), "parts": manifest["num_parts"], "world_size": world_size,
             "embedded_this_run": embedded_now}
    if shard_errors:
        stats["shard_errors"] = shard_errors
    write_json(out / STATS, stats)
    write_json(out / MANIFEST, {**manifest, "complete": complete})
    return stats
