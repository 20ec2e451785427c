"""raysquad's runtime: durable, checkpointed multi-agent workflows on Ray.

The public surface: ``workflow``, ``Context``, ``Agent``, ``AgentContext``, ``Client``, ``Runtime``,
``Settings``, ``RetryPolicy``, ``Ref`` and the models and errors below.
"""

from runtime.agent import Agent, AgentContext
from runtime.app import Runtime
from runtime.client import Client
from runtime.config import AgentPoolConfig, RetryPolicy, Settings
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
    WorkflowNotFound,
)
from runtime.models import AgentMessage, ChatMessage, Completion, Event, TaskRecord, TaskStatus
from runtime.refs import Ref
from runtime.workflow import Context, Workflow, workflow

__all__ = [
    "Agent", "AgentContext", "AgentError", "AgentMessage", "AgentPoolConfig", "ChatMessage", "Client",
    "Completion", "Context", "Event", "InvalidInput", "QueueFull", "RaysquadError", "Ref",
    "RetryPolicy", "Runtime", "Settings", "SignalTimeout", "StepError", "TaskCancelled", "TaskFailed",
    "TaskNotFound", "TaskRecord", "TaskStatus", "Workflow", "WorkflowNotFound", "workflow",
]
