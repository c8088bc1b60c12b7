"""Training-state checkpoints: atomic writes, a ``latest`` pointer written last, exact resume.

A checkpoint is one ``torch.save`` file ``<run>/checkpoints/step_00001000.pt`` holding the model,
optimiser, schedule position, step, data position, every rank's RNG states and the resolved config, all as
tensors and plain Python values: it is read back with ``torch.load(weights_only=True)``, so a crafted file
cannot run code when a run resumes from it. ``latest`` may only name a ``step_*.pt`` file in its own folder.
Each file is written to a temporary name, fsynced and renamed into place (``os.replace`` is atomic on
POSIX); then its size and SHA-256 go into ``step_<N>.json`` beside it, and only then is ``latest`` (a one-line
file naming it) replaced the same way. A process killed at any moment leaves either the previous checkpoint or
the new one, never half of one. Resuming verifies the checkpoint against its record; when ``latest`` names a
missing, truncated or altered file, the newest intact checkpoint is used instead, with a warning. Temporary
files of saves that were killed are removed when a run starts (``remove_stale_temp_files``).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import random
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

LATEST = "latest"
_STEP_FILE = re.compile(r"step_\d+(\.pt)?")  # a file (parallel: ddp) or a Distributed Checkpoint folder (fsdp)


class CheckpointSaveError(OSError):
    """A checkpoint could not be written (a full disk, a file-size limit, a read-only folder); the previous
    checkpoint and ``latest`` are untouched."""


class CheckpointLoadError(ValueError):
    """A training checkpoint cannot be read safely: damaged, foreign, or holding more than tensors and plain values."""


class _RecordingFile:
    """A binary file that remembers the first ``OSError`` its writes raised: ``torch.save`` reports a failed write
    (a full disk) only as a ``RuntimeError`` about positions, which would hide the cause."""

    def __init__(self, f: Any) -> None:
        self.f, self.error = f, None

    def write(self, data: Any) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = self.error or e
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self.f, name)


def _atomic_write(path: Path, write: Any) -> None:
    """Writes via ``write(file)`` to a temporary file beside ``path``, fsyncs, and renames it over ``path``.

    Raises:
        OSError: a write failed (the temporary file is removed; ``path`` is untouched).
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            recording = _RecordingFile(f)
            try:
                write(recording)
            except Exception:
                if recording.error is not None:
                    raise recording.error from None
                raise
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def save_checkpoint(directory: str | Path, step: int, state: dict[str, Any], keep: int = 2) -> Path:
    """Saves ``state`` as ``step_<step>.pt`` in ``directory``, points ``latest`` at it, prunes old ones.

    Args:
        directory: The checkpoint folder (created if needed).
        step: The number of optimiser steps taken; names the file.
        state: Anything ``torch.save`` can write.
        keep: How many most recent checkpoints to keep.

    Returns:
        The checkpoint's path.

    Raises:
        CheckpointSaveError: the folder or a file could not be written (a full disk, a file-size limit).
    """
    directory = Path(directory)
    path = directory / f"step_{step:08d}.pt"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        _atomic_write(path, lambda f: torch.save(state, f))
        record = json.dumps({"file": path.name, "size": path.stat().st_size, "sha256": _sha256(path)})
        _atomic_write(path.with_suffix(".json"), lambda f: f.write(record.encode() + b"\n"))
        _atomic_write(directory / LATEST, lambda f: f.write(f"{path.name}\n".encode()))
    except OSError as e:  # nothing half-written stays: _atomic_write removed its temporary file
        raise CheckpointSaveError(f"could not write the step-{step} checkpoint in {directory}: "
                                  f"{e.strerror or e}; the previous checkpoint is intact: free space and resume "
                                  "with --resume latest") from None
    for old in sorted(directory.glob("step_*.pt"))[:-keep]:
        if old != path:
            old.unlink(missing_ok=True)
            old.with_suffix(".json").unlink(missing_ok=True)
    return path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_checkpoint(path: str | Path) -> str | None:
    """Why the checkpoint at ``path`` is not intact (missing, or its size or SHA-256 differs from the record
    written at save), or ``None`` when it is. A checkpoint without a record (written before records existed)
    counts as intact when it is not empty; ``load_checkpoint`` still checks it can be read."""
    path = Path(path)
    if not path.is_file():
        return "missing"
    size = path.stat().st_size
    try:
        record = json.loads(path.with_suffix(".json").read_text())
    except (OSError, ValueError):
        return None if size else "empty"
    if not isinstance(record, dict) or record.get("size") != size:
        return f"{size} bytes, {record.get('size') if isinstance(record, dict) else '?'} recorded (truncated?)"
    if record.get("sha256") != _sha256(path):
        return "its SHA-256 differs from the one recorded at save (damaged)"
    return None


def _verify(path: Path) -> str | None:
    """``verify_checkpoint`` for a file, ``clipforge.train.dcp.verify_folder`` for a sharded checkpoint folder."""
    if path.is_dir():
        from clipforge.train.dcp import verify_folder

        return verify_folder(path)
    return verify_checkpoint(path)


