"""The measured figures in ``benchmarks/results/`` and the links of the README and ``docs/``.

Every figure quoted in the README or in ``docs/`` comes from a JSON file in ``benchmarks/results/``; these
tests check that each file says when, where, with what and by which command it was measured, that the
command names something in this repository, and that every relative link of the Markdown pages resolves.
"""

from __future__ import annotations

import datetime
import functools
import importlib.util
import json
import re
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"
REQUIRED = ("date", "machine", "versions", "command", "output", "source")
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])
RESULT_FILES = sorted(p for p in RESULTS.iterdir() if p.is_file()) if RESULTS.is_dir() else []

_ENV = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=\S*$")
_LINK = re.compile(r"""\[[^\]]*\]\(\s*([^)\s]+)(?:\s+(?:"[^"]*"|'[^']*'))?\s*\)""")
_FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
_CODE = re.compile(r"`[^`\n]*`")


def _load(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _commands(obj: Any) -> list[str]:
    """Every value of a ``command`` key, at any depth."""
    if isinstance(obj, dict):
        found = [v for k, v in obj.items() if k == "command"]
        return found + [c for v in obj.values() for c in _commands(v)]
    if isinstance(obj, list):
        return [c for v in obj for c in _commands(v)]
    return []


@functools.cache
def _cli_verbs() -> frozenset[str]:
    """Names the ``clipforge`` command registers (``add_parser("name"``), read from the package's source."""
    text = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "src/clipforge").rglob("*.py"))
    return frozenset(re.findall(r"add_parser\(\s*\"([\w-]+)\"", text))


def _make_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    return {t for line in re.findall(r"^([\w .-]+):(?!=)", text, re.M) for t in line.split()}


def _module_exists(name: str) -> bool:
    """A module of this repository's ``src/`` (``clipforge.*``), or an installed top-level package."""
    if name.split(".")[0] == "clipforge":
        source = ROOT / "src" / Path(*name.split("."))
        return source.with_suffix(".py").is_file() or (source / "__init__.py").is_file()
    return importlib.util.find_spec(name.split(".")[0]) is not None


def command_problem(command: Any) -> str | None:
    """Why ``command`` does not name something in this repository, or ``None`` when it does.

    Accepted: ``clipforge VERB ...`` (a registered verb), ``make TARGET`` (a Makefile target),
    ``python -m MODULE`` (in ``src/`` or installed), ``python PATH`` / ``bash PATH`` (an existing file),
    each optionally after ``VAR=value`` environment assignments.
    """
    if not isinstance(command, str) or not command.strip():
        return "not a non-empty string"
    tokens = command.split()
    while tokens and _ENV.match(tokens[0]):
        tokens = tokens[1:]
    if not tokens:
        return "only environment assignments"
    head, rest = tokens[0], tokens[1:]
    if head == "clipforge":
        if not rest or rest[0] not in _cli_verbs():
            return f"'clipforge {rest[0] if rest else ''}' is not a registered verb"
        return None
    if head == "make":
        targets = [t for t in rest if not t.startswith("-") and "=" not in t] or ["all"]
        missing = [t for t in targets if t not in _make_targets()]
        return f"no Makefile target {missing}" if missing else None
    if head in ("python", "python3", "bash", "sh"):
        if rest[:1] == ["-m"]:
            if len(rest) < 2 or not _module_exists(rest[1]):
                return f"no module {rest[1:2]}"
            return None
        if not rest:
            return "no script"
        script = ROOT / rest[0]
        if not script.is_file():
            return f"{rest[0]} does not exist"
        return None
    return f"starts with {head!r}, not clipforge, make, python or bash"


def _links(page: Path) -> list[str]:
    text = _CODE.sub("", _FENCE.sub("", page.read_text(encoding="utf-8")))
    return _LINK.findall(text)


def _relative(target: str) -> bool:
    return not re.match(r"[a-z][a-z0-9+.-]*:", target, re.I) and not target.startswith("#")


