"""What every way of reaching the Store shares: the ``StoreService`` protocol its callers see,
opening a backend, admission (quotas, sizes, priorities: decided before anything is committed), and
the group commits that batch submits and writes. The actor (``store/actor.py``) and the direct
transport (``store/direct.py``) are both built on it; ``store/connect.py`` picks one for a process.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import weakref
from collections import defaultdict
from typing import TYPE_CHECKING, Any, Protocol

import ray

from runtime import metrics
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
from runtime.sizes import approx_size
from runtime.store.base import Queued, Store
from runtime.store.outbox import EventReport
from runtime.store.owner import PostgresLock, StoreLock, own_store
from runtime.triggers import check_interval

if TYPE_CHECKING:
    pass

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
    restarted Store actor). The ownership, once taken, is kept across the tries (taking it again
    would wait on this process's own lock)."""
    backoff, tries = 0.5, 0
    owner: StoreLock | PostgresLock | None = None
    owned = False
    while True:
        try:
            if not owned:
                owner, owned = own_store(settings, restarted=True), True
            return owner, open_store(settings)
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
