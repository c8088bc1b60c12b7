"""Sharded training checkpoints with Distributed Checkpoint (``torch.distributed.checkpoint``): ``parallel: fsdp``.

A checkpoint is a folder ``<run>/checkpoints/step_00001000/``: every rank writes its own shard of the model and
optimiser state (DCP's ``__<rank>_0.distcp`` files and the ``.metadata`` index), and rank 0 writes ``extra.pt``:
the step, the data position, every rank's RNG states and the resolved config, as tensors and plain values. Only
when every shard is complete does rank 0 write the record ``step_00001000.json`` (each file's size) and then move
``latest`` to the folder, each an atomic rename, so a run killed mid-save (or while an asynchronous save is still
writing) resumes from the previous checkpoint.

Resharding: DCP stores each tensor with the offsets of its pieces, and ``load`` reads into whatever sharding the
loading process group has, so a checkpoint written by 4 ranks resumes on 2 or on 1 (model and Adam state alike).
``consolidate`` reads one into a whole model without any process group (``clipforge convert``).

Reading runs no code from the checkpoint: DCP's index is a pickle, read here by an unpickler that only builds DCP's
own metadata classes and torch sizes and dtypes; its non-tensor values are read with ``torch.load(weights_only=True)``
(DCP's default planner would unpickle them freely).
"""

from __future__ import annotations

import io
import json
import pickle
import re
import warnings
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from clipforge.train.checkpoint import CheckpointLoadError, CheckpointSaveError
from clipforge.train.distributed import Runtime, barrier
from clipforge.train.locations import Location

EXTRA = "extra.pt"
_STEP_FOLDER = re.compile(r"step_\d+")
METADATA = ".metadata"
_TORCH_GLOBALS = (torch.dtype, torch.layout, torch.memory_format)
_PLAIN = {("builtins", n) for n in ("set", "frozenset", "slice", "list", "dict", "tuple", "int", "float", "bytes")}
_PLAIN |= {("collections", "OrderedDict"), ("torch", "Size"), ("torch.serialization", "_get_layout")}
_PLAIN |= {("pathlib", n) for n in ("Path", "PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath")}


class _IndexUnpickler(pickle.Unpickler):
    """Builds DCP's metadata (its dataclasses, torch sizes and dtypes) and refuses every other global."""

    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("torch.distributed.checkpoint.") or (module, name) in _PLAIN:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), _TORCH_GLOBALS):
            return getattr(torch, name)
        raise CheckpointLoadError(f"the checkpoint index asks to build {module}.{name}, which a Distributed "
                                  "Checkpoint index never holds (a crafted file?); nothing was run")


def _reader(path: str) -> Any:
    """DCP's file-system reader (fsspec's for a URL) with the index read by ``_IndexUnpickler``."""
    from torch.distributed.checkpoint import FileSystemReader

    base: type = FileSystemReader
    if "://" in path:
        from torch.distributed.checkpoint._fsspec_filesystem import FsspecReader

        base = FsspecReader

    class SafeReader(base):  # type: ignore[misc, valid-type]
        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            from torch.distributed.checkpoint.metadata import Metadata, StorageMeta

            with self.fs.create_stream(self._get_metadata_path(kwargs.get("rank")), "rb") as f:
                metadata = _IndexUnpickler(f).load()
            if not isinstance(metadata, Metadata):
                raise CheckpointLoadError(f"{path}: its {METADATA} is not a Distributed Checkpoint index")
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return SafeReader(path)


def _planner() -> Any:
    """DCP's load planner, reading non-tensor values with ``weights_only=True``."""
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner, set_element

    class SafePlanner(DefaultLoadPlanner):
        def load_bytes(self, read_item: Any, value: Any) -> None:
            loaded = torch.load(value, weights_only=True)
            if self.flatten_state_dict:
                set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], loaded)
            else:
                self.state_dict[read_item.dest_index.fqn] = loaded

    return SafePlanner()


def _writer(path: str) -> Any:
    from torch.distributed.checkpoint import FileSystemWriter

    if "://" in path:
        from torch.distributed.checkpoint._fsspec_filesystem import FsspecWriter

        return FsspecWriter(path)
    return FileSystemWriter(path)


@dataclass
class _Pending:
    future: Future
    step: int
    folder: Location
    extra: dict[str, Any]


def _as_given(folder: Location) -> Path | str:
    """A local folder as a ``Path``, a remote one as its URL."""
    return folder.text if folder.remote else folder.path


