"""Runs ``clipforge`` in this process with one fault injected into checkpoint saving, then dies as a killed
process would (SIGKILL: no clean-up, no flush). For the training fault matrix (tests/train/test_fault_matrix.py).

    python tests/helpers/faults.py FAULT SAVE -- train KEY=VALUE ...

FAULT is where the process dies during its SAVE-th checkpoint save (1-based):
- ``mid_write``: half of the checkpoint's bytes are in its temporary file;
- ``before_record``: the checkpoint file is in place, its size/SHA-256 record is not;
- ``before_latest``: file and record are in place, ``latest`` still names the previous checkpoint.
"""

from __future__ import annotations

import io
import os
import signal
import sys
from pathlib import Path


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def install(fault: str, save: int) -> None:
    """Wraps ``clipforge.train.checkpoint._atomic_write`` so that the process dies as ``fault`` says."""
    from clipforge.train import checkpoint

    real = checkpoint._atomic_write
    saves = {"n": 0}

    def faulty(path: Path, write) -> None:
        if path.suffix == ".pt":
            saves["n"] += 1
        if saves["n"] == save:
            if fault == "mid_write" and path.suffix == ".pt":
                buffer = io.BytesIO()
                write(buffer)
                tmp = path.parent / f".{path.name}.killed.tmp"
                with tmp.open("wb") as f:
                    f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
                    f.flush()
                    os.fsync(f.fileno())
                _die()
            if (fault == "before_record" and path.suffix == ".json") or (fault == "before_latest"
                                                                           and path.name == checkpoint.LATEST):
                _die()
        real(path, write)

    checkpoint._atomic_write = faulty


if __name__ == "__main__":
    fault, save, sep, *argv = sys.argv[1:]
    assert sep == "--", "usage: faults.py FAULT SAVE -- clipforge arguments"
    install(fault, int(save))
    from clipforge.cli.main import main

    sys.exit(main(argv))
