"""runtime/core/retry.py, the one backoff loop, and what uses it: workflow steps, the tool executor and the
OpenAI engine. An upstream's Retry-After is honoured only up to the policy's max_backoff_s; errors say
whether they are retryable by their base class, which also gives their HTTP status; tool and agent
steps get a default timeout. Waits are measured (an injected sleep), never slept in full.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import ValidationError

from runtime.authoring.workflow import Context, StepDefaults
from runtime.core import errors
from runtime.core.config import OpenAIEngineConfig, RetryPolicy, Settings
from runtime.core.errors import (
    ActorUnavailable,
    AgentNotFound,
    Conflict,
    EngineError,
    EngineUnavailable,
    GateRequestTooLarge,
    InvalidInput,
    InvalidTransition,
    LeaseLost,
    NotFound,
    QueueFull,
    RaysquadError,
    Refused,
    Retryable,
    StepError,
    StepTimeout,
    TaskNotFound,
    ToolArgsInvalid,
    ToolFailed,
    UpstreamError,
)
from runtime.core.models import ChatMessage, ChatRequest, Completion
from runtime.core.retry import GaveUp, Retrying, delay_s, is_retryable, retry
from runtime.flow.gates import GateClient
from runtime.llm.openai import OpenAIEngine
from runtime.tools import Registry, tool
from runtime.tools.executor import Caller, ToolExecutor
from serve.errors import install, status_of

HUGE = 1e9  # an upstream's Retry-After that would hold a worker slot for 31 years


class Sleeps:
    """An injected sleep: records each wait and returns at once."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


# -- the delay -----------------------------------------------------------------------------------


def test_retry_after_is_honoured_but_capped_by_max_backoff() -> None:
    policy = RetryPolicy(initial_backoff_s=0.1, max_backoff_s=5.0, jitter=0)

    assert delay_s(policy, 1, HUGE) == 5.0
    assert delay_s(policy, 1, 2.5) == 2.5  # a longer hint than the backoff wins, within the cap
    assert delay_s(policy, 1, 0.01) == pytest.approx(0.1)  # a shorter one does not shorten it


@pytest.mark.parametrize("hint", [math.inf, math.nan, -3.0, True, "60"])
def test_unusable_retry_after_is_ignored(hint: Any) -> None:
    policy = RetryPolicy(initial_backoff_s=0.1, max_backoff_s=5.0, jitter=0)

    assert delay_s(policy, 1, hint) == pytest.approx(0.1)


def test_max_backoff_may_not_be_infinite() -> None:
    with pytest.raises(ValidationError):
        RetryPolicy(max_backoff_s=math.inf)


def test_the_loop_reports_each_retry_and_gives_up_with_the_count() -> None:
    policy = RetryPolicy(max_attempts=3, initial_backoff_s=1.0, max_backoff_s=4.0, jitter=0)
    sleeps, heard = Sleeps(), list[Retrying]()

    async def busy() -> None:
        raise QueueFull("q", 1, retry_after_s=HUGE)

    with pytest.raises(GaveUp) as info:
        asyncio.run(retry(busy, policy, name="x", on_retry=heard.append, sleep=sleeps))

    assert (info.value.attempts, info.value.retryable) == (3, True)
    assert isinstance(info.value.error, QueueFull)
    assert sleeps.waits == [4.0, 4.0]
    assert [(r.attempt, r.delay_s, r.retry_after_s) for r in heard] == [(1, 4.0, 4.0), (2, 4.0, 4.0)]


# -- errors say what they are --------------------------------------------------------------------


@pytest.mark.parametrize("error, retryable", [
    (TaskNotFound("t"), False), (AgentNotFound("r"), False), (InvalidTransition("t", "done", "x"), False),
    (LeaseLost("t", "w"), False), (InvalidInput("wf", ["x: bad"]), False),
    (GateRequestTooLarge("k", 10, 5), False), (QueueFull("q", 1), True), (StepTimeout("s", 1.0), True),
    (UpstreamError("http://u", 503), True), (EngineUnavailable("m", "429s"), True),
    (ActorUnavailable("store", 3.0), True), (ValueError("a bug or a blip"), True),
])
def test_retryable_is_read_from_the_error_base(error: Exception, retryable: bool) -> None:
    assert is_retryable(error) is retryable


