"""The catalogue of what a runtime runs: the workflows and agent roles found in the app modules."""

from __future__ import annotations

import functools
import importlib
import inspect
from dataclasses import dataclass, field
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
        try:
            module = importlib.import_module(name)
        except ImportError as e:
            raise ConfigError(f"cannot import app module {name!r}: {e}") from e
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


def _add(table: dict[str, Any], key: str, value: object, module: str) -> None:
    if key in table and table[key] is not value:
        raise ConfigError(f"{key!r} is declared twice (again in module {module!r})")
    table[key] = value
