"""The Store actor: one process owns the Store (a SQLite file, or a connection to PostgreSQL); every
other process reaches it through here.

It is pinned to the node that starts it (the head in a cluster) and restarts on failure, since all of
its state is on disk. ``wait_events`` long-polls a task's event log, which feeds progress bars and SSE.
``StoreHandle`` is the only code that calls it; every call but a few is safe to repeat (writes are
fenced by their lease and keyed, so a repeat changes nothing), and so survives the actor's restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pickle
import time
from collections import defaultdict
from typing import TYPE_CHECKING, Any

import ray

from runtime import names
from runtime.cluster import named_actor_options, store_placement
from runtime.config import Settings
from runtime.errors import (
    RaysquadError,
)
from runtime.handles import ActorHandle, restarted
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
from runtime.store.feed import Feed
from runtime.store.outbox import EventReport
from runtime.store.owner import PostgresLock, StoreLock, own_store
from runtime.store.service import (
    SubmitBatching,
    Tally,
    Write,
    WriteBatching,
    admit,
    admit_schedule,
    backend_writes,
    open_store,
    open_until_open,
)

if TYPE_CHECKING:
    from runtime.store.listen import Listener

#: The Store actor's name in the runtime's namespace.
ACTOR_NAME = names.STORE

log = logging.getLogger(__name__)


class StoreActor(SubmitBatching):
    """Async facade over a Store; each call runs to completion on the actor's event loop."""

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
        self._capacity = settings.queue_capacity
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

    def _call(self, method: str, *args: Any) -> Any:
        try:
            return getattr(self._store, method)(*args)
        finally:
            self._wake()

    async def create_task(self, task_id: str, req: SubmitRequest) -> tuple[TaskRecord, bool]:
        return self._call("create_task", task_id, req, time.time())  # type: ignore[no-any-return]

    async def create_tasks(self, items: list[tuple[str, SubmitRequest]]) -> list[tuple[TaskRecord, bool]]:
        return self._call("create_tasks", items, time.time())  # type: ignore[no-any-return]

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

    async def add_dead_letter(self, letter: DeadLetter) -> None:
        self._call("add_dead_letter", letter)

    async def dead_letters(self, status: str | None = None, tool: str | None = None,
                           tenant: str | None = None, limit: int = 100) -> list[DeadLetter]:
        return self._call("dead_letters", status, tool, tenant, limit)  # type: ignore[no-any-return]

    async def get_dead_letter(self, letter_id: str) -> DeadLetter:
        return self._call("get_dead_letter", letter_id)  # type: ignore[no-any-return]

    async def take_dead_letter(self, letter_id: str) -> tuple[DeadLetter, bool]:
        return self._call("take_dead_letter", letter_id, time.time())  # type: ignore[no-any-return]

    async def replayed(self, letter_id: str, ok: bool, result: Any, error: str, attempts: int,
                       step_output: bytes | None = None) -> DeadLetter:
        return self._call("replayed", letter_id, ok, result, error, attempts, time.time(),  # type: ignore[no-any-return]
                          step_output)

    async def get_task(self, task_id: str) -> TaskRecord:
        return self._call("get_task", task_id)  # type: ignore[no-any-return]

    async def list_tasks(self, status: TaskStatus | None = None, workflow: str | None = None,
                         tenant: str | None = None, limit: int = 100,
                         before: tuple[float, str] | None = None) -> list[TaskSummary]:
        return self._call("list_tasks", status, workflow, tenant, limit, before)  # type: ignore[no-any-return]

    async def queued_index(self, limit: int) -> list[Queued]:
        return self._call("queued_index", limit)  # type: ignore[no-any-return]

    async def count_tasks(self, status: TaskStatus) -> int:
        return self._call("count_tasks", status)  # type: ignore[no-any-return]

    async def recover(self) -> list[Queued]:
        return self._call("recover", time.time(), self._settings.dispatch_window)  # type: ignore[no-any-return]

    async def claim(self, task_ids: list[str], owner: str, lease_s: float) -> list[Claim]:
        return self._call("claim", task_ids, owner, lease_s, time.time())  # type: ignore[no-any-return]

    async def renew(self, owner: str, leases: dict[str, int], lease_s: float) -> dict[str, bool]:
        return self._call("renew", owner, leases, lease_s, time.time())  # type: ignore[no-any-return]

    async def expire_leases(self) -> list[TaskRecord]:
        return self._call("expire_leases", time.time())  # type: ignore[no-any-return]

    async def release_owner(self, owner: str, crashed: bool = True) -> list[TaskRecord]:
        return self._call("release_owner", owner, time.time(), crashed)  # type: ignore[no-any-return]

    async def running_owners(self) -> list[str]:
        return self._call("running_owners")  # type: ignore[no-any-return]

    async def abandon(self, lease: Lease, reason: str) -> TaskRecord:
        return self._call("abandon", lease, reason, time.time())  # type: ignore[no-any-return]

    async def record_step(self, lease: Lease, key: str, output: bytes,
                          refs: list[tuple[str, list[ray.ObjectRef]]] | None = None,
                          elapsed_s: float | None = None) -> bool:
        """Checkpoint a step. ``refs`` are (blob key, [ObjectRef]) of large values to persist once."""
        blobs = {}
        if refs:
            self._store.check_lease(lease)  # a stale runner writes no blob either
        for blob_key, (object_ref,) in refs or ():
            blobs[blob_key] = pickle.dumps(await object_ref, protocol=5)
        return self._call("record_step", lease, key, output, blobs, time.time(),  # type: ignore[no-any-return]
                          elapsed_s)

    async def append_event(self, task_id: str, kind: str, data: dict[str, Any],
                           lease: Lease | None = None) -> int:
        return self._call("append_event", task_id, kind, data, time.time(), lease)  # type: ignore[no-any-return]

    def post_event(self, task_id: str, kind: str, data: dict[str, Any],
                   lease: Lease | None = None) -> None:
        """``append_event`` for a caller that does not wait (in-process use; a progress event
        refused for a lost lease is dropped, as the handle's version drops it)."""
        with contextlib.suppress(RaysquadError):
            self._call("append_event", task_id, kind, data, time.time(), lease)

    async def finish(self, lease: Lease, status: TaskStatus, output: Any,
                     error: str | None) -> TaskRecord:
        return self._call("finish", lease, status, output, error, time.time())  # type: ignore[no-any-return]

    async def apply(self, writes: list[Write]) -> list[Any]:
        """Runs' writes in one transaction, each answered alone (see ``WriteBatching``)."""
        return self._call("apply", backend_writes(writes, time.time()))  # type: ignore[no-any-return]

    async def append_events(self, events: list[tuple[str, str, dict[str, Any], Lease | None]]
                            ) -> list[int | RaysquadError]:
        return await self.apply([("append_event", e) for e in events])

    async def request_cancel(self, task_id: str) -> TaskRecord:
        return self._call("request_cancel", task_id, time.time())  # type: ignore[no-any-return]

    async def retry(self, task_id: str) -> TaskRecord:
        return self._call("retry", task_id, time.time())  # type: ignore[no-any-return]

    async def send_signal(self, task_id: str, name: str, payload: Any) -> TaskRecord:
        limits = (self._settings.task_pending_signals, self._settings.task_signal_bytes)
        return self._call("send_signal", task_id, name, payload, time.time(), limits)  # type: ignore[no-any-return]

    async def await_signal(self, lease: Lease, name: str, key: str,
                           wake_at: float | None) -> tuple[str, Any]:
        return self._call("await_signal", lease, name, key, wake_at, time.time())  # type: ignore[no-any-return]

    async def wake_due(self) -> list[TaskRecord]:
        return self._call("wake_due", time.time())  # type: ignore[no-any-return]

    async def events(self, task_id: str, after: int = 0, limit: int = 1000) -> list[Event]:
        return self._call("events", task_id, after, limit)  # type: ignore[no-any-return]

    async def wait_events(self, task_id: str, after: int = 0, timeout_s: float = 10.0,
                          limit: int = 1000) -> list[Event]:
        """Events after ``after``; if there are none yet, wait up to ``timeout_s`` for one. With
        PostgreSQL, other processes write events too: their NOTIFY wakes the wait."""
        if self._listener is not None:
            async def read() -> list[Event]:
                return self._store.events(task_id, after, limit)  # type: ignore[no-any-return]

            return await self._listener.wait_events(task_id, read, timeout_s)
        events = self._store.events(task_id, after, limit)
        if events:
            return events
        waiter = self._waiters[task_id]
        try:
            await asyncio.wait_for(waiter.wait(), timeout_s)
        except TimeoutError:
            return []
        return self._store.events(task_id, after, limit)

    async def read_blob(self, key: str) -> bytes:
        return self._call("read_blob", key)  # type: ignore[no-any-return]

    # -- topic events (store/outbox.py) --------------------------------------------------------------

    async def publish(self, events: list[TopicEvent]) -> list[tuple[TopicEvent, bool]]:
        quota = (self._settings.tenant_events, self._settings.tenant_event_bytes)
        return self._call("publish", events, quota)  # type: ignore[no-any-return]

    async def unrouted_events(self, limit: int) -> list[TopicEvent]:
        return self._call("unrouted_events", limit)  # type: ignore[no-any-return]

    async def route_event(self, seq: int, routes: list[Route]) -> None:
        self._call("route_event", seq, routes, time.time())

    async def take_deliveries(self, limit: int, retry_s: float) -> list[Delivery]:
        return self._call("take_deliveries", time.time(), limit, retry_s)  # type: ignore[no-any-return]

    async def finish_delivery(self, seq: int, target: str, outcome: str,
                              task_id: str | None = None) -> bool:
        return self._call("finish_delivery", seq, target, time.time(), outcome, task_id)  # type: ignore[no-any-return]

    async def defer_delivery(self, seq: int, target: str, due_at: float,
                             count_attempt: bool = False) -> None:
        self._call("defer_delivery", seq, target, due_at, count_attempt)

    async def redeliver(self, seq: int, target: str) -> bool:
        return self._call("redeliver", seq, target, time.time())  # type: ignore[no-any-return]

    async def active_key_tasks(self, target: str, tenant: str, key: str) -> list[str]:
        return self._call("active_key_tasks", target, tenant, key)  # type: ignore[no-any-return]

    async def prune_events(self, before: float, limit: int) -> int:
        return self._call("prune_events", before, limit)  # type: ignore[no-any-return]

    async def topic_events(self, topic: str | None = None, tenant: str | None = None, limit: int = 100,
                           before: int | None = None) -> list[TopicEvent]:
        return self._call("topic_events", topic, tenant, limit, before)  # type: ignore[no-any-return]

    async def event_deliveries(self, tenant: str, event_id: str) -> EventReport | None:
        return self._call("event_deliveries", tenant, event_id)  # type: ignore[no-any-return]

    # -- schedules (store/schedules.py) ---------------------------------------------------------------

    async def put_schedule(self, schedule: Schedule, limited: bool = True) -> tuple[Schedule, bool]:
        return admit_schedule(self._store, self._settings, schedule, limited)

    async def get_schedule(self, tenant: str, schedule_id: str) -> Schedule | None:
        return self._call("get_schedule", tenant, schedule_id)  # type: ignore[no-any-return]

    async def list_schedules(self, tenant: str | None = None, limit: int | None = None,
                             after: str | None = None) -> list[Schedule]:
        return self._call("list_schedules", tenant, limit, after)  # type: ignore[no-any-return]

    async def delete_schedule(self, tenant: str, schedule_id: str) -> bool:
        return self._call("delete_schedule", tenant, schedule_id)  # type: ignore[no-any-return]

    async def pause_schedule(self, tenant: str, schedule_id: str, paused: bool,
                             next_at: float) -> Schedule | None:
        return self._call("pause_schedule", tenant, schedule_id, paused, next_at, time.time())  # type: ignore[no-any-return]

    async def due_schedules(self, limit: int) -> list[Schedule]:
        return self._call("due_schedules", time.time(), limit)  # type: ignore[no-any-return]

    async def next_schedule_at(self) -> float | None:
        return self._call("next_schedule_at")  # type: ignore[no-any-return]

    async def advance_schedule(self, tenant: str, schedule_id: str, expected_next_at: float,
                               next_at: float, tick: float | None, task_id: str | None) -> bool:
        return self._call("advance_schedule", tenant, schedule_id, expected_next_at, next_at, tick,  # type: ignore[no-any-return]
                          task_id, time.time())

    async def defer_schedule(self, tenant: str, schedule_id: str, expected_next_at: float,
                             due_at: float) -> bool:
        return self._call("defer_schedule", tenant, schedule_id, expected_next_at, due_at,  # type: ignore[no-any-return]
                          time.time())

    async def halt_schedule(self, tenant: str, schedule_id: str, expected_next_at: float,
                            reason: str) -> bool:
        return self._call("halt_schedule", tenant, schedule_id, expected_next_at, reason,  # type: ignore[no-any-return]
                          time.time())

    async def take_lease(self, name: str, owner: str, ttl_s: float) -> bool:
        return self._call("take_lease", name, owner, ttl_s, time.time())  # type: ignore[no-any-return]

    async def ping(self) -> str:
        return str(self._store.path)


