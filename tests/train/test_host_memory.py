"""``keep_freed_memory``: a step's large tensors reuse freed memory instead of faulting in fresh pages.

Each case runs in its own interpreter: the setting is process-wide and one-way, so the pytest process itself
cannot show the behaviour before and after it.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import textwrap

import pytest

GLIBC = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the thresholds are glibc's malloc's")

# A 64 MiB tensor is above glibc's largest adaptive mmap threshold (32 MiB): without the setting every one is a
# fresh mapping, 16,384 first-touch faults of 4 KiB pages. With it, the heap grows once and then serves them all.
PROBE = textwrap.dedent("""
    import json, resource, sys
    import torch
    from clipforge.train.host_memory import keep_freed_memory
    applied = keep_freed_memory() if sys.argv[1] == "on" else False
    again = keep_freed_memory() if sys.argv[1] == "on" else False
    def faults():
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.zeros(16 << 20)  # the first one faults in either case
    start = faults()
    for _ in range(20):
        x = torch.zeros(16 << 20)  # 64 MiB of float32
        del x
    print(json.dumps({"applied": applied, "again": again, "faults": faults() - start}))
""")


def _probe(mode: str, **env: str) -> dict:
    import os

    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True,
                         env={**os.environ, **env})
    return json.loads(out.stdout)


@GLIBC
def test_freed_memory_is_reused_without_page_faults():
    off, on = _probe("off"), _probe("on")
    assert on["applied"] and on["again"]  # idempotent: the second call reports the same
    one = (64 << 20) // 4096  # the pages of one allocation
    assert off["faults"] > 15 * one  # (nearly) each of the 20 allocations maps and touches fresh pages
    assert on["faults"] < 2 * one  # the same memory serves them


@GLIBC
def test_environment_turns_it_off():
    result = _probe("on", CLIPFORGE_KEEP_FREED_MEMORY="0")
    assert not result["applied"]
    assert result["faults"] > 15 * (64 << 20) // 4096


def test_training_on_the_cpu_applies_it(tmp_path, one_thread, monkeypatch):
    import clipforge.train.loop as loop
    from clipforge.train import Runtime, load_config, parse_overrides, train

    calls = []
    monkeypatch.setattr(loop, "keep_freed_memory", lambda: calls.append(True) or True)
    tiny = ["model_overrides.embed_dim=32", "model_overrides.vision.image_size=32",
            "model_overrides.vision.patch_size=8", "model_overrides.vision.width=32", "model_overrides.vision.layers=1",
            "model_overrides.vision.heads=2", "model_overrides.text.width=32", "model_overrides.text.heads=2",
            "model_overrides.text.layers=1", "model_overrides.text.context_length=16", "data.train_size=200",
            "eval.size=20", "eval.retrieval_size=8", "schedule.warmup_steps=1"]
    config = load_config(None, parse_overrides([*tiny, "steps=2", "batch_size=8", "plots=false",
                                                f"output_dir={tmp_path}"]))
    train(config, Runtime())
    assert calls == [True]
