"""An engine for any OpenAI-compatible endpoint, on the ``openai`` async client.

Streams chat completions; retries 429 and 5xx answers (and connection errors) with runtime/core/retry.py's
backoff loop, which honours ``Retry-After`` up to the config's ``max_backoff_s``; wraps every failure
in our picklable ``EngineError`` (``EngineUnavailable`` when the tries ran out) before it crosses an
actor boundary. With ``send_priority`` the task's priority goes along as vLLM's ``priority`` field.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Literal

import httpx
import openai

from runtime.core.config import OpenAIEngineConfig, RetryPolicy
from runtime.core.errors import EngineError, EngineUnavailable
from runtime.core.models import TOOL_CHOICES, ChatRequest, Completion, ToolCall, Usage
from runtime.core.retry import GaveUp, Retrying, Sleep, retry, usable_retry_after_s
from runtime.core.structured import parse_answer, parse_arguments
from runtime.llm.constrained import answer_schema, constrained_completion, prompt_messages

log = logging.getLogger(__name__)

# What another try may cure: throttling, a server error, a connection that failed or timed out.
TRANSIENT = (openai.RateLimitError, openai.InternalServerError, openai.APIConnectionError)


def retry_after_s(error: BaseException) -> float | None:
    """The server's Retry-After in seconds, if it sent one we can read (the retry loop caps it)."""
    response = getattr(error, "response", None) if isinstance(error, openai.APIStatusError) else None
    value = response.headers.get("retry-after") if response is not None else None
    try:
        return usable_retry_after_s(float(value)) if value is not None else None
    except ValueError:
        return None


def retry_policy(config: OpenAIEngineConfig) -> RetryPolicy:
    """The engine's retries as a RetryPolicy: doubling backoff with 20% jitter."""
    return RetryPolicy(max_attempts=config.max_attempts, initial_backoff_s=config.initial_backoff_s,
                       max_backoff_s=config.max_backoff_s, backoff_multiplier=2.0, jitter=0.2)


