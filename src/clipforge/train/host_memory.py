"""Host memory for training on the CPU: keep the memory a step frees for the next step.

glibc's ``malloc`` serves a large request (a tensor of more than about 128 KiB at first, up to 32 MiB once its
threshold adapts) with a fresh ``mmap`` and hands it back to the kernel on ``free``, and it trims the top of its
heap whenever more than twice that threshold lies free there. A training step allocates and frees the same large
tensors every time (activations, their gradients, a dense gradient of the 49,408-row token table), so each step
pays a page fault for every 4 KiB of them, first touch included: on the quickstart's tiny-rn that is ~13,000
faults and ~13 ms of a ~100 ms step on 2 cores (``benchmarks/quickstart.py``; docs/training.md).

:func:`keep_freed_memory` fixes both thresholds (``mallopt``): requests below 1 GiB come from the heap and freed
memory stays in the process for the next step. The process's peak resident memory is what the step needs, as
before; the difference is that it is not handed back between steps. Only glibc has these knobs; elsewhere
(macOS, musl) it does nothing. ``train()`` calls it for a run on the CPU; ``CLIPFORGE_KEEP_FREED_MEMORY=0`` in
the environment turns it off.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's <malloc.h>
MMAP_THRESHOLD = 1 << 30  # requests at least this large still get their own mapping
FALLBACK_MMAP_THRESHOLD = 32 << 20  # the most that glibc releases older than 2.26 accept
TRIM_THRESHOLD = (1 << 31) - 1  # ``mallopt`` takes an int: never trim in practice

_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Sets glibc's mmap and trim thresholds so that freed memory is reused rather than returned (module docstring).

    Idempotent and process-wide; DataLoader workers forked afterwards inherit it.

    Returns:
        Whether the thresholds are set (``False`` off glibc, or where ``mallopt`` refuses).
    """
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get("CLIPFORGE_KEEP_FREED_MEMORY", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        if not hasattr(libc, "gnu_get_libc_version"):  # musl and others: no such thresholds
            return False
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    mapped = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) or mallopt(M_MMAP_THRESHOLD, FALLBACK_MMAP_THRESHOLD)
    # The trim threshold alone would make things worse: setting it also freezes the mmap threshold at its
    # starting 128 KiB. So the trim threshold is set only once the mmap threshold is.
    _applied = bool(mapped) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _applied
