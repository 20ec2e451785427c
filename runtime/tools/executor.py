"""Tool executors: actors that run tool calls with gates, timeouts, retries, batching, dead letters.

A call passes its tool's gate on every attempt (so a cluster-wide limit counts retries too), runs
under the tool's timeout, and is retried by runtime/core/retry.py's loop while its error is retryable (an
upstream's Retry-After is honoured up to the policy's max_backoff_s, and an upstream 429 also
throttles the gate, as long). A call that runs out of retries becomes a dead letter in the Store,
which ``replay`` runs again.

A batching tool's calls all go to one executor (chosen by the tool's name), which holds them for up
to ``max_wait_s`` after the first arrives, or until ``max_size`` are waiting, and makes one upstream
call for all of them; each caller gets its own result. A failed batch retries each of its calls in a
later batch.

``ToolRouter`` is the caller's side (workflow workers and agent replicas): it validates arguments,
picks an executor, and sends the call again to another if its executor dies.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from runtime.actors.handles import ActorHandle
from runtime.core import metrics, refs
from runtime.core.config import RetryPolicy, Settings
from runtime.core.errors import ActorUnavailable, ToolFailed, UpstreamError
from runtime.core.models import DeadLetter
from runtime.core.retry import (
    GaveUp,
    Retrying,
    Sleep,
    attempt_timeout,
    capped_retry_after_s,
    delay_s,
    retry,
    retry_after_s,
)
from runtime.flow.gates import GateClient, Passage
from runtime.tools.registry import Registry, Tool, ToolContext, dump_result

log = logging.getLogger(__name__)

ROUTER_RESENDS = 3  # an executor that dies mid-call: send the call to another this many times
RESEND_BACKOFF_S = 0.25  # before the first resend; doubled before each next one


@dataclass(frozen=True)
class Caller:
    """Who makes a tool call: the task and step it belongs to, for gates and dead letters."""

    task_id: str = ""
    step_key: str = ""
    tenant: str = "default"
    priority: int = 0


@dataclass(eq=False)
class _Pending:
    args: BaseModel
    caller: Caller
    future: asyncio.Future[Any]
    attempts: int = 0
    errors: list[str] = field(default_factory=list)


class ToolExecutor:
    def __init__(self, settings: Settings, registry: Registry, store: Any, gates: GateClient,
                 sleep: Sleep = asyncio.sleep) -> None:
        self.settings = settings
        self.registry = registry
        self.store = store
        self.gates = gates
        self._sleep = sleep  # every backoff waits here (a test measures them instead)
        self._batches: dict[str, _Batcher] = {}
        self.upstream_calls: dict[str, int] = {}
        self.in_flight = 0

    async def call(self, name: str, args: dict[str, Any], caller: Caller) -> Any:
        tool = self.registry.get(name)
        model = tool.validate(args)
        self.in_flight += 1
        try:
            if tool.batch is not None:
                batcher = self._batches.get(name)
                if batcher is None:
                    batcher = self._batches[name] = _Batcher(self, tool)
                return await batcher.submit(model, caller)
            return await self._with_retries(tool, model, caller, dead_letter=True)
        finally:
            self.in_flight -= 1

    async def replay(self, letter_id: str) -> DeadLetter:
        """Run a dead letter's call again (with its tool's retries); record how it went."""
        letter: DeadLetter = await self.store.get_dead_letter(letter_id)
        if letter.status == "replayed":
            return letter
        tool = self.registry.get(letter.tool)
        model = tool.validate(letter.args)
        caller = Caller(letter.task_id or "", letter.step_key or "", letter.tenant)
        try:
            result = await self._with_retries(tool, model, caller, dead_letter=False,
                                              run=_alone(tool, model) if tool.batch else None)
        except ToolFailed as e:
            failed: DeadLetter = await self.store.replayed(letter_id, False, None, str(e), e.attempts)
            return failed
        # The result also becomes the failed task's step, so that task resumes past this call.
        step_output, _ = refs.dumps(result)
        done: DeadLetter = await self.store.replayed(letter_id, True, dump_result(result), "", 1,
                                                     step_output)
        return done

    async def schemas(self) -> list[dict[str, Any]]:
        return self.registry.schemas()

    async def stats(self) -> dict[str, Any]:
        return {"in_flight": self.in_flight, "upstream_calls": dict(self.upstream_calls)}

    # -- one call, with retries -------------------------------------------------------------------

    def _policy(self, tool: Tool) -> RetryPolicy:
        return tool.retry or self.settings.tools.retry

    async def _with_retries(self, tool: Tool, args: BaseModel, caller: Caller, dead_letter: bool,
                            run: Callable[[ToolContext], Awaitable[Any]] | None = None) -> Any:
        policy = self._policy(tool)
        once = run or (lambda ctx: tool.call(args, ctx))

        def retrying(r: Retrying) -> None:
            log.info("task %s tool %s attempt %d failed (%s); retrying in %.2fs", caller.task_id,
                     tool.name, r.attempt, type(r.error).__name__, r.delay_s)
            metrics.inc("raysquad_tool_retries", tool=tool.name)

        try:
            result = await retry(lambda: self._attempt(tool, args, caller, once), policy,
                                 name=f"tool:{tool.name}",
                                 retryable=lambda error: tool.retryable(error, policy),
                                 on_retry=retrying, sleep=self._sleep)
            metrics.inc("raysquad_tool_calls", tool=tool.name, outcome="ok")
            return result
        except GaveUp as e:
            metrics.inc("raysquad_tool_calls", tool=tool.name, outcome="failed")
            letter = ""
            if e.retryable and dead_letter:
                metrics.inc("raysquad_dead_letters", tool=tool.name)
                letter = await self._dead_letter(tool, args, caller, e.error, e.attempts)
            raise ToolFailed(tool.name, str(e.error), type(e.error).__name__, e.attempts,
                             letter) from None

    async def _attempt(self, tool: Tool, args: BaseModel, caller: Caller,
                       run: Callable[[ToolContext], Awaitable[Any]]) -> Any:
        """One upstream call: pass the gate, run under the timeout, throttle the gate on a 429."""
        timeout_s = tool.timeout_s or self.settings.tools.timeout_s
        async with self.gates.passage(tool.gate_key(args), caller.tenant, caller.priority) as passage:
            self.upstream_calls[tool.name] = self.upstream_calls.get(tool.name, 0) + 1
            ctx = ToolContext(self.settings.tools, tool.name, caller.task_id, caller.tenant,
                              passage.reached,
                              gate=lambda key: self.gates.passage(key, caller.tenant, caller.priority))
            try:
                async with attempt_timeout(f"tool:{tool.name}", timeout_s):
                    return await run(ctx)
            except UpstreamError as e:
                _throttle(passage, e, self._policy(tool))
                raise

    async def _dead_letter(self, tool: Tool, args: BaseModel, caller: Caller, error: BaseException,
                           attempts: int) -> str:
        letter = DeadLetter(
            id=uuid.uuid4().hex, tool=tool.name, args=args.model_dump(mode="json"), error=str(error),
            error_type=type(error).__name__, attempts=attempts, task_id=caller.task_id or None,
            step_key=caller.step_key or None, tenant=caller.tenant, created_at=time.time())
        try:
            await self.store.add_dead_letter(letter)
        except Exception:  # noqa: BLE001 - the caller still gets its error
            log.exception("tool %s: could not keep its dead letter", tool.name)
            return ""
        log.warning("tool %s: call failed %d times (%s); dead letter %s", tool.name, attempts,
                    type(error).__name__, letter.id)
        return letter.id


def _alone(tool: Tool, args: BaseModel) -> Callable[[ToolContext], Awaitable[Any]]:
    """A batching tool's call on its own: a batch of one (replays of its dead letters)."""

    async def run(ctx: ToolContext) -> Any:
        (result,) = await tool.call_batch([args], ctx)
        if isinstance(result, BaseException):
            raise result
        return result

    return run


