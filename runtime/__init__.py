"""raysquad's runtime: durable, checkpointed multi-agent workflows on Ray.

The public surface: ``workflow``, ``Context``, ``Agent``, ``AgentContext``, ``Client``,
``AsyncClient``, ``Runtime``, ``Settings``, ``RetryPolicy``, ``GateLimits``, ``Ref``, ``tool`` and the
models and errors below.
"""

from runtime.agent import Agent, AgentContext
from runtime.app import Runtime
from runtime.client import AsyncClient, Client
from runtime.config import AgentPoolConfig, GateLimits, RetryPolicy, Settings, ToolSettings
from runtime.errors import (
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
from runtime.models import AgentMessage, ChatMessage, Completion, Event, TaskRecord, TaskStatus
from runtime.refs import Ref
from runtime.tools import Batch, ToolContext, tool
from runtime.workflow import Context, Workflow, workflow

__all__ = [
    "Agent", "AgentContext", "AgentError", "AgentMessage", "AgentPoolConfig", "AsyncClient", "Batch",
    "ChatMessage",
    "Client", "Completion", "Context", "Event", "GateLimits", "InvalidInput", "QueueFull",
    "RaysquadError", "Ref", "RetryPolicy", "Runtime", "Settings", "SignalTimeout", "StepError",
    "TaskCancelled", "TaskFailed", "TaskNotFound", "TaskRecord", "TaskStatus", "ToolContext",
    "ToolFailed", "ToolSettings", "Workflow", "WorkflowNotFound", "tool", "workflow",
]
