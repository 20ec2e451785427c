"""The Store actor: one process owns the Store (a SQLite file, or a connection to PostgreSQL); every
other process reaches it through here.

It is pinned to the node that starts it (the head in a cluster) and restarts on failure, since all of
its state is on disk. ``wait_events`` long-polls a task's event log, which feeds progress bars and SSE.
``StoreHandle`` is the only code that calls it; every call but a few is safe to repeat (writes are
fenced by their lease and keyed, so a repeat changes nothing), and so survives the actor's restart.
Which, and how each is carried, is its line in store/service.py's ``OPERATIONS``: both classes make
their methods from it, and define only what is more than a call (admission, the dispatcher's feed,
a step's large values, waiting for events).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from typing import TYPE_CHECKING, Any

import ray

from runtime.actors import names
from runtime.actors.handles import ActorHandle, restarted
from runtime.core.config import Settings
from runtime.core.errors import RaysquadError
from runtime.core.models import Event, Lease, Schedule, SubmitRequest, TaskRecord
from runtime.store.base import Queued
from runtime.store.feed import Feed
from runtime.store.owner import PostgresLock, StoreLock, own_store
from runtime.store.service import (
    Op,
    StoreTransport,
    Tally,
    admit,
    admit_schedule,
    arguments,
    fetch_blobs,
    open_store,
    open_until_open,
    step_write,
)

if TYPE_CHECKING:
    from runtime.store.listen import Listener

#: The Store actor's name in the runtime's namespace.
ACTOR_NAME = names.STORE

log = logging.getLogger(__name__)


class StoreActor(StoreTransport, backend=True):
    """Async facade over a Store; each call runs to completion on the actor's event loop. Its
    operations (store/service.py's ``OPERATIONS``) call the backend's methods with the time and
    the settings' bounds added, then wake the event readers of the tasks they wrote."""

    def __init__(self, settings: Settings) -> None:
        # One runtime owns a Store (store/owner.py): held until this process ends. Restarted by Ray
        # while the database is out, the actor keeps trying (callers see it restarting: 503)
        # rather than dying for good.
        self._owner: StoreLock | PostgresLock | None
        self._store: Any  # a backend's own extras: touched, path
        if restarted():
            self._owner, self._store = open_until_open(settings)
        else:
            self._owner = own_store(settings)
            self._store = open_store(settings)
        self._waiters: dict[str, asyncio.Event] = defaultdict(asyncio.Event)
        self._settings = settings
        # The dispatcher's: tasks submitted since it last looked (what overflows, its refill finds).
        self._feed = Feed(settings.dispatch_window)
        self._tally = Tally()
        self._listener: Listener | None = None
        if settings.store == "postgres":
            from runtime.store.listen import Listener
            from runtime.store.postgres import PostgresStore

            pg = self._store
            assert isinstance(pg, PostgresStore)
            self._listener = Listener(pg.conninfo, pg.schema)

    def _wake(self) -> None:
        for task_id in self._store.touched:
            waiter = self._waiters.pop(task_id, None)
            if waiter is not None:
                waiter.set()
        self._store.touched.clear()

    def _run(self, method: str, call: dict[str, Any]) -> Any:
        try:
            return getattr(self._store, method)(**call)
        finally:
            self._wake()

    async def _carry(self, name: str, op: Op, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return self._run(name, self._backend_call(name, op, args, kwargs))

    async def submit_tasks(self, items: list[tuple[str, SubmitRequest]]
                           ) -> list[tuple[TaskRecord, bool] | RaysquadError]:
        """``admit`` the items; the new tasks go to the dispatcher's feed."""
        try:
            results = admit(self._store, self._settings, items, time.time(), self._tally)
        finally:
            self._wake()
        self._feed.add([(r[0].id, r[0].priority, r[0].created_at, r[0].tenant) for r in results
                        if isinstance(r, tuple) and r[1]])
        return results

    async def take_submitted(self, timeout_s: float) -> list[Queued]:
        """The tasks ``submit_tasks`` created since the last call, waiting up to ``timeout_s`` for one.

        One reader, the dispatcher. What a restart of this actor drops, the dispatcher's reconcile
        with the Store finds.
        """
        return await self._feed.take(timeout_s)

    async def record_step(self, lease: Lease, key: str, output: bytes,
                          refs: list[tuple[str, list[ray.ObjectRef]]] | None = None,
                          elapsed_s: float | None = None) -> bool:
        """Checkpoint a step. ``refs`` are (blob key, [ObjectRef]) of large values to persist once."""
        method, call = step_write(lease, key, output, elapsed_s)
        if refs:
            self._store.check_lease(lease)  # a stale runner fetches no value either
            call["blobs"] = await fetch_blobs(refs)
        done: bool = self._run(method, {**call, "now": time.time()})
        return done

    def post_event(self, task_id: str, kind: str, data: dict[str, Any],
                   lease: Lease | None = None) -> None:
        """``append_event`` for a caller that does not wait (in-process use; a progress event
        refused for a lost lease is dropped, as the handle's version drops it)."""
        with contextlib.suppress(RaysquadError):
            self._run("append_event", {**arguments("append_event", (task_id, kind, data, lease), {}),
                                       "now": time.time()})

    async def wait_events(self, task_id: str, after: int = 0, timeout_s: float = 10.0,
                          limit: int = 1000) -> list[Event]:
        """Events after ``after``; if there are none yet, wait up to ``timeout_s`` for one. With
        PostgreSQL, other processes write events too: their NOTIFY wakes the wait."""
        if self._listener is not None:
            return await self._listener.wait_events(
                task_id, lambda: self.events(task_id, after, limit), timeout_s)
        events = await self.events(task_id, after, limit)
        if events:
            return events
        waiter = self._waiters[task_id]
        try:
            await asyncio.wait_for(waiter.wait(), timeout_s)
        except TimeoutError:
            return []
        return await self.events(task_id, after, limit)

    async def put_schedule(self, schedule: Schedule, limited: bool = True) -> tuple[Schedule, bool]:
        return admit_schedule(self._store, self._settings, schedule, limited)


class StoreHandle(ActorHandle, StoreTransport):
    """The Store actor, typed (as ``StoreService``). Each call goes as its ``OPERATIONS`` line
    says: those safe to repeat ride out a restart of the actor; step records and finishes leave
    in group commits (``apply``)."""

    @classmethod
    def find(cls, namespace: str) -> StoreHandle:
        return cls.named(ACTOR_NAME, namespace)

    @classmethod
    def of(cls, actor: Any, namespace: str) -> StoreHandle:
        """A handle on the Store actor just created (``control.actors.start_store``)."""
        return cls(actor, ACTOR_NAME, namespace)

    async def _carry(self, name: str, op: Op, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if op.batched:
            return await self._write((name, arguments(name, args, kwargs)))
        return await self._call(name, *args, idempotent=op.repeats(args, kwargs), **kwargs)

    async def record_step(self, lease: Lease, key: str, output: bytes,
                          refs: list[tuple[str, list[ray.ObjectRef]]] | None = None,
                          elapsed_s: float | None = None) -> bool:
        if not refs:
            done: bool = await self._write(step_write(lease, key, output, elapsed_s))
            return done
        return await self.via(StoreActor.record_step)(lease, key, output, refs, elapsed_s)

    def post_event(self, task_id: str, kind: str, data: dict[str, Any],
                   lease: Lease | None = None) -> None:
        """``append_event`` without waiting for it (progress events, which may be lost)."""
        self._send("append_event", task_id, kind, data, lease)

