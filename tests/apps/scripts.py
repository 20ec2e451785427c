"""Scripted models for tests (``simulated.script``): each a function of the ChatRequest."""

from __future__ import annotations

from typing import Any

from runtime.core.errors import EngineUnavailable
from runtime.core.models import ChatRequest, ToolCall


def lookup_then_answer(request: ChatRequest) -> Any:
    """Calls ``lookup`` with the user's text until it has a result, then answers with it."""
    results = [m.content for m in request.messages if m.role == "tool"]
    if not results:
        user = next(m.content for m in request.messages if m.role == "user")
        return ToolCall(id="call-1", name="look_up_fact", arguments={"query": user})
    return f"found: {results[-1]}"


def always_a_number(request: ChatRequest) -> Any:
    return 42


def bad_then_good(request: ChatRequest) -> Any:
    """Calls ``lookup`` with arguments that do not fit, then (told why) with good ones, then
    answers with the tool's result."""
    tool_results = [m for m in request.messages if m.role == "tool"]
    if not tool_results:
        return ToolCall(id="c1", name="look_up_fact", arguments={"q": "wrong name"})
    if "error" in tool_results[-1].content:
        return ToolCall(id=f"c{len(tool_results) + 1}", name="look_up_fact", arguments={"query": "right"})
    return f"answer: {tool_results[-1].content}"


def always_bad(request: ChatRequest) -> Any:
    return ToolCall(id=f"c{len(request.messages)}", name="no_such_tool", arguments={})


def hand_to_reviewer(request: ChatRequest) -> Any:
    return ToolCall(id="h1", name="transfer_to_reviewer", arguments={"request": "check this"})


def chatter(request: ChatRequest) -> Any:
    return ToolCall(id=f"c{len(request.messages)}", name="look_up_fact", arguments={"query": "again"})


def ask_reviewer_then_answer(request: ChatRequest) -> Any:
    """Asks the reviewer (a role offered as a tool), then answers with its reply."""
    results = [m.content for m in request.messages if m.role == "tool"]
    if not results:
        return ToolCall(id="a1", name="ask_reviewer", arguments={"request": "is this right?"})
    return f"the reviewer said {results[-1]}"


def flaky_models_fail(request: ChatRequest) -> Any:
    """A model named ``flaky...`` fails every request as an upstream that is down does (a retryable
    EngineUnavailable); any other model answers with its name and the question."""
    if request.model.startswith("flaky"):
        raise EngineUnavailable(request.model, "the simulated upstream is down")
    user = next(m.content for m in reversed(request.messages) if m.role == "user")
    return f"{request.model} answers: {user}"
