"""The Store protocol: the durable truth about tasks, steps, events and blobs.

Implementations are synchronous: ``store/actor.py`` puts one behind a Ray actor so that every process
of a cluster reaches the same file or database, and ``store/direct.py`` runs PostgreSQL's in threads
of each process; both carry ``StoreService``'s calls to these methods as ``store/service.py``'s
``OPERATIONS`` says. Times are seconds since the epoch (floats).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from runtime.core.errors import RaysquadError, SignalQuotaExceeded, StoreError
from runtime.core.models import (
    Claim,
    Completion,
    DeadLetter,
    Event,
    Lease,
    SubmitRequest,
    TaskRecord,
    TaskStatus,
    TaskSummary,
)

SCHEMA_VERSION = 15

#: A queued task as the dispatcher indexes it, without its input: (id, priority, created_at, tenant).
Queued = tuple[str, int, float, str]

#: A dead letter taken for a replay (``take_dead_letter``) is held that long; then another replay
#: may take it (the one that held it died).
REPLAY_HOLD_S = 900.0

#: The most buckets a ``task_stats`` answers with: a bound on one read's reply, above what its
#: callers ask for (``GET /v1/stats``: 500), so that a bucket begun between their clock and the
#: Store's is never refused.
MAX_STATS_BUCKETS = 1000


@dataclass(frozen=True)
class TaskStats:
    """A tenant's tasks at a glance (``task_stats``): how many have each status now, and how many
    finished in each ``bucket_s`` since ``since``, oldest first; bucket ``i`` covers
    ``[since + i * bucket_s, since + (i + 1) * bucket_s)``, and the last one reaches ``at`` (the
    Store's now), so it may be partly over."""

    counts: dict[TaskStatus, int]
    since: float
    bucket_s: float
    finished: list[int]
    at: float


def stats_buckets(since: float, bucket_s: float, now: float) -> int:
    """How many buckets of ``bucket_s`` reach from ``since`` to ``now`` (the last partly over);
    ValueError past ``MAX_STATS_BUCKETS`` or for a bucket that is not positive."""
    if not bucket_s > 0:
        raise ValueError(f"bucket_s must be positive, not {bucket_s!r}")
    count = max(0, math.ceil((now - since) / bucket_s))
    if count > MAX_STATS_BUCKETS:
        raise ValueError(f"{count} buckets of {bucket_s} s since {since}: the most is "
                         f"{MAX_STATS_BUCKETS}")
    return count


def check_signal_room(task_id: str, pending: int, size: int, adding: int,
                      limits: tuple[int, int]) -> None:
    """SignalQuotaExceeded unless a signal of ``adding`` bytes fits beside the ``pending`` ones
    (``size`` bytes) a task holds, under ``limits`` (signals, bytes)."""
    if pending + 1 > limits[0] or size + adding > limits[1]:
        raise SignalQuotaExceeded(task_id, pending, size, limits[0], limits[1])


#: The writes that may share a transaction (``apply``). A step record, a finish and a memo entry are
#: safe to send again; an event and a model call's usage are not (logged or counted twice), so a
#: batch with one is not repeated.
BATCHED_WRITES = frozenset({"record_step", "finish", "append_event", "add_usage", "memo_put"})
UNREPEATABLE_WRITES = frozenset({"append_event", "add_usage"})


class BatchedWrites:
    """``apply``: the writes of several runs in one transaction, each in a savepoint of its own, so
    that one refused (LeaseLost, a task gone) is undone alone and answered with its error while
    the others commit. The backends' ``_tx`` nests as a savepoint inside an open transaction (and
    there gives what the database refused as a StoreError). ``create_tasks`` likewise."""

    _tx: Callable[[], AbstractContextManager[Any]]
    _create: Callable[[Any, str, SubmitRequest, float], tuple[TaskRecord, bool]]

    def create_task(self, task_id: str, req: SubmitRequest, now: float) -> tuple[TaskRecord, bool]:
        result = self.create_tasks([(task_id, req)], now)[0]
        if isinstance(result, RaysquadError):
            raise result
        return result

    def create_tasks(self, items: list[tuple[str, SubmitRequest]],
                     now: float) -> list[tuple[TaskRecord, bool] | RaysquadError]:
        """Insert many queued tasks in one transaction (the group commit of concurrent submits,
        or a batch). Should the database refuse one (a value it cannot hold), the transaction is
        done again with each item in a savepoint of its own: that item gets its error, alone,
        and its neighbours, other callers' submits among them, are created."""
        try:
            with self._tx() as c:
                return [self._create(c, task_id, req, now) for task_id, req in items]
        except StoreError:
            if len(items) < 2:
                raise
        out: list[tuple[TaskRecord, bool] | RaysquadError] = []
        with self._tx() as c:
            for task_id, req in items:
                try:
                    with self._tx():
                        out.append(self._create(c, task_id, req, now))
                except RaysquadError as e:
                    out.append(e)
        return out

    def apply(self, writes: list[tuple[str, dict[str, Any]]], now: float) -> list[Any]:
        """Run writes (``BATCHED_WRITES`` only: (method, its arguments by name but ``now``)) in one
        transaction at ``now``; one result per write, in order: what the method returns, or the
        RaysquadError it raised."""
        results: list[Any] = []
        with self._tx():
            for method, args in writes:
                if method not in BATCHED_WRITES:
                    raise ValueError(f"{method} is not a write apply takes")
                try:
                    results.append(getattr(self, method)(**args, now=now))
                except RaysquadError as e:
                    results.append(e)
        return results


class Store(Protocol):
    def create_task(self, task_id: str, req: SubmitRequest, now: float) -> tuple[TaskRecord, bool]:
        """Insert a queued task; with an idempotency key already used, return that task and False."""

    def create_tasks(self, items: list[tuple[str, SubmitRequest]],
                     now: float) -> list[tuple[TaskRecord, bool] | RaysquadError]:
        """``create_task`` for many, in one transaction; an item the database refuses gets its
        error (StoreError) alone, the others are created."""

    def get_task(self, task_id: str) -> TaskRecord:
        """The task, or TaskNotFound."""

    def add_usage(self, lease: Lease, model: str, prompt_tokens: int, completion_tokens: int,
                  now: float) -> tuple[int, int | None]:
        """Add a model call's tokens to the task's usage; (tokens used so far, the task's budget)."""

    def steps_under(self, task_id: str, prefix: str) -> dict[str, bytes]:
        """The task's recorded steps whose keys start with ``prefix`` (an agent step's calls)."""

    def list_tasks(self, status: TaskStatus | None = None, workflow: str | None = None,
                   tenant: str | None = None, limit: int = 100,
                   before: tuple[float, str] | None = None) -> list[TaskSummary]:
        """Tasks, newest first; ``before``: the (created_at, id) the previous page ended at."""

    def count_tasks(self, status: TaskStatus) -> int:
        """How many tasks have this status."""

    def task_stats(self, tenant: str | None, since: float, bucket_s: float, now: float) -> TaskStats:
        """``tenant``'s tasks (None: every tenant's) by status (every status, zeros included) and
        how many finished in each ``bucket_s`` from ``since`` to ``now`` (``TaskStats``; at most
        ``MAX_STATS_BUCKETS``)."""

    def queued_load(self, tenant: str) -> tuple[int, int]:
        """``tenant``'s queued tasks and their input bytes (what its quotas count)."""

    def queued_index(self, limit: int) -> list[Queued]:
        """The first ``limit`` queued tasks in rank order, without their inputs."""

    def recover(self, now: float, limit: int = 1_000_000) -> list[Queued]:
        """At start-up: make every task left running by an earlier run queued; the queued index."""

    def claim(self, task_ids: list[str], owner: str, lease_s: float, now: float) -> list[Claim]:
        """Lease each still-queued task to ``owner``; tasks no longer queued are skipped."""

    def renew(self, owner: str, leases: dict[str, int], lease_s: float, now: float) -> dict[str, bool]:
        """Extend ``owner``'s leases (task id -> token); returns task id -> cancel requested, for the
        leases still held."""

    def expire_leases(self, now: float) -> list[TaskRecord]:
        """Make running tasks whose lease ran out queued again (a crash); return them."""

    def release_owner(self, owner: str, now: float, crashed: bool = True) -> list[TaskRecord]:
        """Make every task leased to ``owner`` (which is gone) queued again (a crash); return them.
        A task at its crash limit fails with PoisonTask's message instead."""

    def running_owners(self) -> list[str]:
        """The owners that hold leases now."""

    def abandon(self, lease: Lease, reason: str, now: float) -> TaskRecord:
        """The holder cannot run the task: queue it again, counted as a crash."""

    def check_lease(self, lease: Lease) -> None:
        """LeaseLost unless ``lease`` is the task's current claim."""

    def record_step(self, lease: Lease, key: str, output: bytes, blobs: dict[str, bytes],
                    now: float, elapsed_s: float | None = None) -> bool:
        """Checkpoint a step's output (and its blobs) under ``lease``; the first record of a key
        wins. ``elapsed_s``: how long the step ran (kept in its event). Returns cancel requested."""

    def append_event(self, task_id: str, kind: str, data: dict[str, Any], now: float,
                     lease: Lease | None = None) -> int:
        """Append an event to the task's log (fenced by ``lease`` if given); returns its seq."""

    def finish(self, lease: Lease, status: TaskStatus, output: Any, error: str | None,
               now: float) -> TaskRecord:
        """End the task held under ``lease`` as succeeded, failed or cancelled (repeatable)."""

    def request_cancel(self, task_id: str, now: float) -> TaskRecord:
        """Cancel a queued task at once; mark a running one to stop at its next step boundary."""

    def retry(self, task_id: str, now: float) -> TaskRecord:
        """Queue a failed or cancelled task again; its recorded steps are kept (resume from checkpoint)."""

    def send_signal(self, task_id: str, name: str, payload: Any, now: float,
                    limits: tuple[int, int] | None = None) -> TaskRecord:
        """Store a signal for the task; a task waiting for it becomes queued (returned record says).
        ``limits``: the (signals, payload bytes) not yet taken a task may hold (SignalQuotaExceeded);
        a name with a control character is refused (InvalidName)."""

    def await_signal(self, lease: Lease, name: str, key: str, wake_at: float | None,
                     now: float, announce: tuple[str, dict[str, Any]] | None = None
                     ) -> tuple[str, Any]:
        """Take the oldest unconsumed signal ``name`` and record it as step ``key`` ("signal", payload);
        past ``wake_at`` record a timeout ("timeout", None); else park the task, which releases its
        lease and makes it ``waiting`` ("parked", None), and log ``announce`` (an event: kind,
        data) first, once per park. One transaction."""

    def wake_due(self, now: float) -> list[TaskRecord]:
        """Make waiting tasks whose ``wake_at`` has passed queued again; return them."""

    def events(self, task_id: str, after: int = 0, limit: int = 1000) -> list[Event]:
        """The task's events with seq > ``after``."""

    def read_blob(self, key: str) -> bytes:
        """A blob written with a step."""

    def ping(self) -> str:
        """Where the Store is, for the log; StoreError unless it answers."""

    def close(self) -> None:
        """Release the connection."""

    def add_dead_letter(self, letter: DeadLetter) -> None:
        """Keep a tool call that ran out of retries."""

    def dead_letters(self, status: str | None = None, tool: str | None = None,
                     tenant: str | None = None, limit: int = 100) -> list[DeadLetter]:
        """Dead letters, newest first."""

    def get_dead_letter(self, letter_id: str) -> DeadLetter:
        """One dead letter, or DeadLetterNotFound."""

    def take_dead_letter(self, letter_id: str, now: float) -> tuple[DeadLetter, bool]:
        """Mark the letter ``replaying`` if it is ``dead`` (or held past ``REPLAY_HOLD_S``), in one
        conditional write: of concurrent replays one takes it, and only that one runs it."""

    def replayed(self, letter_id: str, ok: bool, result: Any, error: str, attempts: int,
                 now: float, step_output: bytes | None = None,
                 usage: tuple[str, int, int] | None = None) -> DeadLetter:
        """Record a replay: ``ok`` marks the letter replayed with its result, else its new error
        (and ``dead`` again, for a later replay to take).
        With ``step_output``, a task that failed at this call gets it as its step and is queued.
        ``usage``: a replayed model call's (model, prompt tokens, completion tokens), added to its
        task's usage."""

    def memo_get(self, tenant: str, key: str, now: float,
                 max_age_s: float | None = None) -> Completion | None:
        """The answer the LLM memo keeps for ``tenant``'s request ``key``, if younger than
        ``max_age_s`` (``RAYSQUAD_LLM_CACHE_TTL_S``; None: any age) (store/memo.py)."""

    def memo_put(self, tenant: str, key: str, completion: Completion, now: float,
                 max_age_s: float | None = None) -> bool:
        """Keep a model call's answer in the memo, unless its key has one younger than
        ``max_age_s`` (the first one wins while it lasts)."""