def _throttle(passage: Passage, error: UpstreamError, policy: RetryPolicy) -> None:
    """An upstream 429 closes the gate for its Retry-After, capped like the retry's own wait."""
    if error.status == 429:
        passage.throttled(capped_retry_after_s(error.retry_after_s, policy))


class _Batcher:
    """Collects one batching tool's calls into upstream calls of at most ``max_size``."""

    def __init__(self, executor: ToolExecutor, tool: Tool) -> None:
        assert tool.batch is not None
        self.executor = executor
        self.tool = tool
        self.batch = tool.batch
        self.waiting: list[_Pending] = []
        self._timer: asyncio.TimerHandle | None = None
        self._running: set[asyncio.Task[None]] = set()

    async def submit(self, args: BaseModel, caller: Caller) -> Any:
        pending = _Pending(args, caller, asyncio.get_running_loop().create_future())
        self._add(pending)
        return await pending.future

    def _add(self, pending: _Pending) -> None:
        self.waiting.append(pending)
        if len(self.waiting) >= self.batch.max_size:
            self._flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.batch.max_wait_s, self._flush)

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self.waiting:
            items, self.waiting = (self.waiting[:self.batch.max_size],
                                   self.waiting[self.batch.max_size:])
            task = asyncio.create_task(self._run(items))
            self._running.add(task)
            task.add_done_callback(self._running.discard)
            if len(self.waiting) < self.batch.max_size:
                break
        if self.waiting and self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.batch.max_wait_s, self._flush)

    async def _run(self, items: list[_Pending]) -> None:
        ex, tool = self.executor, self.tool
        first = items[0]
        args = [p.args for p in items]
        try:
            results = await ex._attempt(tool, first.args, first.caller,
                                        lambda ctx: tool.call_batch(args, ctx))
        except Exception as e:  # noqa: BLE001 - every call of the batch failed with it
            results = [e] * len(items)
        for pending, result in zip(items, results, strict=True):
            if pending.future.done():
                continue
            if isinstance(result, BaseException):
                await self._failed(pending, result)
            else:
                pending.future.set_result(result)

    async def _failed(self, pending: _Pending, error: BaseException) -> None:
        ex, tool = self.executor, self.tool
        policy = ex._policy(tool)
        pending.attempts += 1
        retryable = tool.retryable(error, policy)
        if retryable and pending.attempts < policy.max_attempts:
            loop = asyncio.get_running_loop()
            wait = delay_s(policy, pending.attempts, retry_after_s(error))
            loop.call_later(wait, self._add, pending)
            return
        letter = ""
        if retryable:
            letter = await ex._dead_letter(tool, pending.args, pending.caller, error, pending.attempts)
        pending.future.set_exception(
            ToolFailed(tool.name, str(error), type(error).__name__, pending.attempts, letter))


