"""Tasks, their steps, events and signals, and dead letters, on either database: the SQL of the
Store's task side, written once (mixed into both backends, like store/outbox.py and
store/schedules.py, with ``?`` placeholders).

What differs between the backends stays theirs, as a few hooks: how a row is locked for the
read-then-write that follows (PostgreSQL ``FOR UPDATE``; SQLite has one writer), which of the
tasks named in a claim may be taken (PostgreSQL skips the rows another transaction holds), the
time a lease is measured by (PostgreSQL's may be the database's clock), where a step's large
values go (files, or rows of the step's transaction), a read outside a transaction, how a TEXT
column counts bytes, and what text a TEXT column can hold.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any

from runtime.core import refs
from runtime.core.errors import (
    DeadLetterNotFound,
    InvalidTransition,
    LeaseLost,
    PoisonTask,
    StoreError,
    TaskNotFound,
)
from runtime.core.models import (
    Claim,
    DeadLetter,
    Event,
    Lease,
    SubmitRequest,
    TaskRecord,
    TaskStatus,
    TaskSummary,
    check_name,
)
from runtime.store import records
from runtime.store.base import (
    REPLAY_HOLD_S,
    Queued,
    TaskStats,
    check_signal_room,
    stats_buckets,
)
from runtime.store.outbox import PortableSQL


class Tasks(PortableSQL):
    """The task side of a Store backend; the host class opens it (``max_crashes``, ``aging_per_s``,
    ``touched``) and supplies the hooks below."""

    max_crashes: int
    aging_per_s: float
    #: Task ids whose event log grew since the last drain; the Store actor wakes their waiters.
    touched: set[str]

    #: The time a lease is measured by, in SQL, from one parameter (the caller's ``now``).
    _lease_now = "?"
    #: The size in bytes of a TEXT column's value, in SQL (``{}``: the column).
    _octets = "length(CAST({} AS BLOB))"
    #: A non-negative number rounded down to an integer, in SQL (``{}``: the number). SQLite's CAST
    #: truncates; PostgreSQL's rounds.
    _floor = "CAST({} AS INTEGER)"

    def _read(self) -> AbstractContextManager[Any]:
        """A connection to read from (by default, a transaction)."""
        return self._tx()

    def _claimable(self, c: Any, task_ids: list[str]) -> set[str]:
        """Which of ``task_ids`` a claim may take (the UPDATE checks that each is queued)."""
        return set(task_ids)

    def _keep_blobs(self, c: Any, blobs: dict[str, bytes]) -> None:
        """Keep a step's large values, under its lease (checked) and in its transaction."""
        raise NotImplementedError

    def _queued_sql(self) -> str:
        """The first queued tasks in rank order, LIMIT the one parameter."""
        return ("SELECT id, priority, created_at, tenant FROM tasks WHERE status = 'queued' "
                f"ORDER BY {records.rank_order(self.aging_per_s)} LIMIT ?")

    @staticmethod
    def _text(message: str | None) -> str | None:
        """An error message as the TEXT column keeps it."""
        return message

    # -- plumbing -----------------------------------------------------------------------------------

    def _event(self, c: Any, task_id: str, kind: str, data: dict[str, Any], now: float) -> int:
        row = c.execute(self._q("UPDATE tasks SET last_seq = last_seq + 1 WHERE id = ? "
                                "RETURNING last_seq"), (task_id,)).fetchone()
        if row is None:
            raise TaskNotFound(task_id)
        seq = int(row["last_seq"])
        c.execute(self._q("INSERT INTO events (task_id, seq, kind, data, at) VALUES (?, ?, ?, ?, ?)"),
                  (task_id, seq, kind, json.dumps(data, default=str), now))
        self.touched.add(task_id)
        return seq

    def _get(self, c: Any, task_id: str, lock: bool = False) -> TaskRecord:
        row = c.execute(self._q(f"SELECT {records.TASK_COLUMNS} FROM tasks WHERE id = ?")
                        + (self._lock_row if lock else ""), (task_id,)).fetchone()
        if row is None:
            raise TaskNotFound(task_id)
        return records.task(row)

    def _requeue(self, c: Any, rows: Sequence[Any], reason: str, now: float,
                 crashed: bool = False) -> list[TaskRecord]:
        """Queue running tasks (their rows locked) again. ``crashed``: their run ended without a word
        (a worker died, a lease ran out), which counts towards ``max_crashes``; a task at the limit
        fails instead."""
        out = []
        for row in rows:
            counted = c.execute(self._q("UPDATE tasks SET crashes = crashes + ? WHERE id = ? "
                                        "RETURNING crashes"), (int(crashed), row["id"])).fetchone()
            crashes = int(counted["crashes"])  # the row is locked: it is there
            if crashed and crashes >= self.max_crashes:
                self._give_up(c, row["id"], crashes, reason, now)
                continue
            c.execute(self._q("UPDATE tasks SET status = 'queued', owner = NULL, lease_until = NULL, "
                              "updated_at = ? WHERE id = ?"), (now, row["id"]))
            self._event(c, row["id"], "requeued", {"reason": reason, "owner": row["owner"]}, now)
            out.append(self._get(c, row["id"]))
        return out

    def _give_up(self, c: Any, task_id: str, attempts: int, reason: str, now: float) -> None:
        error = str(PoisonTask(task_id, attempts, reason))
        c.execute(self._q("UPDATE tasks SET status = 'failed', error = ?, owner = NULL, "
                          "lease_until = NULL, finished_at = ?, updated_at = ? WHERE id = ?"),
                  (self._text(error), now, now, task_id))
        self._event(c, task_id, TaskStatus.FAILED.value, {"error": error}, now)

    # -- tasks --------------------------------------------------------------------------------------

    def _create(self, c: Any, task_id: str, req: SubmitRequest, now: float) -> tuple[TaskRecord, bool]:
        text = json.dumps(req.input)
        for _ in range(3):
            row = c.execute(self._q(f"SELECT {records.TASK_COLUMNS} FROM tasks WHERE id = ?"),
                            (task_id,)).fetchone()
            if row is not None:  # the same submit sent again (its first reply was lost): it is this task
                return records.task(row), True
            if req.idempotency_key is not None:
                row = c.execute(self._q(f"SELECT {records.TASK_COLUMNS} FROM tasks "
                                        "WHERE tenant = ? AND idempotency_key = ?"),
                                (req.tenant, req.idempotency_key)).fetchone()
                if row is not None:
                    return records.task(row), False
            inserted = c.execute(self._q(
                "INSERT INTO tasks (id, workflow, input, input_bytes, status, priority, tenant, "
                "idempotency_key, created_at, updated_at, trace_parent, token_budget) "
                "VALUES (?, ?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"),
                (task_id, req.workflow, text, len(text.encode()), req.priority, req.tenant,
                 req.idempotency_key, now, now, req.trace_parent, req.token_budget)).rowcount
            if inserted:
                break
            # Another process committed this id or this key after we looked: read it as it is.
        else:
            raise StoreError(f"task {task_id!r} could be neither created nor read")
        self._event(c, task_id, "submitted", {"priority": req.priority}, now)
        # The row as written, without reading it back (and parsing its input again).
        return TaskRecord(id=task_id, workflow=req.workflow, input=req.input,
                          status=TaskStatus.QUEUED, priority=req.priority, tenant=req.tenant,
                          idempotency_key=req.idempotency_key, created_at=now,
                          updated_at=now, trace_parent=req.trace_parent), True

    def get_task(self, task_id: str) -> TaskRecord:
        with self._read() as c:
            return self._get(c, task_id)

    def add_usage(self, lease: Lease, model: str, prompt_tokens: int, completion_tokens: int,
                  now: float) -> tuple[int, int | None]:
        """Add a model call's tokens to the task's usage (fenced by the run's lease); returns the
        task's tokens used so far and its own budget."""
        with self._tx() as c:
            self._check_lease(c, lease)
            return self._add_usage(c, lease.task_id, model, prompt_tokens, completion_tokens, now)

    def _add_usage(self, c: Any, task_id: str, model: str, prompt_tokens: int,
                   completion_tokens: int, now: float) -> tuple[int, int | None]:
        """Add tokens to a task's usage (the caller holds its row: a lease checked, or locked)."""
        row = c.execute(self._q("SELECT usage, token_budget FROM tasks WHERE id = ?"),
                        (task_id,)).fetchone()
        usage: dict[str, dict[str, int]] = json.loads(row["usage"]) if row["usage"] else {}
        seen = usage.setdefault(model, {"prompt_tokens": 0, "completion_tokens": 0})
        seen["prompt_tokens"] += prompt_tokens
        seen["completion_tokens"] += completion_tokens
        c.execute(self._q("UPDATE tasks SET usage = ?, updated_at = ? WHERE id = ?"),
                  (json.dumps(usage, sort_keys=True), now, task_id))
        used = sum(u["prompt_tokens"] + u["completion_tokens"] for u in usage.values())
        return used, row["token_budget"]

    def steps_under(self, task_id: str, prefix: str) -> dict[str, bytes]:
        with self._read() as c:
            return {r["key"]: bytes(r["output"]) for r in c.execute(self._q(
                "SELECT key, output FROM steps WHERE task_id = ? AND substr(key, 1, ?) = ?"),
                (task_id, len(prefix), prefix))}

    def list_tasks(self, status: TaskStatus | None = None, workflow: str | None = None,
                   tenant: str | None = None, limit: int = 100,
                   before: tuple[float, str] | None = None) -> list[TaskSummary]:
        """Newest first, without inputs and outputs; ``before``: the (created_at, id) of the last
        task of the previous page."""
        where: list[str] = []
        args: list[Any] = []
        for column, value in (("status", status.value if status else None), ("workflow", workflow),
                              ("tenant", tenant)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        if before is not None:
            where.append("(created_at, id) < (?, ?)")
            args.extend(before)
        sql = f"SELECT {records.SUMMARY_COLUMNS} FROM tasks"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC, id DESC LIMIT ?"
        with self._read() as c:
            return [records.summary(r) for r in c.execute(self._q(sql), (*args, limit))]

    def count_tasks(self, status: TaskStatus) -> int:
        with self._read() as c:
            return int(c.execute(self._q("SELECT count(*) AS n FROM tasks WHERE status = ?"),
                                 (status.value,)).fetchone()["n"])

    def task_stats(self, tenant: str | None, since: float, bucket_s: float,
                   now: float) -> TaskStats:
        """``tenant``'s tasks (every tenant's with None: an operator's view) by status (off the
        tasks_tenant_status index; tasks_status for every tenant) and its finishes by bucket since
        ``since`` (off tasks_tenant_finished; tasks_finished), counted in the database."""
        buckets = stats_buckets(since, bucket_s, now)
        finished = [0] * buckets
        whose, args = ("tenant = ? AND ", (tenant,)) if tenant is not None else ("", ())
        with self._read() as c:
            by_status = {r["status"]: int(r["n"]) for r in c.execute(self._q(
                f"SELECT status, count(*) AS n FROM tasks WHERE {whose}TRUE GROUP BY status"),
                args)}
            bucket = self._floor.format("(finished_at - ?) / ?")
            for r in c.execute(self._q(
                    f"SELECT {bucket} AS b, count(*) AS n FROM tasks WHERE {whose}"
                    f"finished_at >= ? AND finished_at < ? GROUP BY b"),
                    (since, bucket_s, *args, since, since + buckets * bucket_s)):
                # (A finish a hair from an edge may round across it: it stays in range.)
                finished[min(max(int(r["b"]), 0), buckets - 1)] += int(r["n"])
        return TaskStats(counts={s: by_status.get(s.value, 0) for s in TaskStatus}, since=since,
                         bucket_s=bucket_s, finished=finished, at=now)

    def queued_load(self, tenant: str) -> tuple[int, int]:
        """``tenant``'s queued tasks and their input bytes (off the tasks_tenant_status index)."""
        with self._read() as c:
            row = c.execute(self._q("SELECT count(*) AS n, coalesce(sum(input_bytes), 0) AS b "
                                    "FROM tasks WHERE tenant = ? AND status = 'queued'"),
                            (tenant,)).fetchone()
            return int(row["n"]), int(row["b"])

    def queued_index(self, limit: int) -> list[Queued]:
        """(id, priority, created_at, tenant) of the first ``limit`` queued tasks in the dispatcher's
        order (``records.rank_order``): what its window holds, without their inputs."""
        with self._read() as c:
            return self._queued_index(c, limit)

    def _queued_index(self, c: Any, limit: int) -> list[Queued]:
        return [(r["id"], r["priority"], r["created_at"], r["tenant"])
                for r in c.execute(self._q(self._queued_sql()), (limit,))]

    def recover(self, now: float, limit: int = 1_000_000) -> list[Queued]:
        """Queue again the tasks an earlier run left running; the queued tasks' index."""
        with self._tx() as c:
            rows = c.execute("SELECT id, owner FROM tasks WHERE status = 'running' ORDER BY id"
                             + self._lock_row).fetchall()
            self._requeue(c, rows, "runtime restarted", now)
            return self._queued_index(c, limit)

    def claim(self, task_ids: list[str], owner: str, lease_s: float,
              now: float | None) -> list[Claim]:
        """Lease each still-queued task to ``owner`` (tasks no longer queued are skipped). With
        ``now=None`` the lease is measured by the database's clock, where it has one."""
        claims: list[Claim] = []
        if not task_ids:
            return claims
        at = time.time() if now is None else now  # for started_at and the events, not the lease
        with self._tx() as c:
            free = self._claimable(c, task_ids)
            for task_id in task_ids:
                if task_id not in free:
                    continue
                row = c.execute(self._q(
                    f"UPDATE tasks SET status = 'running', owner = ?, lease_until = {self._lease_now} "
                    "+ ?, runs = runs + 1, started_at = coalesce(started_at, ?), updated_at = ? "
                    "WHERE id = ? AND status = 'queued' RETURNING runs"),
                    (owner, now, lease_s, at, at, task_id)).fetchone()
                if row is None:  # not queued now, or named twice in task_ids
                    continue
                self._event(c, task_id, "started", {"owner": owner, "run": row["runs"]}, at)
                steps = {r["key"]: bytes(r["output"]) for r in c.execute(
                    self._q("SELECT key, output FROM steps WHERE task_id = ?"), (task_id,))}
                claims.append(Claim(task=self._get(c, task_id), steps=steps))
        return claims

    def renew(self, owner: str, leases: dict[str, int], lease_s: float,
              now: float | None) -> dict[str, bool]:
        """Extend ``owner``'s leases (task id -> token); returns task id -> cancel requested, for the
        leases still held."""
        held = {}
        with self._tx() as c:
            for task_id, token in sorted(leases.items()):  # locks in id order
                row = c.execute(self._q(
                    f"UPDATE tasks SET lease_until = {self._lease_now} + ? WHERE id = ? AND owner = ? "
                    "AND runs = ? AND status = 'running' RETURNING cancel_requested"),
                    (now, lease_s, task_id, owner, token)).fetchone()
                if row is not None:
                    held[task_id] = bool(row["cancel_requested"])
        return held

    def expire_leases(self, now: float | None) -> list[TaskRecord]:
        with self._tx() as c:
            # A locked row is read again once its lock is released: a lease renewed meanwhile is kept.
            rows = c.execute(self._q(
                "SELECT id, owner FROM tasks WHERE status = 'running' "
                f"AND lease_until < {self._lease_now} ORDER BY id") + self._lock_row, (now,)).fetchall()
            return self._requeue(c, rows, "lease expired", time.time() if now is None else now,
                                 crashed=True)

    def release_owner(self, owner: str, now: float, crashed: bool = True) -> list[TaskRecord]:
        """Queue again every task leased to ``owner``, which is gone. ``crashed``: its death counts
        against its tasks (not when it died with its pool, which says nothing about them)."""
        with self._tx() as c:
            rows = c.execute(self._q("SELECT id, owner FROM tasks WHERE status = 'running' "
                                     "AND owner = ? ORDER BY id") + self._lock_row, (owner,)).fetchall()
            return self._requeue(c, rows, "worker lost" if crashed else "worker pool restarted",
                                 now, crashed=crashed)

    def running_owners(self) -> list[str]:
        """The owners that hold leases now."""
        with self._read() as c:
            rows = c.execute("SELECT DISTINCT owner FROM tasks WHERE status = 'running'").fetchall()
        return sorted(r["owner"] for r in rows if r["owner"] is not None)

    def abandon(self, lease: Lease, reason: str, now: float) -> TaskRecord:
        """The lease holder cannot run the task (its steps do not decode here): queue it again, as a
        crash (it fails once ``max_crashes`` is reached)."""
        with self._tx() as c:
            row = self._check_lease(c, lease)
            self._requeue(c, [row], reason, now, crashed=True)
            return self._get(c, lease.task_id)

    def _check_lease(self, c: Any, lease: Lease, lock: bool = True) -> Any:
        """The fencing check of every write a runner makes: its claim (owner and token) still holds.
        The row stays locked until the transaction ends, so the write it guards lands under it."""
        row = c.execute(self._q("SELECT id, owner, status, runs, cancel_requested FROM tasks "
                                "WHERE id = ?") + (self._lock_row if lock else ""),
                        (lease.task_id,)).fetchone()
        if row is None:
            raise TaskNotFound(lease.task_id)
        if row["owner"] != lease.owner or row["runs"] != lease.token or row["status"] != "running":
            raise LeaseLost(lease.task_id, lease.owner)
        return row

    def check_lease(self, lease: Lease) -> None:
        """LeaseLost unless ``lease`` still holds (checked before a step's blobs are fetched)."""
        with self._read() as c:
            self._check_lease(c, lease, lock=False)

    def record_step(self, lease: Lease, key: str, output: bytes, blobs: dict[str, bytes],
                    now: float, elapsed_s: float | None = None) -> bool:
        """Checkpoint a step under ``lease``, its large values (``blobs``) with it once the lease is
        checked (a stale runner writes none). The first record of a key wins: a completed step is
        never overwritten, and the same record sent again changes nothing."""
        with self._tx() as c:
            row = self._check_lease(c, lease)
            if blobs:
                self._keep_blobs(c, blobs)
            inserted = c.execute(self._q(
                "INSERT INTO steps (task_id, key, output, created_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (task_id, key) DO NOTHING"), (lease.task_id, key, output, now)).rowcount
            if inserted:
                self._event(c, lease.task_id, "step",
                            records.step_event(key, len(output), sorted(blobs), elapsed_s), now)
            return bool(row["cancel_requested"])

    def append_event(self, task_id: str, kind: str, data: dict[str, Any], now: float,
                     lease: Lease | None = None) -> int:
        """Append an event; a runner's events carry its ``lease`` and are fenced by it."""
        with self._tx() as c:
            if lease is not None:
                self._check_lease(c, lease)
            return self._event(c, task_id, kind, data, now)

    def finish(self, lease: Lease, status: TaskStatus, output: Any, error: str | None,
               now: float) -> TaskRecord:
        if not status.ended:
            raise ValueError(f"finish needs an end status, not {status.value}")
        with self._tx() as c:
            task = self._get(c, lease.task_id, lock=True)
            if task.status.ended and c.execute(  # the run that finished it: read only then
                    self._q("SELECT finished_run FROM tasks WHERE id = ?"),
                    (lease.task_id,)).fetchone()["finished_run"] == lease.token:
                return task  # this very finish, sent again after its reply was lost
            self._check_lease(c, lease)  # any other finish is fenced: a give-up, a newer claim
            c.execute(self._q(
                "UPDATE tasks SET status = ?, output = ?, error = ?, owner = NULL, lease_until = NULL, "
                "finished_at = ?, updated_at = ?, finished_run = runs WHERE id = ?"),
                (status.value, json.dumps(output) if output is not None else None, self._text(error),
                 now, now, lease.task_id))
            self._event(c, lease.task_id, status.value, {"error": error} if error else {}, now)
            return self._get(c, lease.task_id)

    def request_cancel(self, task_id: str, now: float) -> TaskRecord:
        with self._tx() as c:
            task = self._get(c, task_id, lock=True)
            if task.status.ended:
                raise InvalidTransition(task_id, task.status.value, "cancel")
            if task.status in (TaskStatus.QUEUED, TaskStatus.WAITING):
                c.execute(self._q("UPDATE tasks SET status = 'cancelled', waiting_for = NULL, "
                                  "wake_at = NULL, finished_at = ?, updated_at = ? WHERE id = ?"),
                          (now, now, task_id))
                self._event(c, task_id, "cancelled", {"while": task.status.value}, now)
            else:
                c.execute(self._q("UPDATE tasks SET cancel_requested = true, updated_at = ? "
                                  "WHERE id = ?"), (now, task_id))
                self._event(c, task_id, "cancel_requested", {}, now)
            return self._get(c, task_id)

    def retry(self, task_id: str, now: float) -> TaskRecord:
        with self._tx() as c:
            task = self._get(c, task_id, lock=True)
            if task.status not in (TaskStatus.FAILED, TaskStatus.CANCELLED):
                raise InvalidTransition(task_id, task.status.value, "retry")
            kept = c.execute(self._q("SELECT count(*) AS n FROM steps WHERE task_id = ?"),
                             (task_id,)).fetchone()["n"]
            self._queue_again(c, task_id, {"steps_kept": kept}, now)
            return self._get(c, task_id)

    def _queue_again(self, c: Any, task_id: str, why: dict[str, Any], now: float) -> None:
        """A failed or cancelled task (its row locked) runs again from its checkpoints."""
        c.execute(self._q("UPDATE tasks SET status = 'queued', error = NULL, cancel_requested = false, "
                          "finished_at = NULL, finished_run = NULL, updated_at = ? WHERE id = ?"),
                  (now, task_id))
        self._event(c, task_id, "retried", why, now)

    # -- signals ------------------------------------------------------------------------------------

    def send_signal(self, task_id: str, name: str, payload: Any, now: float,
                    limits: tuple[int, int] | None = None) -> TaskRecord:
        check_name(name, "signal name")
        text = json.dumps(payload)
        with self._tx() as c:
            task = self._get(c, task_id, lock=True)  # the lock orders concurrent signals' counts
            if task.status.ended:
                raise InvalidTransition(task_id, task.status.value, f"signal {name!r} to")
            awaited = task.status is TaskStatus.WAITING and task.waiting_for == name
            if limits is not None and not awaited:  # one waited for is taken at once: it passes
                held = c.execute(self._q(
                    f"SELECT count(*) AS n, coalesce(sum({self._octets.format('payload')}), 0) AS b "
                    "FROM signals WHERE task_id = ? AND consumed_by IS NULL"), (task_id,)).fetchone()
                check_signal_room(task_id, int(held["n"]), int(held["b"]), len(text.encode()),
                                  limits)
            c.execute(self._q("INSERT INTO signals (task_id, name, payload, at) VALUES (?, ?, ?, ?)"),
                      (task_id, name, text, now))
            self._event(c, task_id, "signal", {"name": name}, now)
            if awaited:
                c.execute(self._q("UPDATE tasks SET status = 'queued', waiting_for = NULL, "
                                  "wake_at = NULL, updated_at = ? WHERE id = ?"), (now, task_id))
                self._event(c, task_id, "requeued", {"reason": f"signal {name}"}, now)
            return self._get(c, task_id)

    def await_signal(self, lease: Lease, name: str, key: str, wake_at: float | None,
                     now: float, announce: tuple[str, dict[str, Any]] | None = None
                     ) -> tuple[str, Any]:
        with self._tx() as c:
            # The task's row lock orders this against every other writer of the task: a signal is
            # sent, consumed and recorded only under it.
            c.execute(self._q("SELECT id FROM tasks WHERE id = ?") + self._lock_row, (lease.task_id,))
            done = c.execute(self._q("SELECT output FROM steps WHERE task_id = ? AND key = ?"),
                             (lease.task_id, key)).fetchone()
            if done is not None:  # sent again after its reply was lost: the recorded outcome
                recorded: tuple[str, Any] = refs.loads(bytes(done["output"]))
                return recorded
            self._check_lease(c, lease)
            task_id = lease.task_id
            row = c.execute(self._q("SELECT id, payload FROM signals WHERE task_id = ? AND name = ? "
                                    "AND consumed_by IS NULL ORDER BY id LIMIT 1"),
                            (task_id, name)).fetchone()
            if row is not None or (wake_at is not None and now >= wake_at):
                outcome = ("signal", json.loads(row["payload"])) if row else ("timeout", None)
                if row is not None:
                    c.execute(self._q("UPDATE signals SET consumed_by = ? WHERE id = ?"),
                              (key, row["id"]))
                data, _ = refs.dumps(outcome)
                c.execute(self._q("INSERT INTO steps (task_id, key, output, created_at) "
                                  "VALUES (?, ?, ?, ?)"), (task_id, key, data, now))
                self._event(c, task_id, "step", records.step_event(key, len(data), []), now)
                return outcome
            c.execute(self._q("UPDATE tasks SET status = 'waiting', owner = NULL, lease_until = NULL, "
                              "waiting_for = ?, wake_at = ?, updated_at = ? WHERE id = ?"),
                      (name, wake_at, now, task_id))
            if announce is not None:
                self._event(c, task_id, announce[0], announce[1], now)
            self._event(c, task_id, "waiting", {"signal": name, "wake_at": wake_at}, now)
            return ("parked", None)

    def wake_due(self, now: float) -> list[TaskRecord]:
        with self._tx() as c:
            rows = c.execute(self._q("SELECT id FROM tasks WHERE status = 'waiting' AND wake_at IS "
                                     "NOT NULL AND wake_at <= ? ORDER BY id") + self._lock_row,
                             (now,)).fetchall()
            out = []
            for row in rows:
                c.execute(self._q("UPDATE tasks SET status = 'queued', waiting_for = NULL, "
                                  "wake_at = NULL, updated_at = ? WHERE id = ?"), (now, row["id"]))
                self._event(c, row["id"], "requeued", {"reason": "signal wait timed out"}, now)
                out.append(self._get(c, row["id"]))
            return out

    def events(self, task_id: str, after: int = 0, limit: int = 1000) -> list[Event]:
        with self._read() as c:
            rows = c.execute(self._q("SELECT task_id, seq, kind, data, at FROM events "
                                     "WHERE task_id = ? AND seq > ? ORDER BY seq LIMIT ?"),
                             (task_id, after, limit)).fetchall()
            if not rows and after == 0:
                self._get(c, task_id)
        return [Event(task_id=r["task_id"], seq=r["seq"], kind=r["kind"], data=json.loads(r["data"]),
                      at=r["at"]) for r in rows]

    # -- dead letters -------------------------------------------------------------------------------

    def add_dead_letter(self, letter: DeadLetter) -> None:
        with self._tx() as c:
            c.execute(self._q(
                "INSERT INTO dead_letters (id, tool, args, error, error_type, attempts, task_id, "
                "step_key, tenant, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"),
                (letter.id, letter.tool, json.dumps(letter.args), self._text(letter.error),
                 letter.error_type, letter.attempts, letter.task_id, letter.step_key, letter.tenant,
                 letter.created_at))

    def dead_letters(self, status: str | None = None, tool: str | None = None,
                     tenant: str | None = None, limit: int = 100) -> list[DeadLetter]:
        """Dead letters, newest first."""
        where, params = [], []
        for column, value in (("status", status), ("tool", tool), ("tenant", tenant)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        sql = f"SELECT {records.DEAD_LETTER_COLUMNS} FROM dead_letters"
        sql += " WHERE " + " AND ".join(where) if where else ""
        with self._read() as c:
            rows = c.execute(self._q(sql + " ORDER BY created_at DESC, id DESC LIMIT ?"),
                             (*params, limit))
            return [records.dead_letter(r) for r in rows]

    def get_dead_letter(self, letter_id: str) -> DeadLetter:
        with self._read() as c:
            return self._get_dead_letter(c, letter_id)

    def _get_dead_letter(self, c: Any, letter_id: str) -> DeadLetter:
        row = c.execute(self._q(f"SELECT {records.DEAD_LETTER_COLUMNS} FROM dead_letters WHERE id = ?"),
                        (letter_id,)).fetchone()
        if row is None:
            raise DeadLetterNotFound(letter_id)
        return records.dead_letter(row)

    def replayed(self, letter_id: str, ok: bool, result: Any, error: str, attempts: int,
                 now: float, step_output: bytes | None = None,
                 usage: tuple[str, int, int] | None = None) -> DeadLetter:
        with self._tx() as c:
            if ok:
                c.execute(self._q("UPDATE dead_letters SET status = 'replayed', replayed_at = ?, "
                                  "result = ?, attempts = attempts + ? WHERE id = ?"),
                          (now, json.dumps(result), attempts, letter_id))
                if usage is not None:
                    self._charge_replay(c, letter_id, usage, now)
                if step_output is not None:
                    self._resume_with(c, letter_id, step_output, now)
            else:  # dead again, for a later replay to take
                c.execute(self._q("UPDATE dead_letters SET status = 'dead', replayed_at = NULL, "
                                  "error = ?, attempts = attempts + ? WHERE id = ?"),
                          (self._text(error), attempts, letter_id))
            return self._get_dead_letter(c, letter_id)

    def take_dead_letter(self, letter_id: str, now: float) -> tuple[DeadLetter, bool]:
        """Mark a dead letter ``replaying`` before its replay runs; (the letter, taken). Not taken:
        it is replayed already, or another replay holds it (one taken over ``REPLAY_HOLD_S`` ago
        is taken again: its replayer died). The conditional UPDATE waits on a concurrent one's row
        lock and then sees its status: of two, one takes it."""
        with self._tx() as c:
            taken = c.execute(self._q(
                "UPDATE dead_letters SET status = 'replaying', replayed_at = ? WHERE id = ? AND "
                "(status = 'dead' OR (status = 'replaying' AND replayed_at < ?))"),
                (now, letter_id, now - REPLAY_HOLD_S)).rowcount
            return self._get_dead_letter(c, letter_id), bool(taken)

    def _charge_replay(self, c: Any, letter_id: str, usage: tuple[str, int, int],
                       now: float) -> None:
        """A replayed model call's tokens, added to its task (if it has one that is still kept)."""
        letter = c.execute(self._q("SELECT task_id FROM dead_letters WHERE id = ?"),
                           (letter_id,)).fetchone()
        if letter is None or letter["task_id"] is None:
            return
        if c.execute(self._q("SELECT 1 FROM tasks WHERE id = ?") + self._lock_row,
                     (letter["task_id"],)).fetchone() is not None:
            self._add_usage(c, letter["task_id"], *usage, now)

    def _resume_with(self, c: Any, letter_id: str, output: bytes, now: float) -> None:
        """A replayed call's task failed at that call: record the result as the step, queue the task
        (as a retry would; its earlier steps are kept). A task that went on without it is left be."""
        letter = c.execute(self._q("SELECT task_id, step_key FROM dead_letters WHERE id = ?"),
                           (letter_id,)).fetchone()
        if letter is None or letter["task_id"] is None or letter["step_key"] is None:
            return
        task = c.execute(self._q("SELECT status FROM tasks WHERE id = ?") + self._lock_row,
                         (letter["task_id"],)).fetchone()
        done = c.execute(self._q("SELECT 1 FROM steps WHERE task_id = ? AND key = ?"),
                         (letter["task_id"], letter["step_key"])).fetchone()
        if task is None or task["status"] != TaskStatus.FAILED.value or done is not None:
            return
        c.execute(self._q("INSERT INTO steps (task_id, key, output, created_at) VALUES (?, ?, ?, ?)"),
                  (letter["task_id"], letter["step_key"], output, now))
        self._queue_again(c, letter["task_id"],
                          {"by": "replay", "dead_letter": letter_id, "step": letter["step_key"]}, now)