class ShardedCheckpoints:
    """Writes and prunes the run's DCP checkpoints, on the local disk or at an fsspec URL; optionally asynchronously.

    Args:
        directory: The checkpoint folder: a path, or a URL (``s3://bucket/run/checkpoints``; fsspec and the scheme's
            package installed; every rank must reach it).
        runtime: Every rank creates one and calls ``save``/``wait`` together.
        keep: How many most recent checkpoints to keep.
        asynchronous: ``dcp.async_save``: the state is copied to host memory and written in the background while
            training goes on; the checkpoint becomes ``latest`` at the next ``save`` or ``wait``, once complete.
    """

    def __init__(self, directory: Path | str, runtime: Runtime, keep: int = 2, asynchronous: bool = False):
        self.directory, self.runtime, self.keep, self.asynchronous = Location(directory), runtime, keep, asynchronous
        self.pending: _Pending | None = None

    def save(self, step: int, model: nn.Module, optimizer: torch.optim.Optimizer, extra: dict[str, Any],
             tensors: dict[str, dict[str, torch.Tensor]] | None = None) -> Path | str:
        """Writes this rank's shard of step ``step`` (and rank 0 the rest); returns the checkpoint's folder.

        ``tensors``: more state sharded like the parameters, saved beside them by name (``{"ema": {...}}``).

        Raises:
            CheckpointSaveError: a shard could not be written; ``latest`` still names the previous checkpoint.
        """
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict

        self.wait()
        folder = self.directory.child(f"step_{step:08d}")
        if self.runtime.is_main:
            folder.remove()  # a folder left by a save that was killed
            folder.mkdir()
        barrier(self.runtime)
        model_state, optimizer_state = get_state_dict(model, optimizer)
        state = {"model": model_state, "optimizer": optimizer_state, **(tensors or {})}
        try:
            if self.asynchronous:
                future = dcp.async_save(state, storage_writer=_writer(str(folder)))
                self.pending = _Pending(future, step, folder, extra)  # type: ignore[arg-type]
                return _as_given(folder)
            with warnings.catch_warnings():  # a world of one writes its one shard, as intended
                warnings.filterwarnings("ignore", message="torch.distributed is disabled")
                dcp.save(state, storage_writer=_writer(str(folder)))
        except OSError as e:
            raise CheckpointSaveError(f"could not write the step-{step} checkpoint in {folder}: {e.strerror or e}; "
                                      "the previous checkpoint is intact") from None
        self._commit(step, folder, extra)
        return _as_given(folder)

    def wait(self) -> None:
        """Finishes an asynchronous save still in flight: waits for every shard, then moves ``latest`` to it."""
        if self.pending is None:
            return
        pending, self.pending = self.pending, None
        pending.future.result()
        self._commit(pending.step, pending.folder, pending.extra)

    def _commit(self, step: int, folder: Location, extra: dict[str, Any]) -> None:
        """Once every rank's shard is written: ``extra.pt``, the record, then ``latest`` (rank 0); prunes."""
        from clipforge.train.checkpoint import LATEST

        barrier(self.runtime)
        if self.runtime.is_main:
            buffer = io.BytesIO()
            torch.save({**extra, "format": "dcp"}, buffer)
            try:
                folder.child(EXTRA).write_bytes(buffer.getvalue())
                record = json.dumps({"folder": folder.name, "step": step, "files": folder.file_sizes()})
                folder.sibling(folder.name + ".json").write_bytes(record.encode() + b"\n")
                self.directory.child(LATEST).write_bytes(f"{folder.name}\n".encode())
            except OSError as e:
                raise CheckpointSaveError(f"could not finish the step-{step} checkpoint in {folder}: "
                                          f"{e.strerror or e}; the previous checkpoint is intact") from None
            steps = [c for c in self.directory.children() if _STEP_FOLDER.fullmatch(c.name)]
            for old in steps[:-self.keep]:
                if old != folder:
                    old.remove()
                    old.sibling(old.name + ".json").remove()
        barrier(self.runtime)


def verify_folder(path: Path | str) -> str | None:
    """Why the sharded checkpoint folder ``path`` is not complete (a file missing or of another size than recorded),
    or ``None`` when it is."""
    folder = Location(path)
    if not folder.is_dir():
        return "missing"
    try:
        record = json.loads(folder.sibling(folder.name + ".json").read_bytes())
        files = dict(record["files"])
    except (OSError, ValueError, KeyError, TypeError):
        return "no record of a completed save (killed while saving?)"
    present = folder.file_sizes()
    for name, size in files.items():
        if present.get(name) != size:
            return f"{name}: {present.get(name, 'missing')}, {size} bytes recorded"
    return None


def resolve_remote(spec: str, directory: str) -> str | None:
    """``resolve_checkpoint`` for a checkpoint folder at a URL: ``latest`` (``None`` when there is none yet; the
    newest complete folder, with a warning, when the one it names is not) or a folder's URL.

    Raises:
        CheckpointLoadError: ``latest`` names something other than a ``step_<N>`` folder beside it.
        FileNotFoundError: no complete checkpoint.
    """
    from clipforge.train.checkpoint import LATEST

    if spec != LATEST:
        return spec
    folder = Location(directory)
    pointer = folder.child(LATEST)
    if not pointer.is_file():
        return None
    name = pointer.read_bytes().decode(errors="replace").strip()
    if not _STEP_FOLDER.fullmatch(name):
        raise CheckpointLoadError(f"{pointer}: must name a step_<N> folder beside it, got {name[:80]!r}")
    problem = verify_folder(folder.child(name).text)
    if problem is None:
        return folder.child(name).text
    for candidate in reversed([c for c in folder.children() if _STEP_FOLDER.fullmatch(c.name)]):
        if candidate.name != name and verify_folder(candidate.text) is None:
            warnings.warn(f"{folder.child(name)}: {problem}; resuming from {candidate.name}, the newest intact "
                          "checkpoint", stacklevel=2)
            return candidate.text
    raise FileNotFoundError(f"{pointer} names {name} ({problem}) and {directory} holds no other complete checkpoint")