def test_results_folder_has_files() -> None:
    assert RESULT_FILES, f"{RESULTS} holds no results"


@pytest.mark.parametrize("path", RESULT_FILES, ids=lambda p: p.name)
def test_result_file_is_complete(path: Path) -> None:
    assert path.suffix == ".json", f"{path.name}: results are JSON files"
    data = _load(path)
    assert isinstance(data, dict), f"{path.name}: not a JSON object"
    missing = [k for k in REQUIRED if k not in data]
    assert not missing, f"{path.name}: missing keys {missing}"
    date = datetime.date.fromisoformat(data["date"])  # raises on anything but YYYY-MM-DD
    assert path.name.startswith(f"{date.isoformat()}-"), f"{path.name}: the name should start with {date}"
    assert isinstance(data["machine"], str) and data["machine"].strip(), f"{path.name}: machine"
    assert isinstance(data["versions"], dict), f"{path.name}: versions is not an object"
    assert all(isinstance(v, str) for v in data["versions"].values()), f"{path.name}: versions are strings"
    assert isinstance(data["source"], str) and data["source"].strip(), f"{path.name}: source"
    assert data["output"] and isinstance(data["output"], (dict, list)), f"{path.name}: output is empty"


@pytest.mark.parametrize("path", RESULT_FILES, ids=lambda p: p.name)
def test_result_commands_name_something_here(path: Path) -> None:
    commands = _commands(_load(path))
    problems = {c: command_problem(c) for c in commands}
    assert commands and not any(problems.values()), f"{path.name}: {problems}"


@pytest.mark.parametrize(("command", "ok"), [
    ("python benchmarks/train_step.py --model tiny-vit", True),
    ("PYTHONPATH=src python benchmarks/tokenizer.py --n 100000", True),
    ("bash benchmarks/gpu.sh OUTDIR", True),
    ("clipforge quickstart --model clippo-tiny", True),
    ("python -m clipforge.cli.main train", True),
    ("make demo", True),
    ("python benchmarks/no_such_benchmark.py", False),
    ("clipforge no-such-verb", False),
    ("make no-such-target", False),
    ("python -m clipforge.no_such_module", False),
    ("./run.sh", False),
    ("", False),
])
def test_command_check_knows_good_from_bad(command: str, ok: bool) -> None:
    assert (command_problem(command) is None) == ok, command_problem(command)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path) -> None:
    broken = []
    for target in filter(_relative, _links(page)):
        path = target.split("#", 1)[0]
        if path and not (page.parent / path).resolve().exists():
            broken.append(target)
    assert not broken, f"{page.relative_to(ROOT)}: broken links {broken}"


def test_every_results_file_is_quoted() -> None:
    linked = {(page.parent / t.split("#", 1)[0]).resolve() for page in PAGES for t in filter(_relative, _links(page))}
    unquoted = [p.name for p in RESULT_FILES if p.resolve() not in linked]
    assert not unquoted, f"results no page or note links to: {unquoted}"


def test_readme_links_every_docs_page() -> None:
    readme = ROOT / "README.md"
    linked = {(ROOT / t.split("#", 1)[0]).resolve() for t in filter(_relative, _links(readme))}
    pages = sorted((ROOT / "docs").glob("*.md"))
    assert pages, "docs/ has no pages"
    unlinked = [p.name for p in pages if p.resolve() not in linked]
    assert not unlinked, f"README.md does not link {unlinked}"


def test_link_finder_sees_links_outside_code_only() -> None:
    page = "see [a](docs/a.md) and `[b](b.md)`\n```\n[c](c.md)\n```\n[d](d.md 'title') [e](https://x.org) [f](#top)\n"
    text = _CODE.sub("", _FENCE.sub("", page))
    assert [t for t in _LINK.findall(text) if _relative(t)] == ["docs/a.md", "d.md"]
