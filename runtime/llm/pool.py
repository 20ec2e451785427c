"""Engine replicas that scale with the model calls the agents will make, not only those in flight.

When ``engine_replicas_max`` is above the fixed count, one ``pool:engine:<model>`` actor per model
sizes the model's engine actors (``engine:<model>:<i>``) every second: wanted =
ceil((requests in flight + agent messages waiting) / ``engine_target_requests``), between the
minimum and the maximum. The messages waiting are those queued in the mailboxes of the agent roles
that run on this model (each will make model calls once a replica takes it: ``demand``), so a burst
of agent work grows the engines before its calls arrive, rather than after they queue. It adds
replicas at once (the next free index; a vLLM replica asks for its GPUs, so one that finds no room
waits as a pending actor, which asks an autoscaling cluster for a GPU node) and stops, from the
highest index down, replicas above the minimum that have had nothing in flight for
``engine_idle_s``; a pending one goes first. The replicas it adds are its own (they die with it, and
a restarted pool starts from the fixed ones). Routers look the replicas up again as they change
(``Router(discover=...)``). The pool holds nothing it cannot rebuild: after a restart it finds the
fixed replicas by name, and an idle clock that starts again only delays a shrink.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol

from runtime.actors.handles import ActorHandle
from runtime.core.config import Settings

log = logging.getLogger(__name__)

SCALE_EVERY_S = 1.0
PROBE_S = 1.0


class Replica(Protocol):
    """What the pool needs of an engine replica."""

    async def load(self, deadline_s: float | None = None) -> int: ...
    async def kill(self) -> None: ...


class EnginePool:
    def __init__(self, settings: Settings, model: str,
                 find: Callable[[], Mapping[int, Replica]],
                 spawn: Callable[[int], Replica],
                 demand: Callable[[], Awaitable[int]] | None = None) -> None:
        """``demand``: the model calls queued agent work will make (messages waiting in the
        mailboxes of the roles on this model)."""
        self.settings = settings
        self.model = model
        self._demand = demand
        self.min, self.max = settings.engine_replicas
        self._find = find
        self._spawn = spawn
        self._busy_at: dict[int, float] = {}  # index -> when it last had a request in flight
        self._answered: set[int] = set()  # indexes that have answered once (not pending)
        # The replicas this pool created: it owns them, and an owned actor whose last handle goes
        # away is collected by Ray, so the handles are kept until the replica is stopped.
        self._spawned: dict[int, Replica] = {}
        self._sizing = asyncio.Lock()
        self._loop: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self._loop is None:
            self._loop = asyncio.create_task(self._supervise())

    async def _supervise(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception:  # noqa: BLE001 - a failed tick is retried on the next one
                log.warning("engine pool %s: sizing tick failed", self.model, exc_info=True)
            await asyncio.sleep(SCALE_EVERY_S)

    async def tick(self) -> int:
        """Size the model's replicas to the requests in flight; returns the count wanted."""
        async with self._sizing:
            return await self._size()

    async def _size(self) -> int:
        replicas = dict(self._find())
        indexes = sorted(replicas)
        loads = await asyncio.gather(*(asyncio.wait_for(replicas[i].load(PROBE_S), PROBE_S)
                                       for i in indexes), return_exceptions=True)
        now = time.monotonic()
        in_flight = 0
        answers: dict[int, int | None] = {}
        for i, load in zip(indexes, loads, strict=True):
            if isinstance(load, BaseException):
                answers[i] = None
                continue
            self._answered.add(i)
            answers[i] = int(load)
            in_flight += int(load)
            if load or i not in self._busy_at:
                self._busy_at[i] = now
        waiting = await self._waiting()
        wanted = max(self.min, min(self.max, math.ceil(
            (in_flight + waiting) / self.settings.engine_target_requests)))
        free = (i for i in range(self.max * 2) if i not in replicas)
        for _ in range(wanted - len(replicas)):
            index = next(free)
            log.info("engine pool %s: %d request(s) in flight and %d agent message(s) waiting, "
                     "adding replica %d", self.model, in_flight, waiting, index)
            replicas[index] = self._spawned[index] = self._spawn(index)
            self._busy_at[index] = now
        surplus = len(replicas) - wanted
        if surplus > 0:
            # Pending ones first (never answered), then the idle ones, highest index first.
            pending = [i for i in indexes if answers.get(i) is None and i not in self._answered]
            idle = [i for i in reversed(indexes) if answers.get(i) == 0
                    and now - self._busy_at.get(i, now) >= self.settings.engine_idle_s]
            for index in [*pending, *idle][:surplus]:
                if index < self.min:
                    continue  # the fixed replicas stay
                log.info("engine pool %s: stopping replica %d", self.model, index)
                await replicas[index].kill()
                self._spawned.pop(index, None)
                self._busy_at.pop(index, None)
                self._answered.discard(index)
        return wanted

    async def _waiting(self) -> int:
        if self._demand is None:
            return 0
        try:
            return max(0, int(await asyncio.wait_for(self._demand(), PROBE_S)))
        except Exception:  # noqa: BLE001 - a mailbox that does not answer adds nothing this tick
            return 0

    async def replicas(self) -> list[int]:
        return sorted(self._find())


class EnginePoolHandle(ActorHandle):
    """A model's engine pool actor, typed."""

    async def tick(self) -> int:
        return await self.via(EnginePool.tick)()

    async def replicas(self) -> list[int]:
        return await self.via(EnginePool.replicas)()


def autoscaled(settings: Settings) -> bool:
    """True where engines autoscale (``engine_replicas_max`` above the minimum): then each model has
    a pool (hosted by the control host)."""
    low, high = settings.engine_replicas
    return high > low
