"""Operator calls on a running runtime: see and change gate limits, list and replay dead letters.

Found by actor name in the runtime's namespace, like the client. Changes to gates take effect at once
and last until the runtime stops (configuration is where lasting limits belong).
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

from runtime.actors import names
from runtime.actors.handles import actor_names
from runtime.core.config import GateLimits
from runtime.core.errors import RuntimeNotRunning
from runtime.core.models import DeadLetter, TaskStatus
from runtime.durable.dispatch import DispatcherHandle
from runtime.events.bus import poke
from runtime.flow.gates import GateKeeperHandle
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

    async def replay(self, letter_id: str) -> DeadLetter:
        """Run a dead letter's call again; it is marked replayed with its result if it succeeds, and
        a task that failed at that call resumes past it (its earlier steps are kept). An outbound
        webhook's dead letter goes out again through the event bus, from its first attempt."""
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

    def replay(self, letter_id: str) -> DeadLetter:
        return asyncio.run(self._ops.replay(letter_id))
