"""App modules are found in the current folder first, then on PYTHONPATH; one that is not found, or
that fails while importing, is one line saying where it was looked for or where it failed."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.authoring.catalog import app_sources, import_app, load_catalog
from runtime.core.errors import ConfigError

APP = '''
from pydantic import BaseModel
from runtime import Agent, Context, workflow

class Name(BaseModel):
    name: str = "world"

class Greeter(Agent):
    role = "greeter"

@workflow
async def hello(ctx: Context, inp: Name) -> str:
    return f"hello {inp.name}"
'''


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty current folder that is not on sys.path (as for the `raysquad` console script)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        del sys.modules[name]


def test_a_module_in_the_current_folder_is_found_without_pythonpath(folder: Path) -> None:
    (folder / "support_app_a.py").write_text(APP)
    catalog = load_catalog(["support_app_a"])
    assert "hello" in catalog.workflows and "greeter" in catalog.agents
    assert app_sources(["support_app_a"]) == [folder / "support_app_a.py"]


def test_a_package_in_the_current_folder_is_shipped_whole(folder: Path) -> None:
    (folder / "triage_pkg").mkdir()
    (folder / "triage_pkg" / "__init__.py").write_text("")
    (folder / "triage_pkg" / "app.py").write_text(APP)
    assert "hello" in load_catalog(["triage_pkg.app"]).workflows
    assert app_sources(["triage_pkg.app", "json"]) == [folder / "triage_pkg"]  # json: installed


def test_a_module_not_found_says_where_it_was_looked_for(folder: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", "/opt/apps")
    with pytest.raises(ConfigError) as info:
        import_app("no_such_app_here")
    assert str(info.value) == (f"cannot find app module 'no_such_app_here': looked in the current "
                               f"folder ({folder}) and on PYTHONPATH (/opt/apps)")


def test_a_module_that_fails_while_importing_says_where(folder: Path) -> None:
    (folder / "broken_dep_app.py").write_text("import no_such_dependency_xyz\n")
    with pytest.raises(ConfigError, match=r"app module 'broken_dep_app' failed to import: No module "
                                          r"named 'no_such_dependency_xyz'"):
        import_app("broken_dep_app")
    (folder / "broken_code_app.py").write_text("x = 1\ny = undefined_name\n")
    with pytest.raises(ConfigError, match=r"failed to import \(broken_code_app.py:2\): NameError"):
        import_app("broken_code_app")
    (folder / "broken_syntax_app.py").write_text("def f(:\n")
    with pytest.raises(ConfigError, match=r"failed to import \(broken_syntax_app.py:1\): SyntaxError"):
        import_app("broken_syntax_app")
