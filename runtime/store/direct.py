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
import pickle
import threading
import time
import weakref
from typing import Any, ClassVar

import ray

from runtime.config import Settings
from runtime.errors import RaysquadError
from runtime.models import (
    Claim,
    DeadLetter,
    Delivery,
    Event,
    Lease,
    Route,
    Schedule,
    SubmitRequest,
    TaskRecord,
    TaskStatus,
    TaskSummary,
    TopicEvent,
)
from runtime.store.base import Queued
from runtime.store.listen import Listener
from runtime.store.outbox import EventReport
from runtime.store.postgres import PostgresStore
from runtime.store.service import (
    SubmitBatching,
    Write,
    WriteBatching,
    admit,
    admit_schedule,
    backend_writes,
    check_store_settings,
)

log = logging.getLogger(__name__)


class DirectStore(SubmitBatching, WriteBatching):
    """The Store on PostgreSQL for the processes of one runtime; ``shared`` gives one per process."""

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

    async def _run(self, method: str, *args: Any) -> Any:
        return await asyncio.to_thread(getattr(self._store, method), *args)

    # -- tasks --------------------------------------------------------------------------------------

    async def submit_tasks(self, items: list[tuple[str, SubmitRequest]]
                           ) -> list[tuple[TaskRecord, bool] | RaysquadError]:
        return await asyncio.to_thread(admit, self._store, self._settings, items, time.time())

    async def take_submitted(self, timeout_s: float) -> list[Queued]:
        return await (await self._listener()).take_submitted(timeout_s)

    async def get_task(self, task_id: str) -> TaskRecord:
        return await self._run("get_task", task_id)  # type: ignore[no-any-return]

    async def list_tasks(self, status: TaskStatus | None = None, workflow: str | None = None,
                         tenant: str | None = None, limit: int = 100,
                         before: tuple[float, str] | None = None) -> list[TaskSummary]:
        return await self._run("list_tasks", status, workflow, tenant, limit, before)  # type: ignore[no-any-return]

    async def queued_index(self, limit: int) -> list[Queued]:
        return await self._run("queued_index", limit)  # type: ignore[no-any-return]

    async def count_tasks(self, status: TaskStatus) -> int:
        return await self._run("count_tasks", status)  # type: ignore[no-any-return]

    async def recover(self) -> list[Queued]:
        return await self._run("recover", time.time(), self._settings.dispatch_window)  # type: ignore[no-any-return]

    async def claim(self, task_ids: list[str], owner: str, lease_s: float) -> list[Claim]:
        # Lease times by the database's clock (now=None): processes on other nodes renew them.
        return await self._run("claim", task_ids, owner, lease_s, None)  # type: ignore[no-any-return]

    async def renew(self, owner: str, leases: dict[str, int], lease_s: float) -> dict[str, bool]:
        return await self._run("renew", owner, leases, lease_s, None)  # type: ignore[no-any-return]

    async def expire_leases(self) -> list[TaskRecord]:
        return await self._run("expire_leases", None)  # type: ignore[no-any-return]

    async def release_owner(self, owner: str, crashed: bool = True) -> list[TaskRecord]:
        return await self._run("release_owner", owner, time.time(), crashed)  # type: ignore[no-any-return]

    async def running_owners(self) -> list[str]:
        return await self._run("running_owners")  # type: ignore[no-any-return]

    async def abandon(self, lease: Lease, reason: str) -> TaskRecord:
        return await self._run("abandon", lease, reason, time.time())  # type: ignore[no-any-return]

    async def record_step(self, lease: Lease, key: str, output: bytes,
                          refs: list[tuple[str, list[ray.ObjectRef]]] | None = None,
                          elapsed_s: float | None = None) -> bool:
        """Checkpoint a step; large values (``refs``) are fetched here and written in its
        transaction, so a stale runner writes no blob either."""
        if not refs:
            return await self._write("record_step", lease, key, output, elapsed_s)  # type: ignore[no-any-return]
        blobs = {blob_key: pickle.dumps(await object_ref, protocol=5)
                 for blob_key, (object_ref,) in refs}
        return await self._run("record_step", lease, key, output, blobs, time.time(),  # type: ignore[no-any-return]
                               elapsed_s)

    async def append_event(self, task_id: str, kind: str, data: dict[str, Any],
                           lease: Lease | None = None) -> int:
        return await self._run("append_event", task_id, kind, data, time.time(), lease)  # type: ignore[no-any-return]

    def post_event(self, task_id: str, kind: str, data: dict[str, Any],
                   lease: Lease | None = None) -> None:
        """``append_event`` without waiting for it (progress events, which may be lost)."""
        async def post() -> None:
            with contextlib.suppress(RaysquadError):
                await self.append_event(task_id, kind, data, lease)

        task = asyncio.get_running_loop().create_task(post())
        self._posting.add(task)
        task.add_done_callback(self._posting.discard)

    async def finish(self, lease: Lease, status: TaskStatus, output: Any,
                     error: str | None) -> TaskRecord:
        return await self._write("finish", lease, status, output, error)  # type: ignore[no-any-return]

    async def apply(self, writes: list[Write]) -> list[Any]:
        return await self._run("apply", backend_writes(writes, time.time()))  # type: ignore[no-any-return]

    async def request_cancel(self, task_id: str) -> TaskRecord:
        return await self._run("request_cancel", task_id, time.time())  # type: ignore[no-any-return]

    async def retry(self, task_id: str) -> TaskRecord:
        return await self._run("retry", task_id, time.time())  # type: ignore[no-any-return]

    async def send_signal(self, task_id: str, name: str, payload: Any) -> TaskRecord:
        limits = (self._settings.task_pending_signals, self._settings.task_signal_bytes)
        return await self._run("send_signal", task_id, name, payload, time.time(), limits)  # type: ignore[no-any-return]

    async def await_signal(self, lease: Lease, name: str, key: str,
                           wake_at: float | None) -> tuple[str, Any]:
        return await self._run("await_signal", lease, name, key, wake_at, time.time())  # type: ignore[no-any-return]

    async def wake_due(self) -> list[TaskRecord]:
        return await self._run("wake_due", time.time())  # type: ignore[no-any-return]

    async def events(self, task_id: str, after: int = 0, limit: int = 1000) -> list[Event]:
        return await self._run("events", task_id, after, limit)  # type: ignore[no-any-return]

    async def wait_events(self, task_id: str, after: int = 0, timeout_s: float = 10.0,
                          limit: int = 1000) -> list[Event]:
        """Events after ``after``; if there are none yet, wait up to ``timeout_s`` for the NOTIFY
        of one, written by any process."""
        return await (await self._listener()).wait_events(
            task_id, lambda: self.events(task_id, after, limit), timeout_s)

    async def read_blob(self, key: str) -> bytes:
        return await self._run("read_blob", key)  # type: ignore[no-any-return]

    # -- dead letters -------------------------------------------------------------------------------

    async def add_dead_letter(self, letter: DeadLetter) -> None:
        await self._run("add_dead_letter", letter)

    async def dead_letters(self, status: str | None = None, tool: str | None = None,
                           tenant: str | None = None, limit: int = 100) -> list[DeadLetter]:
        return await self._run("dead_letters", status, tool, tenant, limit)  # type: ignore[no-any-return]

    async def get_dead_letter(self, letter_id: str) -> DeadLetter:
        return await self._run("get_dead_letter", letter_id)  # type: ignore[no-any-return]

    async def take_dead_letter(self, letter_id: str) -> tuple[DeadLetter, bool]:
        return await self._run("take_dead_letter", letter_id, time.time())  # type: ignore[no-any-return]

    async def replayed(self, letter_id: str, ok: bool, result: Any, error: str, attempts: int,
                       step_output: bytes | None = None) -> DeadLetter:
        return await self._run("replayed", letter_id, ok, result, error, attempts, time.time(),  # type: ignore[no-any-return]
                               step_output)

    # -- topic events (store/outbox.py) --------------------------------------------------------------

    async def publish(self, events: list[TopicEvent]) -> list[tuple[TopicEvent, bool]]:
        quota = (self._settings.tenant_events, self._settings.tenant_event_bytes)
        return await self._run("publish", events, quota)  # type: ignore[no-any-return]

    async def unrouted_events(self, limit: int) -> list[TopicEvent]:
        return await self._run("unrouted_events", limit)  # type: ignore[no-any-return]

    async def route_event(self, seq: int, routes: list[Route]) -> None:
        await self._run("route_event", seq, routes, time.time())

    async def take_deliveries(self, limit: int, retry_s: float) -> list[Delivery]:
        return await self._run("take_deliveries", time.time(), limit, retry_s)  # type: ignore[no-any-return]

    async def finish_delivery(self, seq: int, target: str, outcome: str,
                              task_id: str | None = None) -> bool:
        return await self._run("finish_delivery", seq, target, time.time(), outcome, task_id)  # type: ignore[no-any-return]

    async def defer_delivery(self, seq: int, target: str, due_at: float,
                             count_attempt: bool = False) -> None:
        await self._run("defer_delivery", seq, target, due_at, count_attempt)

    async def redeliver(self, seq: int, target: str) -> bool:
        return await self._run("redeliver", seq, target, time.time())  # type: ignore[no-any-return]

    async def active_key_tasks(self, target: str, tenant: str, key: str) -> list[str]:
        return await self._run("active_key_tasks", target, tenant, key)  # type: ignore[no-any-return]

    async def prune_events(self, before: float, limit: int) -> int:
        return await self._run("prune_events", before, limit)  # type: ignore[no-any-return]

    async def topic_events(self, topic: str | None = None, tenant: str | None = None, limit: int = 100,
                           before: int | None = None) -> list[TopicEvent]:
        return await self._run("topic_events", topic, tenant, limit, before)  # type: ignore[no-any-return]

    async def event_deliveries(self, tenant: str, event_id: str) -> EventReport | None:
        return await self._run("event_deliveries", tenant, event_id)  # type: ignore[no-any-return]

    # -- schedules (store/schedules.py) ---------------------------------------------------------------

    async def put_schedule(self, schedule: Schedule, limited: bool = True) -> tuple[Schedule, bool]:
        return await asyncio.to_thread(  # the Store opens (connects) in the thread too
            lambda: admit_schedule(self._store, self._settings, schedule, limited))

    async def get_schedule(self, tenant: str, schedule_id: str) -> Schedule | None:
        return await self._run("get_schedule", tenant, schedule_id)  # type: ignore[no-any-return]

    async def list_schedules(self, tenant: str | None = None, limit: int | None = None,
                             after: str | None = None) -> list[Schedule]:
        return await self._run("list_schedules", tenant, limit, after)  # type: ignore[no-any-return]

    async def delete_schedule(self, tenant: str, schedule_id: str) -> bool:
        return await self._run("delete_schedule", tenant, schedule_id)  # type: ignore[no-any-return]

    async def pause_schedule(self, tenant: str, schedule_id: str, paused: bool,
                             next_at: float) -> Schedule | None:
        return await self._run("pause_schedule", tenant, schedule_id, paused, next_at, time.time())  # type: ignore[no-any-return]

    async def due_schedules(self, limit: int) -> list[Schedule]:
        return await self._run("due_schedules", time.time(), limit)  # type: ignore[no-any-return]

    async def next_schedule_at(self) -> float | None:
        return await self._run("next_schedule_at")  # type: ignore[no-any-return]

    async def advance_schedule(self, tenant: str, schedule_id: str, expected_next_at: float,
                               next_at: float, tick: float | None, task_id: str | None) -> bool:
        return await self._run("advance_schedule", tenant, schedule_id, expected_next_at, next_at,  # type: ignore[no-any-return]
                               tick, task_id, time.time())

    async def defer_schedule(self, tenant: str, schedule_id: str, expected_next_at: float,
                             due_at: float) -> bool:
        return await self._run("defer_schedule", tenant, schedule_id, expected_next_at, due_at,  # type: ignore[no-any-return]
                               time.time())

    async def halt_schedule(self, tenant: str, schedule_id: str, expected_next_at: float,
                            reason: str) -> bool:
        return await self._run("halt_schedule", tenant, schedule_id, expected_next_at, reason,  # type: ignore[no-any-return]
                               time.time())

    async def take_lease(self, name: str, owner: str, ttl_s: float) -> bool:
        return await self._run("take_lease", name, owner, ttl_s, time.time())  # type: ignore[no-any-return]

    async def ping(self, deadline_s: float | None = None) -> str:
        await asyncio.wait_for(self._run("ping"), deadline_s)
        return self._store.path
