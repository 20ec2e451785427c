"""The import rules of pyproject.toml ([tool.importlinter]) hold for the tree, and break when a
lower module imports a higher one: checked on a copy of the packages with such an import added."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

LINT = Path(sys.executable).parent / "lint-imports"


def lint(tree: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(LINT), "--no-cache"], cwd=tree, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(tree)}, timeout=120)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    for package in ("runtime", "serve"):
        shutil.copytree(ROOT / package, tmp_path / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_tree_keeps_every_contract(tree: Path) -> None:
    result = lint(tree)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(("module", "line", "broken"), [
    ("runtime/durable/dispatch.py", "from runtime.control import actors",
     "runtime.durable is not allowed to import runtime.control"),
    ("runtime/core/models.py", "from runtime.flow import gates",
     "runtime.core is not allowed to import runtime.flow"),
    ("runtime/store/base.py", "from runtime.flow import queue",  # siblings are independent
     "runtime.store is not allowed to import runtime.flow"),
    ("runtime/events/bus.py", "from runtime.durable import worker",
     "runtime.events is not allowed to import runtime.durable"),
    ("runtime/authoring/catalog.py", "from runtime.tools import executor",
     "runtime.authoring.catalog -> runtime.tools.executor"),
    ("runtime/store/actor.py", "from runtime.store import direct",
     "runtime.store.actor -> runtime.store.direct"),
])
def test_an_import_against_the_layers_breaks_a_contract(tree: Path, module: str, line: str,
                                                        broken: str) -> None:
    path = tree / module
    path.write_text(path.read_text() + f"\n{line}  # noqa: E402\n")
    result = lint(tree)
    assert result.returncode != 0, result.stdout
    assert "1 broken" in result.stdout and broken in result.stdout, result.stdout