def test_the_policy_and_the_unknown_default_still_decide() -> None:
    policy = RetryPolicy(non_retryable=("QueueFull",))

    assert not is_retryable(QueueFull("q", 1), policy)  # named by the policy: never
    assert not is_retryable(ValueError(), unknown=False)  # unclassified: the caller's default
    assert is_retryable(StepTimeout("s", 1), unknown=False)  # says so itself


@pytest.mark.parametrize("error, status", [
    (TaskNotFound("t"), 404), (AgentNotFound("r"), 404), (InvalidTransition("t", "done", "cancel"), 409),
    (LeaseLost("t", "w"), 409), (GateRequestTooLarge("k", 10, 5), 400), (InvalidInput("wf", []), 422),
    (ToolArgsInvalid("t", []), 422), (QueueFull("q", 1), 429), (ActorUnavailable("store", 1.0), 503),
    (StepTimeout("s", 1.0), 503), (EngineUnavailable("m", "x"), 503), (EngineError("m", "x"), 500),
    (ToolFailed("t", "x"), 500), (RaysquadError("x"), 500),
])
def test_error_bases_map_to_http_statuses(error: RaysquadError, status: int) -> None:
    assert status_of(error) == status


def test_every_error_is_under_at_most_one_base() -> None:
    bases = (NotFound, Conflict, Refused, Retryable)
    for cls in vars(errors).values():
        if isinstance(cls, type) and issubclass(cls, RaysquadError):
            assert sum(issubclass(cls, b) for b in bases) <= 1, cls


def test_a_retryable_error_answers_with_retry_after() -> None:
    app = FastAPI()
    install(app)
    raised: dict[str, Exception] = {
        "full": QueueFull("tasks", 5, retry_after_s=2.6), "down": ActorUnavailable("store", 1.0, 4.0),
        "timeout": StepTimeout("s", 1.0), "weird": UpstreamError("http://u", 503, math.inf),
    }

    @app.get("/{what}")
    async def fail(what: str) -> None:
        raise raised[what]

    with TestClient(app) as client:
        full, down, timeout, weird = (client.get(f"/{w}") for w in raised)
    assert (full.status_code, full.headers["retry-after"]) == (429, "3")
    assert (down.status_code, down.headers["retry-after"]) == (503, "4")
    assert timeout.status_code == 503 and "retry-after" not in timeout.headers
    assert weird.status_code == 503 and "retry-after" not in weird.headers  # not a usable hint


# -- the tool executor ---------------------------------------------------------------------------


class RecordingGates(GateClient):
    """No gate keeper; remembers how long each 429 closed the gate for."""

    def __init__(self) -> None:
        super().__init__(None)
        self.throttles: list[float | None] = []

    def throttled(self, key: str, retry_after_s: float | None = None) -> None:
        self.throttles.append(retry_after_s)


answers: list[Any] = []


@tool(retry=RetryPolicy(max_attempts=3, initial_backoff_s=0.1, max_backoff_s=2.0, jitter=0))
async def lookup(key: str) -> str:
    """Pops its next answer: an exception to raise, or a value to return."""
    answer = answers.pop(0)
    if isinstance(answer, BaseException):
        raise answer
    if answer == "hang":
        await asyncio.Event().wait()
    return str(answer)


@tool(retry=RetryPolicy(max_attempts=2, initial_backoff_s=0.001, jitter=0), retry_on=(ConnectionError,),
      timeout_s=0.05)
async def slow_once(key: str) -> str:
    """Hangs on its first call (retry_on does not name the timeout), answers on the second."""
    answer = answers.pop(0)
    if answer == "hang":
        await asyncio.Event().wait()
    return str(answer)


def call(executor: ToolExecutor, name: str) -> Any:
    return asyncio.run(executor.call(name, {"key": "k"}, Caller(task_id="t")))


def test_a_tool_errors_huge_retry_after_is_capped() -> None:
    answers[:] = [UpstreamError("http://up/", 429, HUGE), "ok"]
    sleeps, gates = Sleeps(), RecordingGates()
    executor = ToolExecutor(Settings(), Registry({"lookup": lookup}), None, gates, sleep=sleeps)

    assert call(executor, "lookup") == "ok"

    assert sleeps.waits == [2.0]  # the policy's max_backoff_s, not 1e9
    assert gates.throttles == [2.0]  # the gate closes no longer than that either


def test_a_tool_errors_non_finite_retry_after_is_ignored() -> None:
    answers[:] = [UpstreamError("http://up/", 503, math.nan), "ok"]
    sleeps = Sleeps()
    executor = ToolExecutor(Settings(), Registry({"lookup": lookup}), None, RecordingGates(),
                            sleep=sleeps)

    assert call(executor, "lookup") == "ok"
    assert sleeps.waits == [pytest.approx(0.1)]  # the backoff alone


def test_a_refused_tool_call_is_not_retried() -> None:
    answers[:] = [ToolArgsInvalid("lookup", ["nope"]), "never"]
    executor = ToolExecutor(Settings(), Registry({"lookup": lookup}), None, RecordingGates(),
                            sleep=Sleeps())

    with pytest.raises(ToolFailed) as info:
        call(executor, "lookup")
    assert (info.value.attempts, info.value.error_type, info.value.dead_letter) == (
        1, "ToolArgsInvalid", "")


def test_a_timed_out_tool_attempt_is_retried_whatever_retry_on_says() -> None:
    answers[:] = ["hang", "late but fine"]
    executor = ToolExecutor(Settings(), Registry({"slow_once": slow_once}), None, RecordingGates())

    assert call(executor, "slow_once") == "late but fine"
    assert executor.upstream_calls == {"slow_once": 2}


# -- the OpenAI engine ---------------------------------------------------------------------------


def _chunk(delta: dict[str, Any], finish: str | None = None, usage: dict[str, int] | None = None,
           ) -> bytes:
    body = {"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": "fake",
            "choices": [] if usage else [{"index": 0, "delta": delta, "finish_reason": finish}]}
    if usage:
        body["usage"] = {**usage, "total_tokens": sum(usage.values())}
    return b"data: " + json.dumps(body).encode() + b"\n\n"


@contextmanager
def fake_openai(throttle_first: int, retry_after: str) -> Iterator[tuple[str, list[str]]]:
    """An OpenAI-compatible server on loopback: its first ``throttle_first`` chat requests get 429
    with ``retry_after``, later ones a streamed completion. Yields its base URL and the paths hit."""
    hits: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            hits.append(self.path)
            if len(hits) <= throttle_first:
                body = json.dumps({"error": {"message": "slow down", "type": "rate_limit"}}).encode()
                self.send_response(429)
                self.send_header("Retry-After", retry_after)
                self.send_header("Content-Type", "application/json")
            else:
                body = (_chunk({"role": "assistant", "content": "Hello"}) + _chunk({"content": "!"}, "stop")
                        + _chunk({}, usage={"prompt_tokens": 3, "completion_tokens": 2})
                        + b"data: [DONE]\n\n")
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", hits
    finally:
        server.shutdown()
        server.server_close()


def test_the_openai_engine_caps_a_huge_retry_after() -> None:
    request = ChatRequest(model="fake", messages=[ChatMessage(role="user", content="hi")], max_tokens=8)
    sleeps, throttles = Sleeps(), list[float | None]()

    async def chat(url: str) -> Completion:
        config = OpenAIEngineConfig(base_url=url, initial_backoff_s=0.01, max_backoff_s=2.0,
                                    max_attempts=3)
        async with httpx.AsyncClient(trust_env=False) as http:
            engine = OpenAIEngine("fake", config, http, sleep=sleeps)
            engine.on_throttled = throttles.append
            return await engine.chat(request)

    with fake_openai(throttle_first=1, retry_after="1e9") as (url, hits):
        completion = asyncio.run(chat(url))

    assert completion.text == "Hello!" and completion.usage.completion_tokens == 2
    assert hits == ["/v1/chat/completions"] * 2
    assert sleeps.waits == [2.0]  # max_backoff_s, not 1e9 seconds
    assert throttles == [2.0]  # and the model's gate is closed no longer


def test_the_openai_engine_gives_up_with_a_retryable_error() -> None:
    request = ChatRequest(model="fake", messages=[ChatMessage(role="user", content="hi")], max_tokens=8)

    async def chat(url: str) -> Completion:
        config = OpenAIEngineConfig(base_url=url, initial_backoff_s=0.01, max_attempts=2)
        async with httpx.AsyncClient(trust_env=False) as http:
            return await OpenAIEngine("fake", config, http, sleep=Sleeps()).chat(request)

    with fake_openai(throttle_first=5, retry_after="inf") as (url, hits), \
            pytest.raises(EngineUnavailable, match="RateLimitError after 2 attempts"):
        asyncio.run(chat(url))
    assert len(hits) == 2


# -- workflow steps ------------------------------------------------------------------------------


FAST = RetryPolicy(max_attempts=3, initial_backoff_s=0.001, max_backoff_s=0.01, jitter=0.0)


class HangingServices:
    """Services whose agents and tools never answer; records the events and the calls."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.calls: list[str] = []

    async def record(self, key: str, value: Any) -> Any:
        return value

    async def call_agent(self, role: str, key: str, payload: Any) -> Any:
        self.calls.append(key)
        await asyncio.Event().wait()

    async def call_tool(self, name: str, key: str, args: dict[str, Any]) -> Any:
        self.calls.append(key)
        await asyncio.Event().wait()

    def emit(self, kind: str, data: dict[str, Any]) -> None:
        self.events.append((kind, data))


def make_ctx(services: HangingServices, **timeouts: float) -> Context:
    return Context("task-1", "wf", 0, "acme", {}, services,  # type: ignore[arg-type]
                   StepDefaults(FAST, "sim-small", **timeouts))


def run(step: Callable[[], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        return await asyncio.wait_for(step(), 10)  # a missing timeout fails here, not for ever

    return asyncio.run(main())


def test_an_agent_step_without_timeout_s_times_out_after_the_default() -> None:
    services = HangingServices()
    ctx = make_ctx(services, agent_timeout_s=0.05)

    with pytest.raises(StepError) as info:
        run(lambda: ctx.agent("planner").run({"q": 1}))

    err = info.value
    assert (err.error_type, err.attempts) == ("StepTimeout", 3)  # a timeout is retried
    assert isinstance(err.__cause__, StepTimeout) and err.__cause__.timeout_s == 0.05
    assert services.calls == ["agent:planner"] * 3
    assert [kind for kind, _ in services.events] == ["step_retry"] * 2


def test_a_tool_step_without_timeout_s_times_out_after_the_default() -> None:
    services = HangingServices()
    ctx = make_ctx(services, tool_timeout_s=0.05)

    with pytest.raises(StepError) as info:
        run(lambda: ctx.tool("http_fetch", url="http://example.com"))

    # One attempt: the executor retries the call itself; this bounds all of it.
    assert (info.value.error_type, info.value.attempts) == ("StepTimeout", 1)
    assert services.calls == ["tool:http_fetch"]


def test_an_explicit_timeout_wins_over_the_default() -> None:
    services = HangingServices()
    ctx = make_ctx(services, agent_timeout_s=60.0)

    with pytest.raises(StepError) as info:
        run(lambda: ctx.agent("planner").run(None, timeout_s=0.02, retry=FAST.model_copy(
            update={"max_attempts": 1})))
    assert isinstance(info.value.__cause__, StepTimeout) and info.value.__cause__.timeout_s == 0.02


def test_step_defaults_come_from_settings() -> None:
    settings = Settings()
    assert settings.agent_timeout_s == 300.0 and settings.tools.step_timeout_s == 300.0

    tuned = Settings(agent_timeout_s=5, tools={"step_timeout_s": 7})  # type: ignore[arg-type]
    assert (tuned.agent_timeout_s, tuned.tools.step_timeout_s) == (5, 7)


def test_a_steps_retry_after_is_capped_and_reported() -> None:
    services = HangingServices()
    failures = [QueueFull("q", 1, retry_after_s=HUGE)]

    async def busy_once() -> str:
        if failures:
            raise failures.pop()
        return "done"

    assert run(lambda: make_ctx(services).step("submit", busy_once)) == "done"
    ((kind, data),) = services.events
    assert kind == "step_retry" and data["delay_s"] == 0.01  # FAST's max_backoff_s


def test_a_refused_step_is_not_retried() -> None:
    calls = []

    async def invalid() -> None:
        calls.append(1)
        raise InvalidInput("wf", ["x: bad"])

    with pytest.raises(StepError) as info:
        run(lambda: make_ctx(HangingServices()).step("check", invalid))
    assert (info.value.attempts, info.value.error_type) == (1, "InvalidInput") and calls == [1]


def test_on_retry_sees_the_honoured_hint() -> None:
    heard: list[Retrying] = []
    failures = [UpstreamError("http://u", 429, 0.5)]

    async def once() -> str:
        if failures:
            raise failures.pop()
        return "ok"

    policy = RetryPolicy(initial_backoff_s=0.1, max_backoff_s=1.0, jitter=0)
    assert asyncio.run(retry(once, policy, name="x", on_retry=heard.append, sleep=Sleeps())) == "ok"
    assert [(r.delay_s, r.retry_after_s) for r in heard] == [(0.5, 0.5)]
