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
import json
import logging
import pickle
import time
import weakref
from collections import defaultdict
from typing import TYPE_CHECKING, Any, Protocol

import ray

from runtime import metrics
from runtime.cluster import named_actor_options, store_placement
from runtime.config import Settings
from runtime.errors import (
    ConfigError,
    InputTooLarge,
    InvalidInput,
    PriorityNotAllowed,
    QueueFull,
    RaysquadError,
    StoreError,
    TenantQuotaExceeded,
)
from runtime.group_commit import GroupCommit
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
    new_task_id,
)
from runtime.queue import approx_size
from runtime.store.base import Queued, Store
from runtime.store.feed import Feed
from runtime.store.outbox import EventReport
from runtime.store.owner import PostgresLock, StoreLock, own_store
from runtime.triggers import check_interval

if TYPE_CHECKING:
    from runtime.store.listen import Listener

#: The Store actor's name in the runtime's namespace.
ACTOR_NAME = "store"

log = logging.getLogger(__name__)


def check_store_settings(settings: Settings) -> None:
    """ConfigError unless ``settings`` name a Store that can be opened (checked in the caller before
    the Store actor starts, and again as it opens the Store)."""
    if settings.store == "postgres" and not settings.postgres_url:
        raise ConfigError("RAYSQUAD_STORE=postgres needs RAYSQUAD_POSTGRES_URL, a libpq URL "
                          "such as postgresql://user@127.0.0.1:5432/raysquad")


def open_store(settings: Settings) -> Store:
    """The Store backend that ``settings.store`` (``RAYSQUAD_STORE``) names: the one place it is chosen."""
    check_store_settings(settings)
    if settings.store == "sqlite":
        from runtime.store.sqlite import SQLiteStore

        return SQLiteStore(settings.database_path, settings.blob_dir,
                           synchronous=settings.sqlite_synchronous,
                           max_crashes=settings.max_task_crashes, aging_per_s=settings.aging_per_s)
    if settings.store == "postgres" and settings.postgres_url:
        from runtime.store.postgres import PostgresStore

        return PostgresStore(settings.postgres_url, settings.blob_dir,
                             max_crashes=settings.max_task_crashes, aging_per_s=settings.aging_per_s)
    raise ConfigError(f"unknown store {settings.store!r}")


def open_until_open(settings: Settings, max_backoff_s: float = 10.0
                    ) -> tuple[StoreLock | PostgresLock | None, Store]:
    """``own_store`` and ``open_store``, tried again with backoff until the database answers (a
    restarted Store actor)."""
    backoff, tries = 0.5, 0
    while True:
        try:
            return own_store(settings, restarted=True), open_store(settings)
        except StoreError as e:
            tries += 1
            log.warning("opening the Store failed (try %d), trying again in %.1fs: %s", tries,
                        backoff, e)
            time.sleep(backoff)
            backoff = min(backoff * 2, max_backoff_s)


#: A group-committed batch of submits stops at about this many bytes of input: one Store call (and
#: its reply) stays a few MiB, however many large submits arrive at once.
SUBMIT_BATCH_BYTES = 4 << 20


def _weight(req: SubmitRequest) -> int:
    return approx_size(req.input)


def _input_bytes(req: SubmitRequest) -> int:
    """The size of a task's input as JSON; -1 if it is not JSON (it holds NaN or an infinity)."""
    try:
        return len(json.dumps(req.input, allow_nan=False).encode())
    except ValueError:
        return -1


