"""The simulated engine: a real, documented backend for tests and benchmarks, not a language model.

Its answer is a deterministic function of the request, and its timing follows a latency model:
``ttft_s`` before the first token, ``tpot_s`` per token after it, at most ``max_concurrency`` requests
at once (later ones wait for a slot in the order a vLLM engine's admission gives: ``admission.py``).
It keeps the arrival and end time of its last requests (``timeline``, a script's failures
included), so a test or benchmark can check what an upstream saw.

What it answers (``simulated_reply``):

- offered tools (``tool_choice`` not ``"none"``): on each turn it calls the first offered tool that
  has no result yet in the conversation (a ``tool`` message answering it), with arguments that fit
  the tool's schema, made from the conversation (``structured.example_value``: strings from the last
  user message); once every offered tool has a result, it answers. ``"required"`` calls the first
  tool even then; a tool's name calls that tool on every turn;
- a ``response_format``: a value that fits its schema, made the same way (JSON text, and ``parsed``);
- otherwise 8 to 40 words chosen by a hash of the prompt (``simulated_text``).

``simulated.script`` ('module:function') replaces that policy with the user's own: the function is
called with each ``ChatRequest`` and returns text, a ``ToolCall`` (or a list of them), or a structured
answer (a dict or a pydantic model), which the engine then streams with the same latency model. A
test scripts its model this way, as the OpenAI Agents SDK's fake model or Pydantic AI's
``FunctionModel`` do.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import json
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel

from runtime.core.config import SimulatedEngineConfig
from runtime.core.errors import ConfigError
from runtime.core.models import ChatRequest, Completion, ToolCall, ToolSpec, Usage
from runtime.core.structured import example_value, parse_answer
from runtime.llm.admission import Admission

_WORDS = (
    "agents coordinate work through queues while durable steps record each result so that a "
    "failure resumes where it stopped and rate limits keep shared models within their budgets "
    "evidence suggests the sources agree on the main findings but differ on details worth review"
).split()

Script = Callable[[ChatRequest], Any]


def simulated_text(prompt: str, max_tokens: int) -> list[str]:
    """The words the simulated engine answers ``prompt`` with: deterministic, 8 to 40 of them."""
    digest = hashlib.sha256(prompt.encode()).digest()
    n = min(max_tokens, 8 + digest[0] % 33)
    words = [_WORDS[(digest[i % 32] + i * 7) % len(_WORDS)] for i in range(n)]
    words[0] = words[0].capitalize()
    return [w + ("." if i == n - 1 else " ") for i, w in enumerate(words)]


def prompt_text(request: ChatRequest) -> str:
    return "\n".join(f"{m.role}: {m.content}" for m in request.messages)


@dataclass(frozen=True)
class Reply:
    """What the engine will answer: its pieces of text (streamed one per token), or tool calls (whose
    arguments are what it streams, unshown), and the structured value where one was asked for."""

    pieces: list[str]
    tool_calls: tuple[ToolCall, ...] = ()
    parsed: Any = None
    constrained: bool = False  # a tool call or a structured answer: complete whatever max_tokens


def answered_tools(request: ChatRequest) -> set[str]:
    """The tools that have a result in the conversation."""
    called = {c.id: c.name for m in request.messages for c in m.tool_calls}
    return {m.name or called.get(m.tool_call_id or "", "") for m in request.messages
            if m.role == "tool"} - {""}


def next_tool(request: ChatRequest) -> ToolSpec | None:
    """The tool the built-in policy calls on this turn, if any."""
    if not request.calls_tools:
        return None
    if request.tool_choice not in ("auto", "required"):
        return request.tool(request.tool_choice)
    done = answered_tools(request)
    waiting = next((t for t in request.tools if t.name not in done), None)
    if waiting is None and request.tool_choice == "required":
        return request.tools[0]
    return waiting


def simulated_reply(request: ChatRequest) -> Reply:
    """The built-in policy (see the module's doc)."""
    seed = prompt_text(request)
    user = next((m.content for m in reversed(request.messages) if m.role == "user"), "")
    tool = next_tool(request)
    if tool is not None:
        args = example_value(tool.parameters, f"{seed}|{tool.name}", user)
        call_id = "call_" + hashlib.sha256(f"{seed}|{tool.name}".encode()).hexdigest()[:16]
        return _constrained(ToolCall(id=call_id, name=tool.name, arguments=args))
    if request.response_format is not None:
        return _constrained(example_value(request.response_format.json_schema, seed, user))
    return Reply(simulated_text(seed, request.max_tokens))


def scripted_reply(request: ChatRequest, script: Script) -> Reply:
    """A user's script's answer as a Reply (see the module's doc)."""
    answer = script(request)
    if isinstance(answer, ToolCall) or (isinstance(answer, list | tuple) and answer
                                        and all(isinstance(a, ToolCall) for a in answer)):
        return _constrained(*(answer if isinstance(answer, list | tuple) else [answer]))
    if isinstance(answer, BaseModel):
        answer = answer.model_dump(mode="json")
    if isinstance(answer, str):
        if request.response_format is not None:
            return Reply(_pieces(answer), parsed=parse_answer(request, answer), constrained=True)
        return Reply(_pieces(answer))
    if isinstance(answer, dict | list) and request.response_format is not None:
        return Reply(_pieces(json.dumps(answer)), parsed=parse_answer(request, json.dumps(answer)),
                     constrained=True)
    raise ConfigError(f"the simulated engine's script returned {type(answer).__name__}: it must "
                      "return text, a ToolCall or a list of them, or (with response_format) a dict "
                      "or pydantic model")


def _constrained(*values: Any) -> Reply:
    """Tool calls (all ``ToolCall``) or one structured value, streamed as its JSON text."""
    calls = tuple(v for v in values if isinstance(v, ToolCall))
    if calls:
        text = json.dumps([{"name": c.name, "arguments": c.arguments} for c in calls])
        return Reply(_pieces(text), tool_calls=calls, constrained=True)
    text = json.dumps(values[0])
    return Reply(_pieces(text), parsed=values[0], constrained=True)


def _pieces(text: str) -> list[str]:
    """Text cut into word-sized pieces that join back into it."""
    words = text.split(" ")
    return [w + (" " if i < len(words) - 1 else "") for i, w in enumerate(words)] if text else []


def load_script(path: str) -> Script:
    module, _, name = path.partition(":")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"simulated.script {path!r} cannot be loaded: {e}") from None
    if not callable(fn):
        raise ConfigError(f"simulated.script {path!r} is not a function")
    return fn  # type: ignore[no-any-return]


