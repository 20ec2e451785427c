"""Fakes the unit tests share: a base for in-process ``Services`` (runtime/workflow.py)."""

from __future__ import annotations

from typing import Any

from runtime.models import ChatRequest, Completion, TopicEvent
from runtime.workflow import Context


class UnusedServices:
    """Every method a Context may call on its Services, each failing the test: a fake subclasses
    it and answers what its tests use, and so is a ``Services`` to the type checker."""

    async def record(self, ctx: Context, key: str, value: Any) -> Any:
        raise AssertionError(f"unexpected record of step {key}")

    async def call_agent(self, ctx: Context, role: str, key: str, payload: Any) -> Any:
        raise AssertionError(f"unexpected call of agent {role}")

    async def chat(self, ctx: Context, request: ChatRequest) -> Completion:
        raise AssertionError("unexpected chat")

    def emit(self, ctx: Context, kind: str, data: dict[str, Any]) -> None:
        raise AssertionError(f"unexpected {kind} event")

    async def call_tool(self, ctx: Context, name: str, key: str, args: dict[str, Any]) -> Any:
        raise AssertionError(f"unexpected call of tool {name}")

    async def await_signal(self, ctx: Context, name: str, key: str,
                           wake_at: float | None) -> tuple[str, Any]:
        raise AssertionError(f"unexpected wait for signal {name}")

    async def publish(self, ctx: Context, topic: str, data: Any, key: str | None,
                      event_id: str) -> TopicEvent:
        raise AssertionError(f"unexpected publish on {topic}")