def check_whole_checkpoint(path: Path, model: torch.nn.Module) -> None:
    """Refuses a one-file (``parallel: ddp``) checkpoint for a model FSDP has sharded: its optimiser state is keyed by
    the unsharded parameters' order. (A world of one reads either kind.)

    Raises:
        CheckpointLoadError: naming the file and the way out.
    """
    from clipforge.train.fsdp import is_sharded

    if any(is_sharded(p) for p in model.parameters()):
        raise CheckpointLoadError(f"{path} is a one-file checkpoint of a parallel: ddp run; a parallel: fsdp run on "
                                  "several ranks resumes Distributed Checkpoint folders: resume it with parallel: ddp, "
                                  "or on one process, which reads both kinds")


def restore_rng(saved: list[dict[str, Any]], runtime: Any, seed: int, step: int) -> None:
    """Restores this rank's RNG states from a checkpoint's ``rng`` list (one entry per rank that saved it).

    On the same number of ranks each rank takes its own states: the resumed run draws what the uninterrupted one
    would have. On another number (a resharded resume) the ranks' random streams cannot continue; each rank is
    seeded from ``(seed, rank, step)`` instead, which changes only random model ops (dropout, patch dropout): the data
    of indexable sources is a function of the global position and continues exactly.
    """
    if len(saved) == runtime.world_size:
        set_rng_state(saved[runtime.rank], runtime.device)
        return
    set_rng_state(saved[0], runtime.device)  # Python's and NumPy's streams (not used per rank)
    torch.manual_seed((seed * 1009 + runtime.rank + 1) * 1_000_003 + step)
    if runtime.is_main:
        warnings.warn(f"the checkpoint was written by {len(saved)} rank(s) and this run has {runtime.world_size}: "
                      "random model ops (dropout) are reseeded from (seed, rank, step)", stacklevel=2)


def remove_stale_temp_files(directory: str | Path) -> list[Path]:
    """Deletes the temporary files that saves killed mid-write left in ``directory``; returns what it removed.

    Call it only while no save can be running (at the start of a run, on rank 0)."""
    directory = Path(directory)
    stale = sorted(directory.glob(".*.tmp")) if directory.is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def resolve_checkpoint(spec: str | Path, directory: str | Path) -> Path | None:
    """The checkpoint ``spec`` names: ``latest`` (``None`` when there is none yet) or a path.

    ``latest`` must hold the bare name of a ``step_<N>.pt`` file in ``directory``: a pointer that leads
    anywhere else (another folder, ``..``, an absolute path, a link out of the folder) is refused. When the
    file it names is missing or fails ``verify_checkpoint`` (or ``latest`` itself is damaged), the newest
    intact ``step_<N>.pt`` of the folder is used, with a warning naming what was wrong.

    Raises:
        FileNotFoundError: ``spec`` is a path that does not exist, or no checkpoint of the folder is intact.
        CheckpointLoadError: ``latest`` points outside its checkpoint folder.
    """
    directory = Path(directory)
    if str(spec) != LATEST:
        path = Path(spec)
        if path.is_dir() and (path / ".metadata").is_file():  # a sharded checkpoint (``clipforge.train.dcp``)
            return path
        if path.is_dir():  # a checkpoint folder, or a run dir holding one
            return resolve_checkpoint(LATEST, path if (path / LATEST).is_file() else path / "checkpoints")
        if not path.is_file():
            raise FileNotFoundError(f"no checkpoint at {path}")
        return path
    pointer = directory / LATEST
    if not pointer.is_file():
        return None
    name = pointer.read_text(errors="replace").strip()
    target = directory / name
    if name and (not _STEP_FILE.fullmatch(name) or target.resolve().parent != directory.resolve()):
        raise CheckpointLoadError(f"{pointer}: must name a step_<N>.pt file in {directory}, got {name[:80]!r}")
    problem = _verify(target) if name else "latest is empty"
    if problem is None:
        return target
    for candidate in sorted((p for p in directory.glob("step_*") if _STEP_FILE.fullmatch(p.name)),
                            key=lambda p: p.name.removesuffix(".pt"), reverse=True):
        if candidate != target and candidate.resolve().parent == directory.resolve() and \
                _verify(candidate) is None:
            warnings.warn(f"{target}: {problem}; resuming from {candidate.name}, the newest intact checkpoint",
                          stacklevel=2)
            return candidate
    raise FileNotFoundError(f"{pointer} names {name or 'nothing'} ({problem}) and {directory} holds no other intact "
                            "checkpoint: start the run again without --resume, or give a checkpoint path")


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Reads a checkpoint written by ``save_checkpoint`` without running any code it may contain.

    Raises:
        CheckpointLoadError: the file is not a readable checkpoint, or it holds objects other than tensors and
            plain values (what a crafted pickle needs to run code); nothing in it is executed.
    """
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointLoadError(f"{path}: refused: it holds objects other than tensors and plain values, so "
                                  f"loading it could run code ({str(e).splitlines()[0][:200]})") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointLoadError(f"{path}: not a readable training checkpoint ({str(e).splitlines()[0][:200]})"
                                  ) from None
    if not isinstance(state, dict) or "model" not in state or "step" not in state:
        raise CheckpointLoadError(f"{path}: not a clipforge training checkpoint (no 'model' and 'step' entries)")
    return state


def rng_state(device: torch.device) -> dict[str, Any]:
    """This process's Python, NumPy, torch (and CUDA) RNG states, as tensors and plain values."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(),
             "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "gauss": float(gauss)},
             "torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    """Restores states captured by ``rng_state``."""
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
