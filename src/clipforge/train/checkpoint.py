"""Training-state checkpoints: atomic writes, a ``latest`` pointer written last, exact resume.

A checkpoint is one ``torch.save`` file ``<run>/checkpoints/step_00001000.pt`` holding the model,
optimiser, schedule position, step, data position, every rank's RNG states and the resolved config.
Each file is written to a temporary name, fsynced and renamed into place (``os.replace`` is atomic on
POSIX), and only then is ``latest`` (a one-line file naming it) replaced the same way; a process killed
at any moment leaves either the previous checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

LATEST = "latest"


def _atomic_write(path: Path, write: Any) -> None:
    """Writes via ``write(file)`` to a temporary file beside ``path``, fsyncs, and renames it over ``path``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
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
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"step_{step:08d}.pt"
    _atomic_write(path, lambda f: torch.save(state, f))
    _atomic_write(directory / LATEST, lambda f: f.write(f"{path.name}\n".encode()))
    for old in sorted(directory.glob("step_*.pt"))[:-keep]:
        if old != path:
            old.unlink(missing_ok=True)
    return path


def resolve_checkpoint(spec: str | Path, directory: str | Path) -> Path | None:
    """The checkpoint ``spec`` names: ``latest`` (``None`` when there is none yet) or a path.

    Raises:
        FileNotFoundError: ``spec`` is a path that does not exist.
    """
    directory = Path(directory)
    if str(spec) == LATEST:
        pointer = directory / LATEST
        return directory / pointer.read_text().strip() if pointer.is_file() else None
    path = Path(spec)
    if path.is_dir():  # a checkpoint folder, or a run dir holding one
        return resolve_checkpoint(LATEST, path if (path / LATEST).is_file() else path / "checkpoints")
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Reads a checkpoint written by ``save_checkpoint``."""
    return torch.load(path, map_location=map_location, weights_only=False)


def rng_state(device: torch.device) -> dict[str, Any]:
    """This process's Python, NumPy, torch (and CUDA) RNG states."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    """Restores states captured by ``rng_state``."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