class Tally:
    """What admission reads of the queue (its length, each tenant's queued tasks and input bytes),
    counted in the Store at most every ``fresh_s`` seconds; in between, what was admitted through
    this tally is added to the last count. Tasks that left the queue meanwhile are not taken off,
    so the tally errs high: no bound is passed for it, and a refusal it would cause is checked
    against a fresh count first (so a stale tally costs a count only near a bound). With a million
    tasks queued a count is a scan of them, 50 to 100 ms that would stall every submit behind it;
    this keeps it off their path."""

    def __init__(self, fresh_s: float = 60.0) -> None:
        self.fresh_s = fresh_s
        self._queued: tuple[float, int] | None = None  # (counted at, count + admitted since)
        self._load: dict[str, tuple[float, int, int]] = {}  # tenant -> (counted at, tasks, bytes)

    def queued(self, store: Store, capacity: int, wanted: int) -> int:
        at = time.monotonic()
        if (self._queued is None or at - self._queued[0] > self.fresh_s
                or self._queued[1] + wanted > capacity):
            self._queued = (at, store.count_tasks(TaskStatus.QUEUED))
        return self._queued[1]

    def tenant_load(self, store: Store, tenant: str, caps: tuple[int, int],
                    wanted: tuple[int, int]) -> tuple[int, int]:
        """``tenant``'s queued (tasks, bytes), counted afresh when stale or when ``wanted`` more
        would pass either of ``caps``."""
        at = time.monotonic()
        held = self._load.get(tenant)
        if (held is None or at - held[0] > self.fresh_s or held[1] + wanted[0] > caps[0]
                or held[2] + wanted[1] > caps[1]):
            held = self._load[tenant] = (at, *store.queued_load(tenant))
        return held[1], held[2]

    def admitted(self, tenant: str, size: int) -> None:
        if self._queued is not None:
            self._queued = (self._queued[0], self._queued[1] + 1)
        held = self._load.get(tenant)
        if held is not None:
            self._load[tenant] = (held[0], held[1] + 1, held[2] + size)


def admit(store: Store, settings: Settings, items: list[tuple[str, SubmitRequest]],
          now: float, tally: Tally | None = None) -> list[tuple[TaskRecord, bool] | RaysquadError]:
    """``create_tasks`` for the items that pass admission.

    Admission, decided before anything is written, per item in order: the tenant's priority range
    (PriorityNotAllowed), the input's size (InputTooLarge), the queue bound (QueueFull) and the
    tenant's share of the queue, in tasks (``tenant_queued_tasks``) and in input bytes
    (``tenant_queued_bytes``) (TenantQuotaExceeded, naming the limit). A refused item gets its
    error as a value and nothing is written for it; a batch is admitted item by item, so the
    items of a batch past a tenant's share are refused and those before it are not. The bounds
    are checked before idempotency keys: a submit that may be new must find room. (With
    PostgreSQL reached from several processes at once, the queue and quota bounds are soft by at
    most the submits that race in one group commit each.) A ``tally`` saves counting the queue
    for every call (see ``Tally``); without one, it is counted.
    """
    tally = tally or Tally(fresh_s=-1.0)
    capacity = settings.queue_capacity
    caps = (settings.tenant_task_cap, settings.tenant_queued_bytes)
    sizes = [_input_bytes(req) for _, req in items]
    wanted: dict[str, tuple[int, int]] = defaultdict(lambda: (0, 0))
    for (_, req), size in zip(items, sizes, strict=True):
        tasks, size_sum = wanted[req.tenant]
        wanted[req.tenant] = (tasks + 1, size_sum + max(size, 0))
    room = max(0, capacity - tally.queued(store, capacity, len(items)))
    queued: dict[str, tuple[int, int]] = {}
    verdicts: list[RaysquadError | None] = []
    for (_, req), size in zip(items, sizes, strict=True):
        refusal = _refusal(settings, req, size)
        size = max(size, 0)
        if refusal is None and room <= 0:
            refusal = QueueFull("tasks", capacity, retry_after_s=1.0)
        if refusal is None:
            if req.tenant not in queued:
                queued[req.tenant] = tally.tenant_load(store, req.tenant, caps, wanted[req.tenant])
            tasks, size_sum = queued[req.tenant]
            if tasks + 1 > caps[0]:
                refusal = TenantQuotaExceeded(req.tenant, tasks, caps[0],
                                              limit_name="tenant_queued_tasks")
            elif size_sum + size > caps[1]:
                refusal = TenantQuotaExceeded(req.tenant, size_sum, caps[1])
            else:
                queued[req.tenant] = (tasks + 1, size_sum + size)
                room -= 1
        verdicts.append(refusal)
    admitted = [item for item, refusal in zip(items, verdicts, strict=True) if refusal is None]
    created = iter(store.create_tasks(admitted, now) if admitted else [])
    results = [next(created) if refusal is None else refusal for refusal in verdicts]
    for result, size in zip(results, sizes, strict=True):
        if isinstance(result, tuple) and result[1]:
            tally.admitted(result[0].tenant, max(size, 0))
            metrics.inc("raysquad_tasks_submitted", workflow=result[0].workflow)
    return results


