"""An engine's admission queue: at most ``limit`` requests at the model at once; the others wait,
ordered by priority with aging and, within that, by the service their program has had.

A waiter's heap key is fixed when it arrives (so the heap stays O(log n)):

    aging_per_s * arrived_at - priority + service_weight * attained_s(program)

where a program is the task a request belongs to (its request id's first part) and ``attained_s``
is the engine time its earlier requests here held a slot. So a request of a task that has had
little service goes ahead of one from a task that has had much (short programs are not stuck
behind long ones: least-attained-service first, as Autellix schedules agentic programs), while
aging bounds every wait: a request waits behind a later one only while the later one's lead in
priority and in attained service, ``(q - p) + service_weight * (a_p - a_q)``, is worth more than
``aging_per_s`` times the seconds between them. ``service_weight=0`` is priority then arrival.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable

#: The programs whose attained service is remembered (the least recently seen are forgotten).
PROGRAMS_KEPT = 10_000


def program_of(request_id: str | None) -> str | None:
    """The program (task) a request belongs to: its request id is ``<task id>/<call>``."""
    return request_id.split("/", 1)[0] if request_id and "/" in request_id else None


class Admission:
    def __init__(self, limit: int, aging_per_s: float = 1.0, service_weight: float = 0.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.active = 0
        self.aging_per_s = aging_per_s
        self.service_weight = service_weight
        self._clock = clock
        self._waiting: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        self._attained: OrderedDict[str, float] = OrderedDict()

    @property
    def queued(self) -> int:
        return len(self._waiting)

    def attained_s(self, program: str | None) -> float:
        return self._attained.get(program, 0.0) if program is not None else 0.0

    def key(self, priority: int, program: str | None) -> float:
        return (self.aging_per_s * self._clock() - priority
                + self.service_weight * self.attained_s(program))

    async def acquire(self, priority: int, program: str | None = None) -> None:
        if self.active < self.limit and not self._waiting:
            self.active += 1
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (self.key(priority, program), next(self._seq), future)
        heapq.heappush(self._waiting, entry)
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release()  # admitted just as we were cancelled: pass the slot on
            else:
                self._waiting.remove(entry)
                heapq.heapify(self._waiting)
            raise

    def release(self, program: str | None = None, service_s: float = 0.0) -> None:
        """Give the slot back; ``service_s`` (the time it was held) adds to ``program``'s."""
        if program is not None and service_s > 0:
            self._attained[program] = self._attained.pop(program, 0.0) + service_s
            while len(self._attained) > PROGRAMS_KEPT:
                self._attained.popitem(last=False)
        while self._waiting:
            _, _, future = heapq.heappop(self._waiting)
            if not future.done():
                future.set_result(None)  # the slot passes straight to the next waiter
                return
        self.active -= 1

    @contextlib.asynccontextmanager
    async def slot(self, priority: int, request_id: str | None) -> AsyncIterator[None]:
        """Hold a slot for one request of the program ``request_id`` names; the time held is
        that program's service."""
        program = program_of(request_id)
        await self.acquire(priority, program)
        started = self._clock()
        try:
            yield
        finally:
            self.release(program, self._clock() - started)
