"""What every way of reaching the Store shares: the ``StoreService`` protocol its callers see and
``OPERATIONS``, the table of how each of its operations is carried; ``StoreTransport``, the base
that makes a transport's methods from that table, with the group commits that batch submits and
writes; opening a backend; admission (quotas, sizes, priorities: decided before anything is
committed). The actor (``store/actor.py``: ``StoreActor`` and ``StoreHandle``) and the direct
transport (``store/direct.py``) are built on it; ``store/connect.py`` picks one for a process.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import logging
import pickle
import time
import weakref
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any, Protocol

import ray

from runtime.core import metrics
from runtime.core.config import Settings
from runtime.core.errors import (
    ConfigError,
    InputTooLarge,
    InvalidInput,
    PriorityNotAllowed,
    QueueFull,
    RaysquadError,
    StoreError,
    TenantQuotaExceeded,
)
from runtime.core.group_commit import GroupCommit
from runtime.core.models import (
    Claim,
    Completion,
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
from runtime.core.sizes import approx_size
from runtime.core.triggers import check_interval
from runtime.store.base import UNREPEATABLE_WRITES, Queued, Store, TaskStats
from runtime.store.outbox import EventReport
from runtime.store.owner import PostgresLock, StoreLock, own_store
from runtime.store.schedules import Schedules

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
        return InvalidInput(req.workflow, ["input: NaN and infinite numbers are not JSON"],
                            [{"loc": ["input"], "msg": "NaN and infinite numbers are not JSON",
                              "type": "json_invalid"}])
    low, high = settings.priority_range(req.tenant)
    if not low <= req.priority <= high:
        return PriorityNotAllowed(req.tenant, req.priority, low, high)
    if size > settings.max_input_bytes:
        return InputTooLarge(size, settings.max_input_bytes)
    return None


def admit_schedule(store: Schedules, settings: Settings, schedule: Schedule,
                   limited: bool) -> tuple[Schedule, bool]:
    """``put_schedule`` for a schedule within its tenant's bounds, decided before it is written:
    what each tick's task would be refused for (its input's size, the tenant's priorities), how
    often it ticks (``schedule_min_interval_s``) and how many the tenant keeps
    (``max_schedules_per_tenant``). ``limited=False``: the app's own, declared on its workflows."""
    if not limited:
        return store.put_schedule(schedule)
    probe = SubmitRequest(workflow=schedule.workflow, input=schedule.input, tenant=schedule.tenant)
    refusal = _refusal(settings, probe, _input_bytes(probe))
    if refusal is not None:
        raise refusal
    check_interval(schedule.cron, settings.schedule_interval_floor_s(schedule.tenant))
    return store.put_schedule(schedule, settings.max_schedules_per_tenant)


class StoreService(Protocol):
    """What the rest of the runtime calls on the Store: ``StoreHandle`` over Ray, ``DirectStore``
    on PostgreSQL, or, in a unit test, a ``StoreActor`` in the same process. How each of them
    carries an operation is its line in ``OPERATIONS``; ``submit``, ``append_events`` and
    ``post_event`` are made of the operations."""

    async def submit(self, req: SubmitRequest) -> tuple[TaskRecord, bool]: ...
    async def submit_tasks(self, items: list[tuple[str, SubmitRequest]]
                           ) -> list[tuple[TaskRecord, bool] | RaysquadError]: ...
    async def take_submitted(self, timeout_s: float) -> list[Queued]: ...
    async def get_task(self, task_id: str) -> TaskRecord: ...
    async def steps_under(self, task_id: str, prefix: str) -> dict[str, bytes]: ...
    async def add_usage(self, lease: Lease, model: str, prompt_tokens: int,
                        completion_tokens: int) -> tuple[int, int | None]: ...
    async def list_tasks(self, status: TaskStatus | None = None, workflow: str | None = None,
                         tenant: str | None = None, limit: int = 100,
                         before: tuple[float, str] | None = None) -> list[TaskSummary]: ...
    async def queued_index(self, limit: int) -> list[Queued]: ...
    async def count_tasks(self, status: TaskStatus) -> int: ...
    async def task_stats(self, tenant: str | None, since: float, bucket_s: float) -> TaskStats: ...
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
    async def apply(self, writes: list[Write]) -> list[Any]: ...
    async def request_cancel(self, task_id: str) -> TaskRecord: ...
    async def retry(self, task_id: str) -> TaskRecord: ...
    async def send_signal(self, task_id: str, name: str, payload: Any) -> TaskRecord: ...
    async def await_signal(self, lease: Lease, name: str, key: str, wake_at: float | None,
                           announce: tuple[str, dict[str, Any]] | None = None
                           ) -> tuple[str, Any]: ...
    async def wake_due(self) -> list[TaskRecord]: ...
    async def events(self, task_id: str, after: int = 0, limit: int = 1000) -> list[Event]: ...
    async def wait_events(self, task_id: str, after: int = 0, timeout_s: float = 10.0,
                          limit: int = 1000) -> list[Event]: ...
    async def read_blob(self, key: str) -> bytes: ...
    async def add_dead_letter(self, letter: DeadLetter) -> None: ...
    async def dead_letters(self, status: str | None = None, tool: str | None = None,
                           tenant: str | None = None, limit: int = 100) -> list[DeadLetter]: ...
    async def get_dead_letter(self, letter_id: str) -> DeadLetter: ...
    async def take_dead_letter(self, letter_id: str) -> tuple[DeadLetter, bool]: ...
    async def replayed(self, letter_id: str, ok: bool, result: Any, error: str, attempts: int,
                       step_output: bytes | None = None,
                       usage: tuple[str, int, int] | None = None) -> DeadLetter: ...
    async def memo_get(self, tenant: str, key: str) -> Completion | None: ...
    async def memo_put(self, tenant: str, key: str, completion: Completion) -> bool: ...
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