def _refusal(settings: Settings, req: SubmitRequest, size: int) -> RaysquadError | None:
    if size < 0:
        return InvalidInput(req.workflow, ["input: NaN and infinite numbers are not JSON"])
    low, high = settings.priority_range(req.tenant)
    if not low <= req.priority <= high:
        return PriorityNotAllowed(req.tenant, req.priority, low, high)
    if size > settings.max_input_bytes:
        return InputTooLarge(size, settings.max_input_bytes)
    return None


def admit_schedule(store: Any, settings: Settings, schedule: Schedule,
                   limited: bool) -> tuple[Schedule, bool]:
    """``put_schedule`` for a schedule within its tenant's bounds, decided before it is written:
    what each tick's task would be refused for (its input's size, the tenant's priorities), how
    often it ticks (``schedule_min_interval_s``) and how many the tenant keeps
    (``max_schedules_per_tenant``). ``limited=False``: the app's own, declared on its workflows."""
    if not limited:
        return store.put_schedule(schedule)  # type: ignore[no-any-return]
    probe = SubmitRequest(workflow=schedule.workflow, input=schedule.input, tenant=schedule.tenant)
    refusal = _refusal(settings, probe, _input_bytes(probe))
    if refusal is not None:
        raise refusal
    check_interval(schedule.cron, settings.schedule_interval_floor_s(schedule.tenant))
    return store.put_schedule(schedule, settings.max_schedules_per_tenant)  # type: ignore[no-any-return]


class SubmitBatching:
    """``submit``: the submits of one event-loop turn leave as one ``submit_tasks`` call, one
    transaction (a group commit), whichever way the Store is reached."""

    _commits: weakref.WeakKeyDictionary[
        asyncio.AbstractEventLoop, GroupCommit[SubmitRequest, tuple[TaskRecord, bool]]] | None = None

    async def submit_tasks(self, items: list[tuple[str, SubmitRequest]]
                           ) -> list[tuple[TaskRecord, bool] | RaysquadError]:
        raise NotImplementedError

    async def submit(self, req: SubmitRequest) -> tuple[TaskRecord, bool]:
        """Admit one task (batched with the other submits of this event-loop turn)."""
        loop = asyncio.get_running_loop()
        if self._commits is None:
            self._commits = weakref.WeakKeyDictionary()
        commit = self._commits.get(loop)
        if commit is None:  # one batcher per event loop: its futures belong to that loop
            commit = self._commits[loop] = GroupCommit(self._submit_batch, weigh=_weight,
                                                       max_weight=SUBMIT_BATCH_BYTES)
        return await commit(req)

    async def _submit_batch(self, reqs: list[SubmitRequest]
                            ) -> list[tuple[TaskRecord, bool] | BaseException]:
        return list(await self.submit_tasks([(new_task_id(), r) for r in reqs]))


#: A write as ``apply`` takes it: ("record_step", (lease, key, output, elapsed_s)), ("finish",
#: (lease, status, output, error)) or ("append_event", (task_id, kind, data, lease)); the Store adds
#: the time (and no blobs: a step with large values is recorded on its own).
Write = tuple[str, tuple[Any, ...]]


def backend_writes(writes: list[Write], now: float) -> list[Write]:
    """``writes`` with the arguments the backend's methods take."""
    out: list[Write] = []
    for method, args in writes:
        if method == "record_step":
            lease, key, output, elapsed_s = args
            out.append((method, (lease, key, output, {}, now, elapsed_s)))
        elif method == "finish":
            out.append((method, (*args, now)))
        elif method == "append_event":
            task_id, kind, data, lease = args
            out.append((method, (task_id, kind, data, now, lease)))
        else:
            raise ValueError(f"{method} is not a write apply takes")
    return out


