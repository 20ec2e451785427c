"""raysquad's runtime: durable, checkpointed multi-agent workflows on Ray.

The public surface: ``workflow``, ``Context``, ``Agent``, ``AgentContext``, ``Client``,
``AsyncClient``, ``Runtime``, ``Settings``, ``RetryPolicy``, ``GateLimits``, ``Ref``, ``tool`` and the
models and errors below.

The names are imported when first used (PEP 562), so a process that needs one module, such as a
mailbox actor or the CLI talking HTTP, does not import Ray's client, the engines and the rest.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_HOME = {
    "runtime.replicas.replica": ("AgentContext",),
    "runtime.authoring.agent": ("Agent",),
    "runtime.control.launch": ("Runtime",),
    "runtime.client.client": ("AsyncClient", "Client"),
    "runtime.core.config": ("AgentPoolConfig", "GateLimits", "RetryPolicy", "Settings", "ToolSettings"),
    "runtime.core.errors": ("AgentError", "InvalidInput", "QueueFull", "RaysquadError", "SignalTimeout",
                       "StepError", "TaskCancelled", "TaskFailed", "TaskNotFound", "ToolFailed",
                       "WorkflowNotFound"),
    "runtime.core.models": ("AgentMessage", "ChatMessage", "Completion", "Event", "TaskRecord",
                       "TaskStatus", "TaskSummary", "TopicEvent"),
    "runtime.core.refs": ("Ref",),
    "runtime.tools": ("Batch", "ToolContext", "tool"),
}
_MODULE_OF = {name: module for module, names in _HOME.items() for name in names}
__all__ = [
    "Agent", "AgentContext", "AgentError", "AgentMessage", "AgentPoolConfig", "AsyncClient",
    "Batch", "ChatMessage", "Client", "Completion", "Context", "Event", "GateLimits",
    "InvalidInput", "QueueFull", "RaysquadError", "Ref", "RetryPolicy", "Runtime", "Settings",
    "SignalTimeout", "StepError", "TaskCancelled", "TaskFailed", "TaskNotFound", "TaskRecord",
    "TaskStatus", "TaskSummary", "ToolContext", "ToolFailed", "ToolSettings", "TopicEvent",
    "Workflow", "WorkflowNotFound", "on_event", "on_schedule", "tool", "workflow",
]


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'runtime' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


# Imported now (it is light): the decorator ``workflow`` has its module's name, and a submodule
# imported later would otherwise take the package attribute that a lazy lookup reads.
from runtime.authoring.workflow import Context, Workflow, workflow  # noqa: E402
from runtime.core.triggers import on_event, on_schedule  # noqa: E402

if TYPE_CHECKING:
    from runtime.authoring.agent import Agent
    from runtime.client.client import AsyncClient, Client
    from runtime.control.launch import Runtime
    from runtime.core.config import AgentPoolConfig, GateLimits, RetryPolicy, Settings, ToolSettings
    from runtime.core.errors import (
        AgentError,
        InvalidInput,
        QueueFull,
        RaysquadError,
        SignalTimeout,
        StepError,
        TaskCancelled,
        TaskFailed,
        TaskNotFound,
        ToolFailed,
        WorkflowNotFound,
    )
    from runtime.core.models import (
        AgentMessage,
        ChatMessage,
        Completion,
        Event,
        TaskRecord,
        TaskStatus,
        TaskSummary,
        TopicEvent,
    )
    from runtime.core.refs import Ref
    from runtime.replicas.replica import AgentContext
    from runtime.tools import Batch, ToolContext, tool
