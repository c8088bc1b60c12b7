"""The package layout holds: dependencies point one way, nothing inside imports the public ``__init__``, and no
source file outgrows one sitting (docs/development.md describes the same rules)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).parents[1] / "src" / "clipforge"
MODULES = sorted(p for p in SRC.rglob("*.py"))
# package -> packages it must never import
FORBIDDEN = {
    "config": {"models", "text", "checkpoints", "data", "train", "eval", "cli", "vqa"},
    "models": {"train", "data", "eval", "cli", "checkpoints", "vqa"},
    "text": {"train", "data", "eval", "cli", "checkpoints", "vqa"},
    "checkpoints": {"train", "data", "eval", "cli", "vqa"},
    "data": {"train", "eval", "cli", "vqa"},
    "eval": {"train", "cli", "vqa"},
    "train": {"cli", "vqa"},
    "vqa": {"cli"},
    "search": {"train", "cli", "vqa"},
    "export": {"train", "data", "eval", "cli", "vqa", "deploy"},
    # The torch-free runtime: numpy, PIL, onnxruntime, text/ and config.py only (tests/deploy runs it without torch).
    "deploy": {"models", "train", "data", "eval", "cli", "checkpoints", "vqa", "export", "api", "transforms"},
}


def _imports(path: Path) -> list[str]:
    """Every module name ``path`` imports (absolute names; relative imports are not used in this package)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names += [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
    return names


def _package(path: Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0].removesuffix(".py") if len(rel.parts) > 1 or rel.name != "__init__.py" else ""


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(SRC)))
def test_no_internal_module_imports_the_public_package(path):
    if path == SRC / "__init__.py":
        return
    for name in _imports(path):
        assert name != "clipforge" and not (name.startswith("clipforge.") and name.count(".") == 1 and
                                            not (SRC / f"{name.split('.')[1]}.py").exists() and
                                            not (SRC / name.split(".")[1]).is_dir()), \
            f"{path.relative_to(SRC)} imports {name!r} from the public clipforge/__init__.py"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(SRC)))
def test_dependencies_point_one_way(path):
    forbidden = FORBIDDEN.get(_package(path), set())
    for name in _imports(path):
        parts = name.split(".")
        if parts[0] == "clipforge" and len(parts) > 1:
            assert parts[1] not in forbidden, f"{path.relative_to(SRC)} imports {name} ({parts[1]}/ is above it)"


def test_nothing_imports_the_cli():
    """Only the command line (cli/, the VQA package's verbs, ``python -m clipforge``) imports ``clipforge.cli``."""
    for path in MODULES:
        if _package(path) == "cli" or path in (SRC / "vqa" / "cli.py", SRC / "__main__.py"):  # python -m clipforge
            continue
        assert not any(n.startswith("clipforge.cli") for n in _imports(path)), path


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(SRC)))
def test_source_files_read_in_one_sitting(path):
    assert len(path.read_text().splitlines()) <= 500, f"{path.relative_to(SRC)} is over 500 lines"


def test_the_checker_sees_a_violation(tmp_path):
    """The import scan finds what it looks for (so the tests above can fail)."""
    bad = tmp_path / "bad.py"
    bad.write_text("import clipforge\nfrom clipforge.train.loop import train\n")
    assert _imports(bad) == ["clipforge", "clipforge.train.loop", "clipforge.train.loop.train"]
