"""PostgreSQL reached from this process, with no hop through the Store actor.

With ``RAYSQUAD_STORE=postgres`` (and ``postgres_direct``, the default) the dispatcher, the
workers, the tool executors and the HTTP app each open the Store themselves: a ``PostgresStore``
with a small connection pool, whose blocking calls run in threads, and a ``Listener`` whose
LISTEN/NOTIFY wakes event readers and feeds the dispatcher. The fencing rules are the database's
own (row locks and the lease's token checked in the write's transaction), so they hold however
many processes write. ``StoreService`` is the same as the Store actor's handle: callers do not know
which they hold.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import weakref
from typing import Any, ClassVar

import ray

from runtime.core.config import Settings
from runtime.core.errors import RaysquadError
from runtime.core.models import Event, Lease, Schedule, SubmitRequest, TaskRecord
from runtime.store.base import Queued
from runtime.store.listen import Listener
from runtime.store.postgres import PostgresStore
from runtime.store.service import (
    Op,
    Stamp,
    StoreTransport,
    admit,
    admit_schedule,
    arguments,
    check_store_settings,
    fetch_blobs,
    step_write,
)

log = logging.getLogger(__name__)


class DirectStore(StoreTransport, backend=True):
    """The Store on PostgreSQL for the processes of one runtime; ``shared`` gives one per process.
    Its operations (store/service.py's ``OPERATIONS``) run the backend's methods in a thread, lease
    times by the database's clock; step records and finishes leave in group commits."""

    _shared: ClassVar[dict[tuple[str, str], DirectStore]] = {}
    _shared_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, settings: Settings) -> None:
        check_store_settings(settings)
        assert settings.postgres_url is not None
        self._settings = settings
        self._opened: PostgresStore | None = None
        self._opening = threading.Lock()
        self._listeners: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Listener] = (
            weakref.WeakKeyDictionary())
        self._posting: set[asyncio.Task[Any]] = set()

    @classmethod
    def shared(cls, settings: Settings) -> DirectStore:
        """This process's DirectStore for the runtime ``settings`` name (opened on first use)."""
        key = (settings.namespace, settings.postgres_url or "")
        with cls._shared_lock:
            store = cls._shared.get(key)
            if store is None:
                store = cls._shared[key] = cls(settings)
            return store

    @property
    def _store(self) -> PostgresStore:
        """The connection pool, opened at first use rather than in the constructor: a process that
        starts (or Ray restarts) while the database is out must come up all the same, its calls
        failing with StoreError, and being tried again, until the database is back."""
        store = self._opened
        if store is None:
            with self._opening:
                if self._opened is None:
                    settings = self._settings
                    assert settings.postgres_url is not None
                    self._opened = PostgresStore(settings.postgres_url, settings.blob_dir,
                                                 max_crashes=settings.max_task_crashes,
                                                 pool_size=settings.postgres_pool_size,
                                                 aging_per_s=settings.aging_per_s)
                store = self._opened
        return store

    async def _open(self) -> PostgresStore:
        """``_store`` from async code: opening connects, so not on the event loop."""
        if self._opened is not None:
            return self._opened
        return await asyncio.to_thread(lambda: self._store)

    def __reduce__(self) -> tuple[Any, tuple[Settings]]:
        """Sent to another process (a worker's constructor argument), it opens that process's own."""
        return DirectStore.shared, (self._settings,)

    async def _listener(self) -> Listener:
        loop = asyncio.get_running_loop()
        listener = self._listeners.get(loop)
        if listener is None:
            store = await self._open()
            listener = self._listeners.setdefault(
                loop, Listener(store.conninfo, store.schema, self._settings.dispatch_window))
        return listener

    async def aclose(self) -> None:
        """Stop this event loop's LISTEN connection (the pool stays: other loops may use it)."""
        listener = self._listeners.pop(asyncio.get_running_loop(), None)
        if listener is not None:
            await listener.close()

    def _now(self, stamp: Stamp) -> float | None:
        # Lease times by the database's clock (now=None): processes on other nodes renew them.
        return None if stamp is Stamp.LEASE else time.time()

    async def _carry(self, name: str, op: Op, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if op.batched:
            return await self._write((name, arguments(name, args, kwargs)))
        call = self._backend_call(name, op, args, kwargs)
        # In a thread, the pool's opening too: the GIL is released while libpq waits.
        return await asyncio.to_thread(lambda: getattr(self._store, name)(**call))

    async def submit_tasks(self, items: list[tuple[str, SubmitRequest]]
                           ) -> list[tuple[TaskRecord, bool] | RaysquadError]:
        now = time.time()
        return await asyncio.to_thread(lambda: admit(self._store, self._settings, items, now))

    async def take_submitted(self, timeout_s: float) -> list[Queued]:
        return await (await self._listener()).take_submitted(timeout_s)

    async def record_step(self, lease: Lease, key: str, output: bytes,
                          refs: list[tuple[str, list[ray.ObjectRef]]] | None = None,
                          elapsed_s: float | None = None) -> bool:
        """Checkpoint a step; large values (``refs``) are fetched here and written in its
        transaction, so a stale runner writes no blob either."""
        if not refs:
            done: bool = await self._write(step_write(lease, key, output, elapsed_s))
            return done
        blobs = await fetch_blobs(refs)
        store = await self._open()
        return await asyncio.to_thread(store.record_step, lease, key, output, blobs, time.time(),
                                       elapsed_s)

    def post_event(self, task_id: str, kind: str, data: dict[str, Any],
                   lease: Lease | None = None) -> None:
        """``append_event`` without waiting for it (progress events, which may be lost)."""
        async def post() -> None:
            with contextlib.suppress(RaysquadError):
                await self.append_event(task_id, kind, data, lease)

        task = asyncio.get_running_loop().create_task(post())
        self._posting.add(task)
        task.add_done_callback(self._posting.discard)

    async def wait_events(self, task_id: str, after: int = 0, timeout_s: float = 10.0,
                          limit: int = 1000) -> list[Event]:
        """Events after ``after``; if there are none yet, wait up to ``timeout_s`` for the NOTIFY
        of one, written by any process."""
        return await (await self._listener()).wait_events(
            task_id, lambda: self.events(task_id, after, limit), timeout_s)

    async def put_schedule(self, schedule: Schedule, limited: bool = True) -> tuple[Schedule, bool]:
        return await asyncio.to_thread(  # the Store opens (connects) in the thread too
            lambda: admit_schedule(self._store, self._settings, schedule, limited))