class Stamp(Enum):
    """The time a call is stamped with: the backend method's ``now``, added by the process that
    runs the call (the Store actor's, or a DirectStore's)."""

    NOW = "now"
    #: A lease's time: the database's clock where the transport has one (a DirectStore passes
    #: ``now=None``: the processes that claim, renew and expire leases compare no clocks).
    LEASE = "lease"


@dataclass(frozen=True)
class Op:
    """How the transports carry one operation of ``StoreService``."""

    #: Safe to send again across a restart of the Store actor (``StoreHandle`` tries it again until
    #: its deadline); a function of the call's arguments where that depends on them.
    repeat: bool | Callable[..., bool] = True
    #: The time the backend method gets as ``now``; None: it takes none.
    stamp: Stamp | None = None
    #: Goes through the write batching: the calls of one event-loop turn leave as one ``apply``,
    #: one transaction (``StoreHandle``, ``DirectStore``; the actor writes at once).
    batched: bool = False
    #: Backend arguments taken from the runtime's settings (bounds the caller does not choose).
    settings: Callable[[Settings], dict[str, Any]] | None = None
    #: Not a plain call of the backend method: why. The Store actor and DirectStore each define it
    #: (the handle forwards it like any other).
    custom: str = ""

    def repeats(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
        return self.repeat if isinstance(self.repeat, bool) else self.repeat(*args, **kwargs)


#: A batched write as ``apply`` takes it: (backend method, its arguments by name but ``now``); the
#: Store adds the time. ``record_step`` (with no blobs: a step with large values goes on its own),
#: ``finish``, ``add_usage`` and ``append_event``.
Write = tuple[str, dict[str, Any]]


def _memo_age(settings: Settings) -> dict[str, Any]:
    return {"max_age_s": settings.llm_cache_ttl_s}


def _repeatable(writes: list[Write]) -> bool:
    """A batch of step records and finishes is safe to send again; an event would be logged twice,
    a model call's tokens counted twice."""
    return not any(method in UNREPEATABLE_WRITES for method, _ in writes)


#: The Store's operations: each ``StoreService`` method (but the three made of them) and how the
#: transports carry it. A new one is a line here, its signature in ``StoreService`` and its
#: backend method (store/tasks.py, outbox.py, schedules.py), whose arguments are the caller's, by
#: name, with ``now`` and the settings' added.
OPERATIONS: dict[str, Op] = {
    # -- tasks: a repeated submit finds its tasks created (each item carries the id it gets)
    "submit_tasks":     Op(stamp=Stamp.NOW, custom="admission; new tasks go to the dispatcher's feed"),
    "take_submitted":   Op(custom="the dispatcher's feed of new tasks"),
    "get_task":         Op(),
    "steps_under":      Op(),
    # A model call's tokens: in the group commit of its call's record (one transaction for both).
    "add_usage":        Op(repeat=False, stamp=Stamp.NOW, batched=True),
    "list_tasks":       Op(),
    "queued_index":     Op(),
    "count_tasks":      Op(),
    "task_stats":       Op(stamp=Stamp.NOW),
    "recover":          Op(stamp=Stamp.NOW, settings=lambda s: {"limit": s.dispatch_window}),
    # A claim whose reply was lost holds its tasks until their lease runs out: not repeated.
    "claim":            Op(repeat=False, stamp=Stamp.LEASE),
    "renew":            Op(stamp=Stamp.LEASE),
    "expire_leases":    Op(stamp=Stamp.LEASE),
    "release_owner":    Op(stamp=Stamp.NOW),
    "running_owners":   Op(),
    "abandon":          Op(repeat=False, stamp=Stamp.NOW),
    # -- a run's writes, fenced by its lease; a step key's first record wins, a finish is answered
    # again to its run: both safe to repeat. An event repeated would be logged twice.
    "record_step":      Op(stamp=Stamp.NOW, batched=True,
                           custom="large values come as object refs, fetched and kept as blobs"),
    "append_event":     Op(repeat=False, stamp=Stamp.NOW),
    "finish":           Op(stamp=Stamp.NOW, batched=True),
    "apply":            Op(repeat=_repeatable, stamp=Stamp.NOW),
    "request_cancel":   Op(stamp=Stamp.NOW),
    "retry":            Op(repeat=False, stamp=Stamp.NOW),
    "send_signal":      Op(repeat=False, stamp=Stamp.NOW, settings=lambda s: {
                            "limits": (s.task_pending_signals, s.task_signal_bytes)}),
    "await_signal":     Op(stamp=Stamp.NOW),
    "wake_due":         Op(stamp=Stamp.NOW),
    "events":           Op(),
    "wait_events":      Op(custom="waits to be woken by a new event"),
    "read_blob":        Op(),
    "ping":             Op(),
    # -- dead letters; a take whose reply was lost holds the letter for REPLAY_HOLD_S
    "add_dead_letter":  Op(repeat=False),
    "dead_letters":     Op(),
    "get_dead_letter":  Op(),
    "take_dead_letter": Op(repeat=False, stamp=Stamp.NOW),
    "replayed":         Op(repeat=False, stamp=Stamp.NOW),
    # -- the LLM memo (store/memo.py); an entry is kept once while it lasts, so a put may go again
    # and rides in the group commit of its call's record; both read the entries' age by the Store's
    # clock and its settings' TTL
    "memo_get":         Op(stamp=Stamp.NOW, settings=_memo_age),
    "memo_put":         Op(stamp=Stamp.NOW, batched=True, settings=_memo_age),
    # -- topic events (store/outbox.py); a publish is keyed by its event's id
    "publish":          Op(settings=lambda s: {"quota": (s.tenant_events, s.tenant_event_bytes)}),
    "unrouted_events":  Op(),
    "route_event":      Op(stamp=Stamp.NOW),
    "take_deliveries":  Op(repeat=False, stamp=Stamp.NOW),
    "finish_delivery":  Op(stamp=Stamp.NOW),
    "defer_delivery":   Op(),
    "redeliver":        Op(stamp=Stamp.NOW),
    "active_key_tasks": Op(),
    "prune_events":     Op(),
    "topic_events":     Op(),
    "event_deliveries": Op(),
    # -- schedules (store/schedules.py)
    "put_schedule":     Op(custom="admission: the tenant's bounds"),
    "get_schedule":     Op(),
    "list_schedules":   Op(),
    "delete_schedule":  Op(),
    "pause_schedule":   Op(stamp=Stamp.NOW),
    "due_schedules":    Op(stamp=Stamp.NOW),
    "next_schedule_at": Op(),
    "advance_schedule": Op(stamp=Stamp.NOW),
    "defer_schedule":   Op(stamp=Stamp.NOW),
    "halt_schedule":    Op(stamp=Stamp.NOW),
    "take_lease":       Op(stamp=Stamp.NOW),
}

#: Every method of ``StoreService``: the operations, and the three made of them.
MEMBERS = frozenset(name for name in vars(StoreService) if not name.startswith("_"))
if not set(OPERATIONS) < MEMBERS or MEMBERS - set(OPERATIONS) != {"submit", "append_events",
                                                                  "post_event"}:
    raise TypeError("OPERATIONS and StoreService name different operations: "
                    f"{sorted(MEMBERS ^ set(OPERATIONS))}")

_SIGNATURES = {name: inspect.signature(getattr(StoreService, name)) for name in OPERATIONS}
_PARAMETERS = {name: tuple(signature.parameters)[1:] for name, signature in _SIGNATURES.items()}


def arguments(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """A call of operation ``name`` as its arguments by name, defaults filled in (TypeError for a
    call its signature refuses)."""
    parameters = _PARAMETERS[name]
    if not kwargs and len(args) == len(parameters):  # every argument given, in order
        return dict(zip(parameters, args, strict=True))
    bound = _SIGNATURES[name].bind(None, *args, **kwargs)
    bound.apply_defaults()
    call = dict(bound.arguments)
    del call["self"]
    return call


def step_write(lease: Lease, key: str, output: bytes, elapsed_s: float | None) -> Write:
    """A step record with no large values, as ``apply`` takes it."""
    return "record_step", {"lease": lease, "key": key, "output": output, "blobs": {},
                           "elapsed_s": elapsed_s}


async def fetch_blobs(refs: list[tuple[str, list[ray.ObjectRef]]]) -> dict[str, bytes]:
    """A step's large values, (blob key, [ObjectRef]), fetched and pickled as the blobs to keep."""
    return {blob_key: pickle.dumps(await object_ref, protocol=5) for blob_key, (object_ref,) in refs}


# The type checker takes a transport for a StoreService (the methods made from OPERATIONS are
# invisible to it); at run time the protocol is no base, so a method not made is missing, not a stub.
if TYPE_CHECKING:
    _Service = StoreService
else:
    _Service = object


class StoreTransport(_Service):
    """A way of reaching the Store. Every operation a subclass does not define itself is made from
    its ``OPERATIONS`` line when the class is made (Ray needs real methods on an actor class): a
    method with the operation's signature that hands the call to the subclass's ``_carry``, as
    Dramatiq's brokers turn each ``do_<command>`` into one dispatch. The type checker knows the
    made methods from ``StoreService``.

    Here too, what the three transports share: ``submit`` and the write batching, each a group
    commit (the calls of one event-loop turn leave as one call, one transaction)."""

    _settings: Settings
    _commits: weakref.WeakKeyDictionary[
        asyncio.AbstractEventLoop, GroupCommit[SubmitRequest, tuple[TaskRecord, bool]]] | None = None
    _write_commits: weakref.WeakKeyDictionary[
        asyncio.AbstractEventLoop, GroupCommit[Write, Any]] | None = None

    def __init_subclass__(cls, backend: bool = False, **kwargs: Any) -> None:
        """``backend``: the class runs the operations on a Store backend itself, so it defines
        each ``custom`` one."""
        super().__init_subclass__(**kwargs)
        for name, op in OPERATIONS.items():
            if hasattr(cls, name):
                continue
            if backend and op.custom:
                raise TypeError(f"{cls.__name__} must define {name} ({op.custom})")
            setattr(cls, name, _operation(cls, name, op))
        missing = sorted(name for name in MEMBERS if not hasattr(cls, name))
        if missing:
            raise TypeError(f"{cls.__name__} must define {', '.join(missing)}")

    async def _carry(self, name: str, op: Op, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Carry a call of operation ``name`` (``op``) with the caller's ``args`` and ``kwargs``."""
        raise NotImplementedError

    def _now(self, stamp: Stamp) -> float | None:
        return time.time()

    def _backend_call(self, name: str, op: Op, args: tuple[Any, ...],
                      kwargs: dict[str, Any]) -> dict[str, Any]:
        """The backend method's arguments for a call: the caller's, the time, the settings'."""
        call = arguments(name, args, kwargs)
        if op.stamp is not None:
            call["now"] = self._now(op.stamp)
        if op.settings is not None:
            call.update(op.settings(self._settings))
        if name == "apply":  # each batched write gets its own operation's settings
            call["writes"] = [(method, {**write, **self._settings_of(method)})
                              for method, write in call["writes"]]
        return call

    def _settings_of(self, name: str) -> dict[str, Any]:
        settings = OPERATIONS[name].settings
        return {} if settings is None else settings(self._settings)

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

    async def append_events(self, events: list[tuple[str, str, dict[str, Any], Lease | None]]
                            ) -> list[int | RaysquadError]:
        """Events of several tasks (task id, kind, data, lease) in one transaction; per event its
        seq, or the error that refused it (a lost lease). Not repeated across a restart."""
        return await self.apply([("append_event", arguments("append_event", e, {}))
                                 for e in events])

    async def _write(self, write: Write) -> Any:
        """A batched write (``Op.batched``), left with the others of this event-loop turn."""
        loop = asyncio.get_running_loop()
        if self._write_commits is None:
            self._write_commits = weakref.WeakKeyDictionary()
        commit = self._write_commits.get(loop)
        if commit is None:
            commit = self._write_commits[loop] = GroupCommit(self.apply)
        return await commit(write)


def _operation(cls: type, name: str, op: Op) -> Callable[..., Awaitable[Any]]:
    async def operation(self: StoreTransport, *args: Any, **kwargs: Any) -> Any:
        return await self._carry(name, op, args, kwargs)

    functools.update_wrapper(operation, getattr(StoreService, name))  # its signature, for Ray too
    operation.__qualname__ = f"{cls.__qualname__}.{name}"
    operation.__module__ = cls.__module__
    return operation
