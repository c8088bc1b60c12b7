"""The fuzzing harness: hypothesis property tests over every parser of outside input.

Each ``test_fuzz_*.py`` here feeds generated and mutated input to one parser (image decoders, the tar reader,
the config loader and override parser, the checkpoint readers, the tokenizer, the renderer) and checks that it
either succeeds or raises the parser's documented error, never anything else, within bounded memory and time.

Budgets (hypothesis profiles, chosen by ``HYPOTHESIS_PROFILE``):
- ``ci`` (the default): a few dozen examples per target, seconds each, in the default test run;
- ``fuzz``: thousands per target, for ``make fuzz``.

A crasher that a run finds is kept as a regression case: a file under ``tests/fuzz/regressions/<target>/``
(replayed by that target's test on every run) or an ``@example`` on the property.
"""

from __future__ import annotations

import os
from pathlib import Path

from hypothesis import HealthCheck, settings

REGRESSIONS = Path(__file__).parent / "regressions"

settings.register_profile("ci", max_examples=40, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("fuzz", max_examples=5000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def regression_cases(target: str) -> list[Path]:
    """The saved crashers of one fuzz target (files under ``regressions/<target>/``), sorted."""
    folder = REGRESSIONS / target
    return sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []
