"""Workflows: ``@workflow`` functions, the ``Context`` they receive, and step memoization.

A workflow runs from the top every time a worker picks its task up. Each ``ctx.step``,
``ctx.agent(...).run``, ``ctx.llm.chat`` gets a stable key from its name and how many steps of that
name came before it; a key already recorded in the Store returns its recorded output at once, so a
failure in step 4 never repeats steps 1 to 3. Code between steps must therefore be deterministic.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, get_type_hints

from pydantic import BaseModel, TypeAdapter, ValidationError

from runtime.core import metrics, tracing
from runtime.core.calls import ModelPlan, want_memo
from runtime.core.config import RetryPolicy
from runtime.core.errors import (
    ActorUnavailable,
    ConfigError,
    InvalidInput,
    LeaseLost,
    SignalTimeout,
    StepError,
    TaskCancelled,
    ToolDenied,
)
from runtime.core.models import ChatMessage, ChatRequest, Completion, TopicEvent
from runtime.core.retry import GaveUp, Retrying, retry
from runtime.core.structured import as_response_format, tool_specs
from runtime.core.triggers import OnEvent, OnSchedule, check_topic
from runtime.tools.registry import DEFINED, defined_tool

log = logging.getLogger(__name__)

ONE_ATTEMPT = RetryPolicy(max_attempts=1)  # for steps whose callee retries on its own (tools)


@dataclass(frozen=True)
class Workflow:
    """A workflow function with its name and its input and output types."""

    fn: Callable[..., Awaitable[Any]]
    name: str
    input_model: type[BaseModel]
    output_type: Any
    retry: RetryPolicy | None = None
    triggers: tuple[OnEvent, ...] = ()
    schedules: tuple[OnSchedule, ...] = ()

    def validate_input(self, data: Any) -> BaseModel:
        try:
            return self.input_model.model_validate(data)
        except ValidationError as e:
            errors = e.errors()
            problems = [f"{'.'.join(str(p) for p in err['loc']) or '(body)'}: {err['msg']}"
                        for err in errors]
            details = [{"loc": ["input", *(str(p) for p in err["loc"])], "msg": err["msg"],
                        "type": err["type"]} for err in errors]
            raise InvalidInput(self.name, problems, details) from None

    @functools.cached_property
    def _output_adapter(self) -> TypeAdapter[Any]:
        return TypeAdapter(self.output_type)

    def dump_output(self, value: Any) -> Any:
        return self._output_adapter.dump_python(value, mode="json")

    def input_schema(self) -> dict[str, Any]:
        return self.input_model.model_json_schema()

    def output_schema(self) -> dict[str, Any]:
        return self._output_adapter.json_schema()


def workflow(fn: Callable[..., Awaitable[Any]] | None = None, *, name: str | None = None,
             retry: RetryPolicy | None = None,
             triggers: list[OnEvent | OnSchedule] | None = None) -> Any:
    """Declare ``async def f(ctx: Context, inp: SomeModel) -> Out`` a workflow named ``name or f``.

    ``triggers``: ``on_event(...)`` subscriptions, each starting one task per matching event, and
    ``on_schedule(...)`` schedules (runtime/core/triggers.py)."""
    for trigger in triggers or ():
        if not isinstance(trigger, OnEvent | OnSchedule):
            raise TypeError(f"a workflow trigger is made with on_event(...) or on_schedule(...), "
                            f"not {trigger!r}")
    events = tuple(t for t in triggers or () if isinstance(t, OnEvent))
    schedules = tuple(t for t in triggers or () if isinstance(t, OnSchedule))

    def wrap(f: Callable[..., Awaitable[Any]]) -> Workflow:
        if not inspect.iscoroutinefunction(f):
            raise TypeError(f"workflow {f.__name__} must be an async def")
        hints = get_type_hints(f)
        params = list(inspect.signature(f).parameters)
        if len(params) != 2:
            raise TypeError(f"workflow {f.__name__} must take (ctx, inp), not {params}")
        input_model = hints.get(params[1])
        if not (isinstance(input_model, type) and issubclass(input_model, BaseModel)):
            raise TypeError(f"workflow {f.__name__}: annotate its input with a pydantic model")
        return Workflow(f, name or f.__name__, input_model, hints.get("return", Any), retry,
                        events, schedules)

    return wrap(fn) if fn is not None else wrap


@dataclass(frozen=True)
class StepDefaults:
    """What a run's steps use where a step says nothing else: the workflow's retry policy (else the
    settings'), the default model, and timeouts by kind of step (``Settings.agent_timeout_s``,
    ``ToolSettings.step_timeout_s``; ``step_timeout_s`` applies where those are not set)."""

    retry: RetryPolicy
    model: str
    step_timeout_s: float | None = None
    agent_timeout_s: float | None = None
    tool_timeout_s: float | None = None
    llm_cache: bool = False  #: the deployment's memo (``RAYSQUAD_LLM_CACHE``), where a call says nothing


class Services(Protocol):
    """What a Context needs from the run that owns it (``runtime.durable.run.Run``, which knows its task
    and lease; a test can supply its own)."""

    async def record(self, key: str, value: Any) -> Any:
        """Checkpoint ``value`` under ``key``; return what the workflow should see (maybe a Ref)."""

    async def call_agent(self, role: str, key: str, payload: Any) -> Any:
        """Send ``payload`` to the role's mailbox and wait for the reply."""

    async def chat(self, request: ChatRequest, plan: ModelPlan) -> Completion:
        """Run one chat completion as ``plan`` says (``runtime.llm.calls.call_model``: the memo,
        retries, fallback models, its dead letter)."""

    def emit(self, kind: str, data: dict[str, Any]) -> None:
        """Append an event to the task's log, without waiting."""

    async def call_tool(self, name: str, key: str, args: dict[str, Any]) -> Any:
        """Run a tool call (the executor retries it) and return its result."""

    async def await_signal(self, name: str, key: str, wake_at: float | None,
                           announce: tuple[str, dict[str, Any]] | None = None) -> tuple[str, Any]:
        """Take a signal (recorded as step ``key``), time out, or park the task ("parked"), logging
        ``announce`` (an event) as it parks."""

    async def publish(self, topic: str, data: Any, key: str | None, event_id: str) -> TopicEvent:
        """Publish an event (kept once per ``event_id``) and return it as kept."""


class Parked(BaseException):  # noqa: N818 - control flow, not an error
    """Unwinds a workflow that waits for a signal, so its worker can let it go (status waiting).

    A BaseException, so that a workflow's own ``except Exception`` does not swallow it.
    """

    def __init__(self, task_id: str, name: str) -> None:
        super().__init__(task_id, name)
        self.task_id = task_id
        self.name = name


class Context:
    """What a workflow function sees: steps, agents, the LLM, progress events."""

    def __init__(self, task_id: str, workflow: str, priority: int, tenant: str,
                 recorded: dict[str, Any], services: Services, defaults: StepDefaults) -> None:
        self.task_id = task_id
        self.workflow = workflow
        self.priority = priority
        self.tenant = tenant
        self.cancel_requested = False  # set by the run that owns this context
        self._recorded = recorded
        self._services = services
        self._defaults = defaults
        self._counts: dict[str, int] = {}
        # True until the first step that was not recorded: progress events are not repeated on replay.
        self.replaying = bool(recorded)
        self.step_elapsed_s: float | None = None  # how long the step being recorded ran
        self.llm = LLM(self, defaults.model)

    def _key(self, name: str) -> str:
        return numbered(self._counts, name)

    def step(self, name: str, fn: Callable[..., Any], *args: Any, retry: RetryPolicy | None = None,
             timeout_s: float | None = None, **kwargs: Any) -> Awaitable[Any]:
        """Run ``fn(*args, **kwargs)`` (sync functions in a thread) once, checkpointing its result."""

        async def attempt() -> Any:
            if inspect.iscoroutinefunction(fn):
                return await fn(*args, **kwargs)
            result = await asyncio.to_thread(fn, *args, **kwargs)
            return await result if inspect.isawaitable(result) else result

        return self._run(self._key(name), attempt, retry, timeout_s)

    def tool(self, name: str, /, **args: Any) -> Awaitable[Any]:
        """Call the tool ``name`` with ``args``, checkpointed: ``await ctx.tool("http_fetch", url=u)``.

        The tool's own policy retries the call (with its gate, timeout and backoff); a call that runs
        out of retries raises ToolFailed naming its dead letter. The step as a whole (gate waits, every
        attempt and backoff) is bounded by the tools' ``step_timeout_s``.
        """
        key = self._key(f"tool:{name}")
        defined = DEFINED.get(name)
        if defined is not None and defined.requires_approval:
            return self._approved_call(name, key, args)
        return self._run(key, lambda: self._services.call_tool(name, key, args), ONE_ATTEMPT,
                         self._defaults.tool_timeout_s)

    async def tool_unrecorded(self, name: str, args: dict[str, Any]) -> Any:
        """A tool call that is not a step of its own: for a caller that records it itself (the
        Pydantic AI integration's toolset). It runs on the tool executors all the same."""
        self.check_cancelled()
        return await self._services.call_tool(name, f"tool:{name}", args)

    async def _approved_call(self, name: str, key: str, args: dict[str, Any]) -> Any:
        """A call of a tool that requires approval: the task parks on ``approval:<key>`` (its call id
        is its step key) until a person decides; the decision is recorded as step ``<key>/approval``,
        an approved call (with the arguments as edited) is then made once, a denied one raises
        ToolDenied."""
        decided = f"{key}/approval"
        if key not in self._recorded and decided not in self._recorded:
            self.replaying = False
            self.check_cancelled()
            requested = ("approval.requested", {"call_id": key, "tool": name, "arguments": args,
                                                "step": key})
            kind, payload = await self._services.await_signal(f"approval:{key}", decided, None,
                                                              requested)
            if kind == "parked":
                raise Parked(self.task_id, f"approval:{key}")
            self._recorded[decided] = (kind, payload)
        if key not in self._recorded:
            _, decision = self._recorded[decided]
            if decision.get("decision") != "approve":
                raise ToolDenied(self.task_id, name, key, decision.get("reason") or "denied")
            args = decision.get("arguments") or args
        return await self._run(key, lambda: self._services.call_tool(name, key, args), ONE_ATTEMPT,
                               self._defaults.tool_timeout_s)

    def publish(self, topic: str, data: Any = None, *, key: str | None = None) -> Awaitable[TopicEvent]:
        """Publish an event on ``topic`` as a checkpointed step: ``await ctx.publish("docs.new",
        {"url": u}, key=u)``. Its id is the task's and the step's, so a run that resumes after it,
        or repeats it after a crash, publishes nothing new."""
        check_topic(topic)
        step = self._key(f"publish:{topic}")
        event_id = f"{self.task_id}/{step}"
        return self._run(step, lambda: self._services.publish(topic, data, key, event_id),
                         None, None)

    def agent(self, role: str) -> AgentRef:
        """The pool of agents of ``role``: ``await ctx.agent("planner").run(payload)``."""
        return AgentRef(self, role)

    async def wait_for_signal(self, name: str, timeout_s: float | None = None) -> Any:
        """Wait for the signal ``name`` (sent over HTTP or ``Client.signal``) and return its payload.

        The task is parked meanwhile: status ``waiting``, no worker held, also across restarts.
        Raises SignalTimeout after ``timeout_s`` (measured from the first time this wait was reached).
        """
        key = self._key(f"signal:{name}")
        deadline_key = self._key(f"signal:{name}:deadline")
        if key not in self._recorded:
            wake_at = None
            if timeout_s is not None:
                wake_at = await self._run(deadline_key, _deadline(timeout_s), None, None)
            self.replaying = False
            self.check_cancelled()
            kind, payload = await self._services.await_signal(name, key, wake_at)
            if kind == "parked":
                raise Parked(self.task_id, name)
            self._recorded[key] = (kind, payload)
        kind, payload = self._recorded[key]
        if kind == "timeout":
            raise SignalTimeout(self.task_id, name, timeout_s or 0)
        return payload

    def emit(self, progress: float | None = None, message: str | None = None, **data: Any) -> None:
        """Append a progress event (not a step: it may repeat when a task resumes)."""
        if self.replaying:
            return
        body = {k: v for k, v in (("progress", progress), ("message", message)) if v is not None}
        self._services.emit("progress", {**body, **data})

    def check_cancelled(self) -> None:
        if self.cancel_requested:
            raise TaskCancelled(self.task_id)

    async def _run(self, key: str, attempt: Callable[[], Awaitable[Any]],
                   retry_policy: RetryPolicy | None, timeout_s: float | None,
                   bounded: bool = True) -> Any:
        """Run a step once (``retry_policy``'s attempts, each under ``timeout_s``, else the default
        step timeout unless not ``bounded``: a callee that times its own attempts) and record it;
        a step recorded before answers its record."""
        if key in self._recorded:
            return self._recorded[key]
        self.replaying = False
        self.check_cancelled()
        started = time.monotonic()
        kind = step_kind(key)
        if bounded:
            timeout_s = timeout_s or self._defaults.step_timeout_s
        with tracing.span(f"step {key}", **{"raysquad.step": key, "raysquad.kind": kind}):
            try:
                value = await retry(attempt, retry_policy or self._defaults.retry, name=key,
                                    timeout_s=timeout_s,
                                    on_retry=functools.partial(self._retrying, key),
                                    passthrough=(TaskCancelled, LeaseLost))
            except GaveUp as e:
                if isinstance(e.error, ActorUnavailable):
                    # The runtime, not the step, failed (an actor it called is down or restarting
                    # on another node): the run stops short and the task resumes at this step.
                    raise e.error from None
                raise StepError(key, str(e.error), type(e.error).__name__, e.attempts) from e.error
        self.step_elapsed_s = time.monotonic() - started  # the step's event keeps it (timelines)
        metrics.observe("raysquad_step_seconds", self.step_elapsed_s, workflow=self.workflow,
                        kind=kind)
        value = await self._services.record(key, value)
        self._recorded[key] = value
        return value

    def _retrying(self, key: str, retrying: Retrying) -> None:
        name = type(retrying.error).__name__
        log.info("task %s step %s attempt %d failed (%s); retrying in %.2fs",
                 self.task_id, key, retrying.attempt, name, retrying.delay_s)
        self._services.emit("step_retry", {
            "key": key, "attempt": retrying.attempt, "error": str(retrying.error), "error_type": name,
            "delay_s": round(retrying.delay_s, 3)})


class AgentRef:
    """A handle on an agent role, bound to one workflow context."""

    def __init__(self, ctx: Context, role: str) -> None:
        self._ctx = ctx
        self.role = role

    def run(self, payload: Any = None, *, retry: RetryPolicy | None = None,
            timeout_s: float | None = None) -> Awaitable[Any]:
        """Send ``payload`` to one agent of the role; the reply is checkpointed as a step. Each
        attempt is bounded by ``timeout_s`` (default: the context's agent timeout); a timed-out one
        is retried under the step's policy."""
        ctx = self._ctx
        key = ctx._key(f"agent:{self.role}")
        return ctx._run(key, lambda: ctx._services.call_agent(self.role, key, payload),
                        retry, timeout_s or ctx._defaults.agent_timeout_s)


class LLM:
    """``await ctx.llm.chat(messages)``: one checkpointed chat completion."""

    def __init__(self, ctx: Context, default_model: str) -> None:
        self._ctx = ctx
        self.default_model = default_model

    def chat(self, messages: Messages, *, model: str | None = None, max_tokens: int = 128,
             temperature: float = 0.0, tools: Sequence[Any] = (), tool_choice: str = "auto",
             response_format: Any = None, retry: RetryPolicy | None = None,
             timeout_s: float | None = None, cache: bool | None = None,
             fallback_models: Sequence[str] = ()) -> Awaitable[Completion]:
        """One chat completion, checkpointed. ``tools``: names of tools defined in the app
        modules, ``@tool`` functions or OpenAI function specs, offered to the model (its
        ``tool_calls`` come back in the Completion; running them is the caller's); ``tool_choice``:
        ``"auto"``, ``"required"``, ``"none"`` or a tool's name; ``response_format``: a pydantic
        model or a JSON schema the answer must fit (``Completion.parsed``).

        ``retry`` (the workflow's policy by default) is how often the call is tried on each model,
        each attempt bounded by ``timeout_s``; when the tries on ``model`` run out, the call goes to
        each of ``fallback_models`` in turn (the Completion's ``model`` says which answered); when
        every model ran out, the step fails with ``ModelFailed`` naming the call's dead letter,
        whose replay (on another model, if asked) resumes the task past it. ``cache``: answer from
        the Store's memo when this tenant asked the same before (temperature 0 only; default
        ``RAYSQUAD_LLM_CACHE``); such an answer is ``cached`` and spends no tokens."""
        ctx = self._ctx
        request = chat_request(model or self.default_model, messages, max_tokens=max_tokens,
                               temperature=temperature, tools=tools, tool_choice=tool_choice,
                               response_format=response_format, priority=ctx.priority,
                               tenant=ctx.tenant)
        memo = want_memo(cache, ctx._defaults.llm_cache, temperature=temperature)
        key = ctx._key(f"llm:{request.model}")
        # The task is the conversation: its calls go to one replica while it is not overloaded.
        request = request.model_copy(update={"request_id": f"{ctx.task_id}/{key}",
                                             "session": ctx.task_id})
        plan = ModelPlan(fallback_models=tuple(fallback_models), cache=memo,
                         retry=retry or ctx._defaults.retry,
                         timeout_s=timeout_s or ctx._defaults.step_timeout_s, dead_letter=True,
                         on_retry=functools.partial(ctx._retrying, key))
        # One attempt of the step: the plan's retries run on each model, each attempt timed.
        return ctx._run(key, lambda: ctx._services.chat(request, plan), ONE_ATTEMPT, None,
                        bounded=False)

    async def complete(self, request: ChatRequest) -> Completion:
        """One chat completion that is not a step of its own: for a caller that records it itself
        (the Pydantic AI integration's model). The task's priority and tenant go with it, its
        tokens count against the task's budget; the deployment's memo may answer it."""
        ctx = self._ctx
        request = request.model_copy(update={
            "priority": ctx.priority, "tenant": ctx.tenant, "session": ctx.task_id,
            "request_id": f"{ctx.task_id}/llm:{request.model}:{uuid.uuid4().hex[:8]}"})
        plan = ModelPlan(cache=want_memo(None, ctx._defaults.llm_cache,
                                         temperature=request.temperature))
        return await ctx._services.chat(request, plan)


def step_kind(key: str) -> str:
    """A step key's kind, for metrics and traces: agent, llm, tool, publish, signal, or step."""
    head = key.split(":", 1)[0] if ":" in key else ""
    return head if head in ("agent", "llm", "tool", "publish", "signal") else "step"


def _deadline(timeout_s: float) -> Callable[[], Awaitable[float]]:
    async def now_plus() -> float:
        return time.time() + timeout_s

    return now_plus


def numbered(counts: dict[str, int], name: str) -> str:
    """``name`` the first time, then ``name#2``, ``name#3`` ...: the keys of a workflow's steps and
    of an agent handler's calls, in the order they are made."""
    n = counts[name] = counts.get(name, 0) + 1
    return name if n == 1 else f"{name}#{n}"


Messages = list[ChatMessage] | list[dict[str, Any]] | str


def chat_request(model: str, messages: Messages, *, max_tokens: int, temperature: float,
                 tools: Sequence[Any], tool_choice: str, response_format: Any, priority: int,
                 tenant: str, request_id: str | None = None, session: str | None = None
                 ) -> ChatRequest:
    """A chat's request from what a workflow or an agent passes (tools by name are looked up among
    the tools this process defined); a bad tool, choice or format is a ConfigError here, before
    anything runs."""
    try:
        return ChatRequest(
            model=model, messages=as_messages(messages), max_tokens=max_tokens,
            temperature=temperature, priority=priority, tenant=tenant, request_id=request_id,
            session=session, tools=tool_specs(tools, defined_tool), tool_choice=tool_choice,
            response_format=as_response_format(response_format))
    except ValidationError as e:
        raise ConfigError(f"bad chat request: {e.errors()[0]['msg']}") from None


def as_messages(messages: Messages) -> list[ChatMessage]:
    if isinstance(messages, str):
        return [ChatMessage(role="user", content=messages)]
    return [m if isinstance(m, ChatMessage) else ChatMessage.model_validate(m) for m in messages]