def read_extra(path: Path | str) -> dict[str, Any]:
    """The checkpoint folder's ``extra.pt`` (step, data position, RNGs, config), read with ``weights_only``."""
    where = Location(path).child(EXTRA)
    try:
        extra = torch.load(io.BytesIO(where.read_bytes()), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointLoadError(f"{path}: no {EXTRA}; not a complete clipforge sharded checkpoint") from None
    except Exception as e:  # weights_only refusals and damaged files alike
        raise CheckpointLoadError(f"{where}: not a readable checkpoint file: {str(e)[:300]}") from None
    if not isinstance(extra, dict) or extra.get("format") != "dcp" or "step" not in extra:
        raise CheckpointLoadError(f"{where}: not a clipforge sharded checkpoint (no format/step entries)")
    return extra


def load_sharded(path: Path | str, model: nn.Module, optimizer: torch.optim.Optimizer | None,
                 tensors: dict[str, dict[str, torch.Tensor]] | None = None) -> dict[str, Any]:
    """Reads the checkpoint folder into ``model`` (and ``optimizer``), resharding to this process group's layout.

    Every rank calls it together. ``optimizer`` may be ``None`` (weights only). ``tensors`` (``{"ema": {...}}``) are
    read in place when the checkpoint holds them; an entry it does not hold is removed from ``tensors``.

    Returns:
        The checkpoint's ``extra.pt`` (step, data position, RNG states, config).

    Raises:
        CheckpointLoadError: the folder is not a readable sharded checkpoint, or it holds another model (names the
            missing or unexpected entries, or the tensor whose shape differs).
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

    extra = read_extra(path)
    if optimizer is None:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

        state: dict[str, Any] = {"model": get_model_state_dict(model)}
    else:
        model_state, optimizer_state = get_state_dict(model, optimizer)
        state = {"model": model_state, "optimizer": optimizer_state}
    saved = _check_same_model(path, state["model"])
    for name in list(tensors or {}):
        assert tensors is not None
        if any(key.startswith(f"{name}.") for key in saved):
            state[name] = tensors[name]
        else:
            del tensors[name]
    if optimizer is not None:  # parameters that never had a gradient when it was saved have no Adam state there
        state["optimizer"]["state"] = {name: value for name, value in state["optimizer"]["state"].items()
                                       if any(key.startswith(f"optimizer.state.{name}.") for key in saved)}
    try:
        with warnings.catch_warnings():  # a world of one reads the shards itself, as intended
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            dcp.load(state, storage_reader=_reader(str(path)), planner=_planner())
    except CheckpointLoadError:
        raise
    except Exception as e:  # DCP reports a foreign checkpoint in many ways
        raise CheckpointLoadError(f"{path}: could not read it into this run's model and optimiser: "
                                  f"{str(e).splitlines()[0][:300]}") from None
    if optimizer is None:
        set_model_state_dict(model, state["model"])
    else:
        # strict=False: a parameter without Adam state in the checkpoint (no gradient yet) starts without one, as it
        # was; the model's own entries were checked above.
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"],
                       options=StateDictOptions(strict=False))
    return extra


def _check_same_model(path: Path | str, model_state: dict[str, Any]) -> set[str]:
    """Compares the index's model entries with this model's (names and whole shapes) before any read; returns every
    key the index holds."""
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    metadata = _reader(str(path)).read_metadata()
    saved = {k[len("model."):]: v for k, v in metadata.state_dict_metadata.items() if k.startswith("model.")}
    missing = sorted(set(model_state) - set(saved))
    unexpected = sorted(set(saved) - set(model_state))
    if missing or unexpected:
        raise CheckpointLoadError(f"{path} holds another model: missing {missing[:5]}, unexpected {unexpected[:5]}"
                                  f"{' …' if len(missing) > 5 or len(unexpected) > 5 else ''}")
    for name, tensor in model_state.items():
        entry = saved[name]
        if isinstance(entry, TensorStorageMetadata) and tuple(entry.size) != tuple(tensor.shape):
            raise CheckpointLoadError(f"{path} holds another model: {name} has shape {tuple(entry.size)} there, "
                                      f"{tuple(tensor.shape)} in this run's model")
    return set(metadata.state_dict_metadata)


def consolidate(path: Path) -> tuple[nn.Module, dict[str, Any]]:
    """The whole model of a sharded checkpoint folder, read in this process alone (no process group needed).

    Returns:
        The model (built from the checkpoint's model config, in eval mode) and the checkpoint's ``extra.pt``.
    """
    from clipforge.models.config import model_config_from_dict
    from clipforge.models.factory import build_model

    extra = read_extra(path)
    model = build_model(model_config_from_dict(extra["model_config"], f"{path / EXTRA}: model_config"))
    load_sharded(path, model, None)
    return model.eval(), extra