class WriteBatching:
    """``record_step`` (of a step with no large values) and ``finish``: the ones of one event-loop
    turn, from every run of this process, leave as one ``apply`` call, one transaction (a group
    commit, like ``SubmitBatching``'s). Each is safe to repeat, so the call rides out a restart."""

    _write_commits: weakref.WeakKeyDictionary[
        asyncio.AbstractEventLoop, GroupCommit[Write, Any]] | None = None

    async def apply(self, writes: list[Write]) -> list[Any]:
        raise NotImplementedError

    async def append_events(self, events: list[tuple[str, str, dict[str, Any], Lease | None]]
                            ) -> list[int | RaysquadError]:
        """Events of several tasks (task id, kind, data, lease) in one transaction; per event its
        seq, or the error that refused it (a lost lease). Not repeated across a restart."""
        return await self.apply([("append_event", e) for e in events])

    async def _write(self, method: str, *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        if self._write_commits is None:
            self._write_commits = weakref.WeakKeyDictionary()
        commit = self._write_commits.get(loop)
        if commit is None:
            commit = self._write_commits[loop] = GroupCommit(self.apply)
        return await commit((method, args))


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


class StoreService(Protocol):
    """What the rest of the runtime calls on the Store: ``StoreHandle`` over Ray, ``DirectStore``
    on PostgreSQL, or, in a unit test, a ``StoreActor`` in the same process."""

    async def submit(self, req: SubmitRequest) -> tuple[TaskRecord, bool]: ...
    async def submit_tasks(self, items: list[tuple[str, SubmitRequest]]
                           ) -> list[tuple[TaskRecord, bool] | RaysquadError]: ...
    async def take_submitted(self, timeout_s: float) -> list[Queued]: ...
    async def get_task(self, task_id: str) -> TaskRecord: ...
    async def list_tasks(self, status: TaskStatus | None = None, workflow: str | None = None,
                         tenant: str | None = None, limit: int = 100,
                         before: tuple[float, str] | None = None) -> list[TaskSummary]: ...
    async def queued_index(self, limit: int) -> list[Queued]: ...
    async def count_tasks(self, status: TaskStatus) -> int: ...
    async def recover(self) -> list[Queued]: ...
    async def claim(self, task_ids: list[str], owner: str, lease_s: float) -> list[Claim]: ...
    async def renew(self, owner: str, leases: dict[str, int], lease_s: float) -> dict[str, bool]: ...
    async def expire_leases(self) -> list[TaskRecord]: ...
    async def release_owner(self, owner: str, crashed: bool = True) -> list[TaskRecord]: ...
    async def running_owners(self) -> list[str]: ...
    async def abandon(self, lease: Lease, reason: str) -> TaskRecord: ...
    async def record_step(self, lease: Lease, key: str, output: bytes,
                          refs: list[tuple[str, list[ray.ObjectRef]]] | None = None,
                          elapsed_s: float | None = None) -> bool: ...
    async def append_event(self, task_id: str, kind: str, data: dict[str, Any],
                           lease: Lease | None = None) -> int: ...
    def post_event(self, task_id: str, kind: str, data: dict[str, Any],
                   lease: Lease | None = None) -> None: ...
    async def append_events(self, events: list[tuple[str, str, dict[str, Any], Lease | None]]
                            ) -> list[int | RaysquadError]: ...
    async def finish(self, lease: Lease, status: TaskStatus, output: Any,
                     error: str | None) -> TaskRecord: ...
    async def request_cancel(self, task_id: str) -> TaskRecord: ...
    async def retry(self, task_id: str) -> TaskRecord: ...
    async def send_signal(self, task_id: str, name: str, payload: Any) -> TaskRecord: ...
    async def await_signal(self, lease: Lease, name: str, key: str,
                           wake_at: float | None) -> tuple[str, Any]: ...
    async def wake_due(self) -> list[TaskRecord]: ...
    async def wait_events(self, task_id: str, after: int = 0, timeout_s: float = 10.0,
                          limit: int = 1000) -> list[Event]: ...
    async def read_blob(self, key: str) -> bytes: ...
    async def add_dead_letter(self, letter: DeadLetter) -> None: ...
    async def dead_letters(self, status: str | None = None, tool: str | None = None,
                           tenant: str | None = None, limit: int = 100) -> list[DeadLetter]: ...
    async def get_dead_letter(self, letter_id: str) -> DeadLetter: ...
    async def take_dead_letter(self, letter_id: str) -> tuple[DeadLetter, bool]: ...
    async def replayed(self, letter_id: str, ok: bool, result: Any, error: str, attempts: int,
                       step_output: bytes | None = None) -> DeadLetter: ...
    async def ping(self) -> str: ...
    async def put_schedule(self, schedule: Schedule, limited: bool = True) -> tuple[Schedule, bool]: ...
    async def get_schedule(self, tenant: str, schedule_id: str) -> Schedule | None: ...
    async def list_schedules(self, tenant: str | None = None, limit: int | None = None,
                             after: str | None = None) -> list[Schedule]: ...
    async def delete_schedule(self, tenant: str, schedule_id: str) -> bool: ...
    async def pause_schedule(self, tenant: str, schedule_id: str, paused: bool,
                             next_at: float) -> Schedule | None: ...
    async def due_schedules(self, limit: int) -> list[Schedule]: ...
    async def next_schedule_at(self) -> float | None: ...
    async def advance_schedule(self, tenant: str, schedule_id: str, expected_next_at: float,
                               next_at: float, tick: float | None, task_id: str | None) -> bool: ...
    async def defer_schedule(self, tenant: str, schedule_id: str, expected_next_at: float,
                             due_at: float) -> bool: ...
    async def halt_schedule(self, tenant: str, schedule_id: str, expected_next_at: float,
                            reason: str) -> bool: ...
    async def take_lease(self, name: str, owner: str, ttl_s: float) -> bool: ...
    async def publish(self, events: list[TopicEvent]) -> list[tuple[TopicEvent, bool]]: ...
    async def unrouted_events(self, limit: int) -> list[TopicEvent]: ...
    async def route_event(self, seq: int, routes: list[Route]) -> None: ...
    async def take_deliveries(self, limit: int, retry_s: float) -> list[Delivery]: ...
    async def finish_delivery(self, seq: int, target: str, outcome: str,
                              task_id: str | None = None) -> bool: ...
    async def defer_delivery(self, seq: int, target: str, due_at: float,
                             count_attempt: bool = False) -> None: ...
    async def redeliver(self, seq: int, target: str) -> bool: ...
    async def active_key_tasks(self, target: str, tenant: str, key: str) -> list[str]: ...
    async def prune_events(self, before: float, limit: int) -> int: ...
    async def topic_events(self, topic: str | None = None, tenant: str | None = None, limit: int = 100,
                           before: int | None = None) -> list[TopicEvent]: ...
    async def event_deliveries(self, tenant: str, event_id: str) -> EventReport | None: ...


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


def store_for(settings: Settings) -> StoreService:
    """How this process reaches the runtime's Store: with PostgreSQL (and ``postgres_direct``)
    through its own connection pool (store/direct.py); otherwise through the Store actor."""
    if settings.store == "postgres" and settings.postgres_direct:
        from runtime.store.direct import DirectStore

        return DirectStore.shared(settings)
    return StoreHandle.find(settings.namespace)


def start_store(settings: Settings) -> StoreHandle:
    """Create the Store actor, named so that every process can find it (on the head node with SQLite)."""
    actor = (
        ray.remote(StoreActor)
        .options(**named_actor_options(settings, ACTOR_NAME, max_concurrency=1000,
                                       **store_placement(settings)))
        .remote(settings)
    )
    return StoreHandle(actor, ACTOR_NAME, settings.namespace)