class SimulatedEngine:
    def __init__(self, model: str, config: SimulatedEngineConfig) -> None:
        self.model = model
        self.config = config
        self.script = load_script(config.script) if config.script else None
        # Requests past max_concurrency wait as at a vLLM engine: by priority, then by the engine
        # time their task has had (admission.py), aging as they wait.
        self.admission = Admission(config.max_concurrency, config.admission_aging_per_s,
                                   config.admission_service_weight)
        self._aborted: set[str] = set()
        self._running: set[str] = set()
        self.timeline: deque[tuple[float, float]] = deque(maxlen=100_000)  # (arrived, ended), epoch s

    def reply(self, request: ChatRequest) -> Reply:
        return scripted_reply(request, self.script) if self.script else simulated_reply(request)

    async def _generate(self, request: ChatRequest, reply: Reply) -> AsyncIterator[str]:
        async with self.admission.slot(request.priority, request.request_id):
            rid = request.request_id or ""
            self._running.add(rid)
            try:
                await asyncio.sleep(self.config.ttft_s)
                for i, piece in enumerate(reply.pieces):
                    if rid in self._aborted:
                        return
                    if i and self.config.tpot_s:
                        await asyncio.sleep(self.config.tpot_s)
                    yield piece
            finally:
                self._running.discard(rid)
                self._aborted.discard(rid)

    async def stream(self, request: ChatRequest) -> AsyncIterator[str]:
        reply = self.reply(request)
        async for piece in self._generate(request, reply):
            if not reply.tool_calls:
                yield piece

    async def chat(self, request: ChatRequest,
                   on_text: Callable[[str], Awaitable[None]] | None = None) -> Completion:
        arrived = time.time()
        produced = []
        try:  # a request the script fails reached the engine all the same: it is in the timeline
            reply = self.reply(request)
            pieces = reply.pieces if reply.constrained else reply.pieces[:request.max_tokens]
            async for piece in self._generate(request, Reply(pieces, reply.tool_calls)):
                produced.append(piece)
                if on_text is not None and not reply.tool_calls:
                    await on_text(piece)
        finally:
            self.timeline.append((arrived, time.time()))
        finish: Literal["stop", "length", "abort", "tool_calls"] = "stop"
        if len(produced) < len(pieces):
            finish = "abort"
        elif reply.tool_calls:
            finish = "tool_calls"
        elif len(pieces) < len(reply.pieces) or len(pieces) == request.max_tokens:
            finish = "length"
        aborted = finish == "abort"
        return Completion(
            model=self.model, finish_reason=finish,
            text="" if reply.tool_calls else "".join(produced),
            tool_calls=() if aborted else reply.tool_calls,
            parsed=None if aborted else reply.parsed,
            usage=Usage(prompt_tokens=len(prompt_text(request).split()),
                        completion_tokens=len(produced)),
        )

    async def abort(self, request_id: str) -> bool:
        if request_id in self._running:
            self._aborted.add(request_id)
            return True
        return False
