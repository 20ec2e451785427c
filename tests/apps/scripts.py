"""Scripted models for tests (``simulated.script``): each a function of the ChatRequest."""

from __future__ import annotations

from typing import Any

from runtime.core.models import ChatRequest, ToolCall


def lookup_then_answer(request: ChatRequest) -> Any:
    """Calls ``lookup`` with the user's text until it has a result, then answers with it."""
    results = [m.content for m in request.messages if m.role == "tool"]
    if not results:
        user = next(m.content for m in request.messages if m.role == "user")
        return ToolCall(id="call-1", name="lookup", arguments={"query": user})
    return f"found: {results[-1]}"


def always_a_number(request: ChatRequest) -> Any:
    return 42
