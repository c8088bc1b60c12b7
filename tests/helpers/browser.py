"""Headless Chromium for the page tests: Debian's ``chromium`` package driven by Playwright for Python.

:func:`chromium_path` finds the browser (``$CLIPFORGE_BROWSER`` overrides), installing Debian's ``chromium``
package with apt-get when it is missing and the process may (root, apt-get present): CI images start without it.
Otherwise the test fails with a message naming the package; it is never skipped silently.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ENV = "CLIPFORGE_BROWSER"
DEBIAN_PATH = "/usr/bin/chromium"
PACKAGE = "chromium"
# Headless, no sandbox (containers run the tests as root), no GPU, and nothing that phones home.
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium_path() -> str:
    """The Chromium executable to drive.

    Raises:
        RuntimeError: ``$CLIPFORGE_BROWSER`` names no executable file, or Chromium is missing and cannot be
            installed here (not root, no apt-get, or the install failed: the message names the log).
    """
    override = os.environ.get(ENV)
    if override:
        if not (os.path.isfile(override) and os.access(override, os.X_OK)):
            raise RuntimeError(f"${ENV}={override!r} is not an executable file")
        return override
    found = shutil.which("chromium") or (DEBIAN_PATH if os.access(DEBIAN_PATH, os.X_OK) else None)
    if found:
        return found
    apt = shutil.which("apt-get")
    if apt is None or os.geteuid() != 0:
        raise RuntimeError(f"the page tests need Chromium: install Debian's {PACKAGE!r} package "
                           f"(apt-get install -y {PACKAGE}) or set ${ENV} to a Chromium executable"
                           + ("" if apt else " (no apt-get here)") + ("" if os.geteuid() == 0 else " (not root)"))
    log = Path(tempfile.gettempdir()) / "clipforge-chromium-apt.log"
    with log.open("w") as out:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        ok = all(subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, check=False).returncode == 0
                 for cmd in ([apt, "update"], [apt, "install", "-y", "--no-install-recommends", PACKAGE]))
    found = shutil.which("chromium") or (DEBIAN_PATH if os.access(DEBIAN_PATH, os.X_OK) else None)
    if not ok or found is None:
        raise RuntimeError(f"installing Debian's {PACKAGE!r} package with apt-get failed; see {log}")
    return found


@contextmanager
def launched_chromium() -> Iterator[Any]:
    """Headless Chromium launched through Playwright's sync API (:func:`chromium_path`, ``ARGS``); closed on exit."""
    from playwright import sync_api

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=ARGS)
        try:
            yield browser
        finally:
            browser.close()
