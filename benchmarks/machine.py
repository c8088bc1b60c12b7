"""The machine a benchmark ran on, as its JSON names it: the CPU's model name (``/proc/cpuinfo`` on Linux,
``sysctl`` on macOS), not ``platform.processor()``, which is only ``x86_64`` on most Linux machines."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path


def cpu_name() -> str:
    """The CPU's model name (e.g. ``AMD EPYC 7B13``), or the architecture where the system does not say."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                return value.strip()
    except OSError:
        pass
    if platform.system() == "Darwin":
        try:
            out = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True,
                                 timeout=5)
            if out.returncode == 0 and out.stdout.strip():
                return out.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return platform.processor() or platform.machine()


# The vector extensions that decide which kernels torch and oneDNN pick, widest last.
_ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile", "asimd", "sve")


def cpu_detail() -> dict[str, object]:
    """What tells two machines with the same model name apart (``AMD EPYC`` on many VMs): the CPU family and
    model numbers, the vector extensions torch dispatches on, the caches cpu0 sees (L3 is often shared), and
    the variables that cap the kernels torch and oneDNN pick where they are set (Linux; fewer fields elsewhere)."""
    detail: dict[str, object] = {"model_name": cpu_name()}
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return detail
    first = text.split("\n\n", 1)[0]
    fields = dict((k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in first.splitlines()))
    for key, name in (("cpu family", "family"), ("model", "model")):
        if fields.get(key, "").isdigit():
            detail[name] = int(fields[key])
    flags = set((fields.get("flags") or fields.get("Features") or "").split())
    detail["isa"] = [flag for flag in _ISA_FLAGS if flag in flags]
    caches = {}
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            level, kind, size = ((index / n).read_text().strip() for n in ("level", "type", "size"))
        except OSError:
            continue
        if kind != "Instruction":
            caches[f"L{level}"] = size
    if caches:
        detail["caches"] = caches
    capped = {k: os.environ[k] for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA") if k in os.environ}
    if capped:
        detail["isa_capped_by"] = capped
    return detail