class StoreHandle(SubmitBatching, WriteBatching, ActorHandle):
    """The Store actor, typed. Calls that are safe to repeat ride out a restart of the actor."""

    @classmethod
    def find(cls, namespace: str) -> StoreHandle:
        return cls.named(ACTOR_NAME, namespace)

    async def submit_tasks(self, items: list[tuple[str, SubmitRequest]]
                           ) -> list[tuple[TaskRecord, bool] | RaysquadError]:
        # Repeatable: each item carries the id it gets, and a repeat finds it created.
        return await self._call("submit_tasks", items)  # type: ignore[no-any-return]

    async def take_submitted(self, timeout_s: float) -> list[Queued]:
        return await self._call("take_submitted", timeout_s)  # type: ignore[no-any-return]

    async def get_task(self, task_id: str) -> TaskRecord:
        return await self._call("get_task", task_id)  # type: ignore[no-any-return]

    async def list_tasks(self, status: TaskStatus | None = None, workflow: str | None = None,
                         tenant: str | None = None, limit: int = 100,
                         before: tuple[float, str] | None = None) -> list[TaskSummary]:
        return await self._call("list_tasks", status, workflow, tenant, limit, before)  # type: ignore[no-any-return]

    async def queued_index(self, limit: int) -> list[Queued]:
        return await self._call("queued_index", limit)  # type: ignore[no-any-return]

    async def count_tasks(self, status: TaskStatus) -> int:
        return await self._call("count_tasks", status)  # type: ignore[no-any-return]

    async def recover(self) -> list[Queued]:
        return await self._call("recover")  # type: ignore[no-any-return]

    async def claim(self, task_ids: list[str], owner: str, lease_s: float) -> list[Claim]:
        # Not repeated: a claim whose reply was lost holds its tasks until their lease runs out.
        return await self._call("claim", task_ids, owner, lease_s, idempotent=False)  # type: ignore[no-any-return]

    async def renew(self, owner: str, leases: dict[str, int], lease_s: float) -> dict[str, bool]:
        return await self._call("renew", owner, leases, lease_s)  # type: ignore[no-any-return]

    async def expire_leases(self) -> list[TaskRecord]:
        return await self._call("expire_leases")  # type: ignore[no-any-return]

    async def release_owner(self, owner: str, crashed: bool = True) -> list[TaskRecord]:
        return await self._call("release_owner", owner, crashed)  # type: ignore[no-any-return]

    async def running_owners(self) -> list[str]:
        return await self._call("running_owners")  # type: ignore[no-any-return]

    async def abandon(self, lease: Lease, reason: str) -> TaskRecord:
        return await self._call("abandon", lease, reason, idempotent=False)  # type: ignore[no-any-return]

    async def record_step(self, lease: Lease, key: str, output: bytes,
                          refs: list[tuple[str, list[ray.ObjectRef]]] | None = None,
                          elapsed_s: float | None = None) -> bool:
        if not refs:
            return await self._write("record_step", lease, key, output, elapsed_s)  # type: ignore[no-any-return]
        return await self._call("record_step", lease, key, output, refs, elapsed_s)  # type: ignore[no-any-return]

    async def apply(self, writes: list[Write]) -> list[Any]:
        # Repeated across a restart only without events (step records and finishes are safe to
        # send again; an event would be logged twice).
        repeatable = all(method != "append_event" for method, _ in writes)
        return await self._call("apply", writes, idempotent=repeatable)  # type: ignore[no-any-return]

    async def append_event(self, task_id: str, kind: str, data: dict[str, Any],
                           lease: Lease | None = None) -> int:
        # Not repeated: a repeat would log the event twice.
        return await self._call("append_event", task_id, kind, data, lease, idempotent=False)  # type: ignore[no-any-return]

    def post_event(self, task_id: str, kind: str, data: dict[str, Any],
                   lease: Lease | None = None) -> None:
        """``append_event`` without waiting for it (progress events, which may be lost)."""
        self._send("append_event", task_id, kind, data, lease)

    async def finish(self, lease: Lease, status: TaskStatus, output: Any,
                     error: str | None) -> TaskRecord:
        return await self._write("finish", lease, status, output, error)  # type: ignore[no-any-return]

    async def request_cancel(self, task_id: str) -> TaskRecord:
        return await self._call("request_cancel", task_id)  # type: ignore[no-any-return]

    async def retry(self, task_id: str) -> TaskRecord:
        return await self._call("retry", task_id, idempotent=False)  # type: ignore[no-any-return]

    async def send_signal(self, task_id: str, name: str, payload: Any) -> TaskRecord:
        return await self._call("send_signal", task_id, name, payload, idempotent=False)  # type: ignore[no-any-return]

    async def await_signal(self, lease: Lease, name: str, key: str,
                           wake_at: float | None) -> tuple[str, Any]:
        return await self._call("await_signal", lease, name, key, wake_at)  # type: ignore[no-any-return]

    async def wake_due(self) -> list[TaskRecord]:
        return await self._call("wake_due")  # type: ignore[no-any-return]

    async def wait_events(self, task_id: str, after: int = 0, timeout_s: float = 10.0,
                          limit: int = 1000) -> list[Event]:
        return await self._call("wait_events", task_id, after, timeout_s, limit)  # type: ignore[no-any-return]

    async def read_blob(self, key: str) -> bytes:
        return await self._call("read_blob", key)  # type: ignore[no-any-return]

    async def add_dead_letter(self, letter: DeadLetter) -> None:
        await self._call("add_dead_letter", letter, idempotent=False)

    async def dead_letters(self, status: str | None = None, tool: str | None = None,
                           tenant: str | None = None, limit: int = 100) -> list[DeadLetter]:
        return await self._call("dead_letters", status, tool, tenant, limit)  # type: ignore[no-any-return]

    async def get_dead_letter(self, letter_id: str) -> DeadLetter:
        return await self._call("get_dead_letter", letter_id)  # type: ignore[no-any-return]

    async def take_dead_letter(self, letter_id: str) -> tuple[DeadLetter, bool]:
        # Not repeated: a take whose reply was lost holds the letter for REPLAY_HOLD_S.
        return await self._call("take_dead_letter", letter_id, idempotent=False)  # type: ignore[no-any-return]

    async def replayed(self, letter_id: str, ok: bool, result: Any, error: str, attempts: int,
                       step_output: bytes | None = None) -> DeadLetter:
        return await self._call("replayed", letter_id, ok, result, error, attempts, step_output,  # type: ignore[no-any-return]
                                idempotent=False)

    # -- topic events (store/outbox.py) --------------------------------------------------------------

    async def publish(self, events: list[TopicEvent]) -> list[tuple[TopicEvent, bool]]:
        return await self._call("publish", events)  # type: ignore[no-any-return]

    async def unrouted_events(self, limit: int) -> list[TopicEvent]:
        return await self._call("unrouted_events", limit)  # type: ignore[no-any-return]

    async def route_event(self, seq: int, routes: list[Route]) -> None:
        await self._call("route_event", seq, routes)

    async def take_deliveries(self, limit: int, retry_s: float) -> list[Delivery]:
        return await self._call("take_deliveries", limit, retry_s, idempotent=False)  # type: ignore[no-any-return]

    async def finish_delivery(self, seq: int, target: str, outcome: str,
                              task_id: str | None = None) -> bool:
        return await self._call("finish_delivery", seq, target, outcome, task_id)  # type: ignore[no-any-return]

    async def defer_delivery(self, seq: int, target: str, due_at: float,
                             count_attempt: bool = False) -> None:
        await self._call("defer_delivery", seq, target, due_at, count_attempt)

    async def redeliver(self, seq: int, target: str) -> bool:
        return await self._call("redeliver", seq, target)  # type: ignore[no-any-return]

    async def active_key_tasks(self, target: str, tenant: str, key: str) -> list[str]:
        return await self._call("active_key_tasks", target, tenant, key)  # type: ignore[no-any-return]

    async def prune_events(self, before: float, limit: int) -> int:
        return await self._call("prune_events", before, limit)  # type: ignore[no-any-return]

    async def topic_events(self, topic: str | None = None, tenant: str | None = None, limit: int = 100,
                           before: int | None = None) -> list[TopicEvent]:
        return await self._call("topic_events", topic, tenant, limit, before)  # type: ignore[no-any-return]

    async def event_deliveries(self, tenant: str, event_id: str) -> EventReport | None:
        return await self._call("event_deliveries", tenant, event_id)  # type: ignore[no-any-return]

    # -- schedules (store/schedules.py) ---------------------------------------------------------------

    async def put_schedule(self, schedule: Schedule, limited: bool = True) -> tuple[Schedule, bool]:
        return await self._call("put_schedule", schedule, limited)  # type: ignore[no-any-return]

    async def get_schedule(self, tenant: str, schedule_id: str) -> Schedule | None:
        return await self._call("get_schedule", tenant, schedule_id)  # type: ignore[no-any-return]

    async def list_schedules(self, tenant: str | None = None, limit: int | None = None,
                             after: str | None = None) -> list[Schedule]:
        return await self._call("list_schedules", tenant, limit, after)  # type: ignore[no-any-return]

    async def delete_schedule(self, tenant: str, schedule_id: str) -> bool:
        return await self._call("delete_schedule", tenant, schedule_id)  # type: ignore[no-any-return]

    async def pause_schedule(self, tenant: str, schedule_id: str, paused: bool,
                             next_at: float) -> Schedule | None:
        return await self._call("pause_schedule", tenant, schedule_id, paused, next_at)  # type: ignore[no-any-return]

    async def due_schedules(self, limit: int) -> list[Schedule]:
        return await self._call("due_schedules", limit)  # type: ignore[no-any-return]

    async def next_schedule_at(self) -> float | None:
        return await self._call("next_schedule_at")  # type: ignore[no-any-return]

    async def advance_schedule(self, tenant: str, schedule_id: str, expected_next_at: float,
                               next_at: float, tick: float | None, task_id: str | None) -> bool:
        return await self._call("advance_schedule", tenant, schedule_id, expected_next_at, next_at,  # type: ignore[no-any-return]
                                tick, task_id)

    async def defer_schedule(self, tenant: str, schedule_id: str, expected_next_at: float,
                             due_at: float) -> bool:
        return await self._call("defer_schedule", tenant, schedule_id, expected_next_at, due_at)  # type: ignore[no-any-return]

    async def halt_schedule(self, tenant: str, schedule_id: str, expected_next_at: float,
                            reason: str) -> bool:
        return await self._call("halt_schedule", tenant, schedule_id, expected_next_at, reason)  # type: ignore[no-any-return]

    async def take_lease(self, name: str, owner: str, ttl_s: float) -> bool:
        return await self._call("take_lease", name, owner, ttl_s)  # type: ignore[no-any-return]

    async def ping(self, deadline_s: float | None = None) -> str:
        return await self._call("ping", deadline_s=deadline_s)  # type: ignore[no-any-return]


def start_store(settings: Settings) -> StoreHandle:
    """Create the Store actor, named so that every process can find it (on the head node with SQLite)."""
    actor = (
        ray.remote(StoreActor)
        .options(**named_actor_options(settings, ACTOR_NAME, max_concurrency=1000,
                                       **store_placement(settings)))
        .remote(settings)
    )
    return StoreHandle(actor, ACTOR_NAME, settings.namespace)
