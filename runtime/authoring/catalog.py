"""The catalogue of what a runtime runs: the workflows and agent roles found in the app modules."""

from __future__ import annotations

import functools
import importlib
import inspect
import os
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime.authoring.agent import Agent
from runtime.authoring.workflow import Workflow
from runtime.core.errors import AgentNotFound, ConfigError, InvalidTopic, WorkflowNotFound
from runtime.core.triggers import check_pattern
from runtime.tools import Registry, Tool, builtin_tools


@dataclass
class Catalog:
    workflows: dict[str, Workflow] = field(default_factory=dict)
    agents: dict[str, type[Agent]] = field(default_factory=dict)
    tools: dict[str, Tool] = field(default_factory=builtin_tools)

    def registry(self) -> Registry:
        return Registry(self.tools)

    def workflow(self, name: str) -> Workflow:
        try:
            return self.workflows[name]
        except KeyError:
            raise WorkflowNotFound(name, tuple(sorted(self.workflows))) from None

    def subscribers(self) -> list[str]:
        """The workflows with event triggers and the agent roles that subscribe to topics."""
        return ([f"workflow:{w.name}" for w in self.workflows.values() if w.triggers]
                + [f"agent:{r}" for r, cls in self.agents.items() if cls.subscribes])

    def models(self, default_model: str, more: tuple[str, ...] = ()) -> list[str]:
        """The models a runtime serves for these apps: ``default_model``, ``more`` (the settings'
        ``models``), then each agent role's ``model`` and ``fallback_models``; each once, in order."""
        named = [default_model, *more]
        for agent_cls in self.agents.values():
            named += [m for m in (agent_cls.model, *agent_cls.fallback_models) if m]
        return list(dict.fromkeys(named))

    def agent(self, role: str) -> type[Agent]:
        try:
            return self.agents[role]
        except KeyError:
            raise AgentNotFound(role, tuple(sorted(self.agents))) from None


def load_catalog(modules: list[str]) -> Catalog:
    """The catalogue of the app modules ``modules``: made once per process for each list (the pools,
    the dispatcher, the client in one process share it; nothing changes a catalogue once made)."""
    return _load(tuple(modules))


@functools.cache
def _load(modules: tuple[str, ...]) -> Catalog:
    """Import each module and collect its ``@workflow`` functions, ``Agent`` subclasses and ``@tool``s
    (next to the built-in tools)."""
    catalog = Catalog()
    for name in modules:
        module = import_app(name)
        for value in vars(module).values():
            if isinstance(value, Workflow):
                _add(catalog.workflows, value.name, value, name)
            elif inspect.isclass(value) and issubclass(value, Agent) and value.role:
                _add(catalog.agents, value.role, value, name)
            elif isinstance(value, Tool):
                _add(catalog.tools, value.name, value, name)
    for role, agent_cls in catalog.agents.items():
        for pattern in agent_cls.subscribes:
            try:
                check_pattern(pattern)
            except InvalidTopic as e:
                raise ConfigError(f"agent role {role!r} subscribes to {e}") from None
    return catalog


def look_in_current_folder() -> None:
    """Let app modules be found in the current folder first, then on ``PYTHONPATH``, as
    ``uvicorn app:app`` and ``celery -A app`` find theirs (a console script's ``sys.path`` starts
    with its own bin folder, not the current one). On a local cluster Ray gives the workers the
    driver's current folder too; on a cluster joined by address, ``app_sources`` are shipped."""
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)


def import_app(name: str) -> Any:
    """Import the app module ``name``; a module that is not found, or that fails while importing,
    is a ``ConfigError`` of one line saying where it was looked for or where it failed."""
    look_in_current_folder()
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name and (name == e.name or name.startswith(f"{e.name}.")):
            path = os.environ.get("PYTHONPATH") or "not set"
            raise ConfigError(f"cannot find app module {name!r}: looked in the current folder "
                              f"({os.getcwd()}) and on PYTHONPATH ({path})") from None
        raise ConfigError(f"app module {name!r} failed to import: {e}") from None
    except Exception as e:  # noqa: BLE001 - any error of the module's own code, as one line
        where = _where(e)
        raise ConfigError(f"app module {name!r} failed to import{where}: "
                          f"{type(e).__name__}: {e}") from None


def _where(e: BaseException) -> str:
    """`` (file.py:line)`` of the line that raised ``e`` in the app's own code, if known."""
    if isinstance(e, SyntaxError) and e.filename:
        return f" ({Path(e.filename).name}:{e.lineno})"
    ours = str(Path(__file__).parents[1])  # the runtime's own code: the app's line is wanted
    frames = [f for f in traceback.extract_tb(e.__traceback__)
              if not f.filename.startswith(("<", ours))]
    return f" ({Path(frames[-1].filename).name}:{frames[-1].lineno})" if frames else ""


def app_sources(modules: list[str]) -> list[Path]:
    """The files and package folders of the app modules that lie in the current folder: what a
    runtime joining a cluster by address ships to the cluster's nodes (Ray's ``py_modules``, as
    ``ray job submit --working-dir`` ships a folder), since another node has no such folder."""
    cwd = Path.cwd()
    found: list[Path] = []
    for name in modules:
        top = name.split(".")[0]
        for candidate in (cwd / top, cwd / f"{top}.py"):
            if (candidate.is_dir() or candidate.is_file()) and candidate not in found:
                found.append(candidate)
                break
    return found


def _add(table: dict[str, Any], key: str, value: object, module: str) -> None:
    if key in table and table[key] is not value:
        raise ConfigError(f"{key!r} is declared twice (again in module {module!r})")
    table[key] = value
