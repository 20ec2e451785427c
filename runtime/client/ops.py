"""Operator calls on a running runtime: see and change gate limits, list and replay dead letters
(a tool's on a tool executor, a model call's on an engine: its own models, or one named).

Found by actor name in the runtime's namespace, like the client. Changes to gates take effect at once
and last until the runtime stops (configuration is where lasting limits belong).
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

from runtime.actors import names
from runtime.actors.handles import actor_names
from runtime.core import refs
from runtime.core.config import GateLimits
from runtime.core.errors import ModelNotFound, NotAModelCall, RuntimeNotRunning
from runtime.core.models import ChatRequest, Completion, DeadLetter, TaskStatus
from runtime.durable.dispatch import DispatcherHandle
from runtime.events.bus import poke
from runtime.flow.gates import GateKeeperHandle
from runtime.llm.calls import answer_again, is_model_letter
from runtime.llm.engine import EngineHandle, find_engines
from runtime.store.actor import StoreHandle
from runtime.tools.executor import ToolExecutorHandle


def tool_executors(namespace: str) -> list[ToolExecutorHandle]:
    return [ToolExecutorHandle.named(n, namespace) for n in actor_names(namespace, names.TOOLS_PREFIX)]


class AsyncOps:
    def __init__(self, namespace: str) -> None:
        try:
            self._gates = GateKeeperHandle.find(namespace)
            self._store = StoreHandle.find(namespace)
            self._dispatcher = DispatcherHandle.find(namespace)
        except ValueError:
            raise RuntimeNotRunning(f"Ray namespace {namespace!r}") from None
        self._executors = tool_executors(namespace)
        self._namespace = namespace

    async def gates(self) -> dict[str, dict[str, Any]]:
        """Every gate's limits and state: holdings, the window's use, waiters, grants per tenant."""
        return await self._gates.stats()

    async def set_gate(self, key: str, limits: GateLimits | None) -> None:
        """Set (or, with ``None``, remove) a gate's limits now."""
        await self._gates.configure(key, limits)

    async def tools(self) -> list[dict[str, Any]]:
        return await self._executors[0].schemas()

    async def dead_letters(self, status: str | None = None, tool: str | None = None,
                           tenant: str | None = None, limit: int = 100) -> list[DeadLetter]:
        return await self._store.dead_letters(status, tool, tenant, limit)

    async def dead_letter(self, letter_id: str) -> DeadLetter:
        return await self._store.get_dead_letter(letter_id)

    async def replay(self, letter_id: str, model: str | None = None) -> DeadLetter:
        """Run a dead letter's call again; it is marked replayed with its result if it succeeds, and
        a task that failed at that call resumes past it (its earlier steps are kept). An outbound
        webhook's dead letter goes out again through the event bus, from its first attempt. A model
        call's letter runs on ``model`` if given (NotAModelCall for any other letter, ModelNotFound
        for a model no engine serves), else on the models it had, in order."""
        engines = find_engines(self._namespace) if model is not None else {}
        if model is not None:
            named = await self._store.get_dead_letter(letter_id)
            if not is_model_letter(named):
                raise NotAModelCall(letter_id, named.tool)
            if model not in engines:
                raise ModelNotFound(model, tuple(sorted(engines)))
        # Taken first, in one conditional write: of concurrent replays of a letter one runs it,
        # the others answer it as it is (replaying, or replayed).
        letter, taken = await self._store.take_dead_letter(letter_id)
        if not taken:
            return letter
        if letter.tool.startswith("webhook:"):
            requeued = await self._store.redeliver(int(letter.args["event_seq"]), letter.tool)
            replayed = await self._store.replayed(letter_id, requeued, {"redelivered": requeued},
                                                  "" if requeued else "its event is gone", 0)
            poke(self._namespace)
            return replayed
        try:
            if is_model_letter(letter):
                letter = await self._replay_model_call(letter, model,
                                                       engines or find_engines(self._namespace))
            else:
                letter = await random.choice(self._executors).replay(letter_id)
        except Exception as e:
            # The call could not run at all (its tool is gone, its executor died): dead again.
            await self._store.replayed(letter_id, False, None, f"replay failed: {e}", 0)
            raise
        if letter.status == "replayed" and letter.task_id:
            task = await self._store.get_task(letter.task_id)
            if task.status == TaskStatus.QUEUED:  # the dispatcher's reconcile would find it too
                await self._dispatcher.requeue([letter.task_id])
        return letter

    async def _replay_model_call(self, letter: DeadLetter, model: str | None,
                                 engines: dict[str, list[EngineHandle]]) -> DeadLetter:
        """A model call's letter run again on an engine of ``model`` (else of its own models, in
        order); its answer becomes the failed task's step, its tokens the task's."""

        async def on_engine(request: ChatRequest) -> Completion:
            handles = engines.get(request.model)
            if not handles:
                raise ModelNotFound(request.model, tuple(sorted(engines)))
            return await random.choice(handles).chat(request)

        completion, error, attempts = await answer_again(letter, model, on_engine)
        if completion is None:
            failed: DeadLetter = await self._store.replayed(letter.id, False, None, error, attempts)
            return failed
        step_output, _ = refs.dumps(completion)
        usage = completion.usage
        done: DeadLetter = await self._store.replayed(
            letter.id, True, completion.model_dump(mode="json"), "", attempts, step_output,
            (completion.model, usage.prompt_tokens, usage.completion_tokens))
        return done


class Ops:
    """The same calls for synchronous code (the CLI, driver scripts): each runs AsyncOps's to its end."""

    def __init__(self, namespace: str) -> None:
        self._ops = AsyncOps(namespace)

    def gates(self) -> dict[str, dict[str, Any]]:
        return asyncio.run(self._ops.gates())

    def set_gate(self, key: str, limits: GateLimits | None) -> None:
        asyncio.run(self._ops.set_gate(key, limits))

    def tools(self) -> list[dict[str, Any]]:
        return asyncio.run(self._ops.tools())

    def dead_letters(self, status: str | None = None, tool: str | None = None,
                     tenant: str | None = None, limit: int = 100) -> list[DeadLetter]:
        return asyncio.run(self._ops.dead_letters(status, tool, tenant, limit))

    def replay(self, letter_id: str, model: str | None = None) -> DeadLetter:
        return asyncio.run(self._ops.replay(letter_id, model))