class OpenAIEngine:
    remote = True  # an upstream service: a request has reached it when its first chunk comes back
    def __init__(self, model: str, config: OpenAIEngineConfig,
                 http_client: httpx.AsyncClient | None = None, sleep: Sleep = asyncio.sleep) -> None:
        self.model = model
        self.config = config
        self.policy = retry_policy(config)
        self._sleep = sleep  # every backoff waits here (a test measures them instead)
        self._client = openai.AsyncOpenAI(
            base_url=config.base_url, api_key=os.environ.get(config.api_key_env) or "unused",
            max_retries=0, timeout=config.timeout_s,
            http_client=http_client)  # type: ignore[arg-type]  # typed as httpx2's; it takes httpx's
        self._running: dict[str, asyncio.Task[Any]] = {}
        # Told of each 429 with its Retry-After (the engine actor throttles the model's gate).
        self.on_throttled: Callable[[float | None], None] | None = None

    async def stream(self, request: ChatRequest) -> AsyncIterator[str]:
        queue: asyncio.Queue[str | None] = asyncio.Queue()

        async def put(text: str) -> None:
            await queue.put(text)

        async def run() -> None:
            try:
                await self.chat(request, put)
            finally:
                await queue.put(None)

        runner = asyncio.create_task(run())
        while (piece := await queue.get()) is not None:
            yield piece
        await runner

    async def chat(self, request: ChatRequest,
                   on_text: Callable[[str], Awaitable[None]] | None = None) -> Completion:
        try:
            return await retry(lambda: self._once(request, on_text), self.policy,
                               name=f"model:{self.model}",
                               retryable=lambda e: isinstance(e, TRANSIENT), hint=retry_after_s,
                               on_retry=self._retrying, sleep=self._sleep)
        except GaveUp as e:
            error = e.error
            if e.retryable:
                raise EngineUnavailable(self.model, f"{type(error).__name__} after {e.attempts} "
                                                    f"attempts: {error}") from None
            if isinstance(error, openai.APIError):
                raise EngineError(self.model, f"{type(error).__name__}: {error}") from None
            raise error from None

    def _retrying(self, r: Retrying) -> None:
        if isinstance(r.error, openai.RateLimitError) and self.on_throttled is not None:
            self.on_throttled(r.retry_after_s)  # as honoured: capped like the wait itself
        log.info("model %s: %s, retrying in %.2fs", self.model, type(r.error).__name__, r.delay_s)

    async def _once(self, request: ChatRequest,
                    on_text: Callable[[str], Awaitable[None]] | None) -> Completion:
        extra = {"priority": -request.priority} if self.config.send_priority else None
        constrained = self.config.tool_mode == "json_schema" and request.calls_tools
        messages, options = constrained_wire(request) if constrained else (
            wire_messages(request), wire_options(request))
        # Our messages are not openai's TypedDicts; the API takes them as JSON all the same.
        stream = await self._client.chat.completions.create(  # type: ignore[call-overload]
            model=self.config.remote_model or self.model, messages=messages,
            max_tokens=request.max_tokens, temperature=request.temperature, stream=True,
            stream_options={"include_usage": True}, extra_body=extra, **options)
        pieces: list[str] = []
        calls: dict[int, dict[str, str]] = {}  # index -> id, name, arguments (as they stream in)
        finish: Literal["stop", "length", "abort", "tool_calls"] = "stop"
        usage = Usage(prompt_tokens=0, completion_tokens=0)
        current = asyncio.current_task()
        if request.request_id and current is not None:
            self._running[request.request_id] = current
        try:
            async for chunk in stream:
                if chunk.usage is not None:
                    usage = Usage(prompt_tokens=chunk.usage.prompt_tokens,
                                  completion_tokens=chunk.usage.completion_tokens)
                for choice in chunk.choices:
                    if choice.delta.content:
                        pieces.append(choice.delta.content)
                        if on_text is not None and not constrained:  # JSON: shown once read
                            await on_text(choice.delta.content)
                    for delta in choice.delta.tool_calls or ():
                        call = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
                        call["id"] = delta.id or call["id"]
                        if delta.function is not None:
                            call["name"] += delta.function.name or ""
                            call["arguments"] += delta.function.arguments or ""
                    if choice.finish_reason in ("length", "tool_calls"):
                        finish = choice.finish_reason
        except asyncio.CancelledError:
            finish = "abort"
        finally:
            if request.request_id:
                self._running.pop(request.request_id, None)
            await stream.close()
        text = "".join(pieces)
        if constrained and finish == "stop":
            return constrained_completion(request, self.model, text, usage)
        tool_calls = tuple(
            ToolCall(id=c["id"] or f"call_{i}", name=c["name"], arguments=parse_arguments(c["arguments"]))
            for i, c in sorted(calls.items()))
        if tool_calls and finish == "stop":
            finish = "tool_calls"
        parsed = (parse_answer(request, text) if request.response_format is not None
                  and not tool_calls and finish == "stop" else None)
        return Completion(model=self.model, text=text, usage=usage, finish_reason=finish,
                          tool_calls=tool_calls, parsed=parsed)

    async def abort(self, request_id: str) -> bool:
        """Stop reading the request's stream; closing it makes the server abort the request."""
        task = self._running.get(request_id)
        if task is None:
            return False
        task.cancel()
        return True


def wire_messages(request: ChatRequest) -> list[dict[str, Any]]:
    """The conversation as OpenAI's API takes it (tool calls and their results included)."""
    out: list[dict[str, Any]] = []
    for m in request.messages:
        message: dict[str, Any] = {"role": m.role, "content": m.content}
        if m.tool_calls:
            message["tool_calls"] = [
                {"id": c.id, "type": "function",
                 "function": {"name": c.name, "arguments": json.dumps(c.arguments)}}
                for c in m.tool_calls]
        if m.role == "tool":
            message["tool_call_id"] = m.tool_call_id or ""
        out.append(message)
    return out


def wire_options(request: ChatRequest) -> dict[str, Any]:
    """``tools``, ``tool_choice`` and ``response_format`` as OpenAI's API takes them."""
    options: dict[str, Any] = {}
    if request.tools:
        options["tools"] = [{"type": "function", "function": t.model_dump()} for t in request.tools]
        choice = request.tool_choice
        options["tool_choice"] = choice if choice in TOOL_CHOICES else {
            "type": "function", "function": {"name": choice}}
    if request.response_format is not None:
        fmt = request.response_format
        options["response_format"] = {"type": "json_schema", "json_schema": {
            "name": fmt.name, "schema": fmt.json_schema, "strict": True}}
    return options


def constrained_wire(request: ChatRequest) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """``tool_mode="json_schema"``: the conversation with the tools said in a system message (a tool's
    result as a user message: no tool call is on the wire for it to answer), and the tools and the
    answer as one JSON schema in ``response_format``."""
    messages = [{**m, "role": "user", "content": f"Result: {m['content']}"} if m["role"] == "tool"
                else m for m in prompt_messages(request)]
    schema = answer_schema(request)
    return messages, {"response_format": {"type": "json_schema", "json_schema": {
        "name": "answer", "schema": schema, "strict": True}}}