class ToolRouter:
    """The caller's side: validates, routes (a batching tool always to the same executor), resends."""

    def __init__(self, registry: Registry, executors: list[ToolExecutorHandle]) -> None:
        self.registry = registry
        self.executors = executors
        self._load = [0] * len(executors)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.registry, self.executors))

    def _pick(self, tool: Tool, attempt: int) -> int:
        n = len(self.executors)
        if tool.batch is not None:
            return (zlib.crc32(tool.name.encode()) + attempt) % n
        least = min(self._load)
        return random.choice([i for i, load in enumerate(self._load) if load == least])

    async def call(self, name: str, args: dict[str, Any], caller: Caller) -> Any:
        tool = self.registry.get(name)
        tool.validate(args)  # a bad call fails here, before it travels
        for attempt in range(ROUTER_RESENDS + 1):
            i = self._pick(tool, attempt)
            self._load[i] += 1
            try:
                return await self.executors[i].call(name, args, caller)
            except ActorUnavailable:
                if attempt >= ROUTER_RESENDS:
                    raise
                log.warning("tool %s: executor %d died during a call; sending it again", name, i)
            finally:
                self._load[i] -= 1
            # Give a lone executor time to come back (Ray restarts it, on another node if need be).
            await asyncio.sleep(RESEND_BACKOFF_S * 2**attempt)
        raise AssertionError("unreachable")


class ToolExecutorHandle(ActorHandle):
    """One tool executor actor, typed. A call in flight when it died is sent again by the router, to
    another executor where there is one (tools are at least once, like agent handlers)."""

    async def call(self, name: str, args: dict[str, Any], caller: Caller) -> Any:
        return await self.via(ToolExecutor.call, idempotent=False)(name, args, caller)

    async def replay(self, letter_id: str) -> DeadLetter:
        return await self.via(ToolExecutor.replay, idempotent=False)(letter_id)

    async def schemas(self) -> list[dict[str, Any]]:
        return await self.via(ToolExecutor.schemas)()

    async def stats(self, deadline_s: float | None = None) -> dict[str, Any]:
        return await self.via(ToolExecutor.stats, deadline_s=deadline_s)()


