"""The SQLite Store: one file in WAL mode, a versioned schema, large step outputs as blob files."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from runtime import metrics, refs
from runtime.errors import (
    DeadLetterNotFound,
    InvalidTransition,
    LeaseLost,
    PoisonTask,
    StoreError,
    TaskNotFound,
)
from runtime.models import (
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
from runtime.store import outbox, records, schedules
from runtime.store.base import (
    REPLAY_HOLD_S,
    SCHEMA_VERSION,
    BatchedWrites,
    Queued,
    check_signal_room,
)
from runtime.store.blobs import read_blob, write_blob

_MIGRATIONS: dict[int, str] = {
    1: """
    CREATE TABLE tasks (
        id TEXT PRIMARY KEY,
        workflow TEXT NOT NULL,
        input TEXT NOT NULL,
        status TEXT NOT NULL,
        priority INTEGER NOT NULL,
        tenant TEXT NOT NULL,
        idempotency_key TEXT,
        output TEXT,
        error TEXT,
        runs INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        started_at REAL,
        finished_at REAL,
        owner TEXT,
        lease_until REAL,
        cancel_requested INTEGER NOT NULL DEFAULT 0,
        last_seq INTEGER NOT NULL DEFAULT 0
    );
    CREATE UNIQUE INDEX tasks_idempotency ON tasks(tenant, idempotency_key)
        WHERE idempotency_key IS NOT NULL;
    CREATE INDEX tasks_status ON tasks(status, created_at);
    CREATE INDEX tasks_owner ON tasks(owner) WHERE owner IS NOT NULL;
    CREATE TABLE steps (
        task_id TEXT NOT NULL,
        key TEXT NOT NULL,
        output BLOB NOT NULL,
        created_at REAL NOT NULL,
        PRIMARY KEY (task_id, key)
    ) WITHOUT ROWID;
    CREATE TABLE events (
        task_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        kind TEXT NOT NULL,
        data TEXT NOT NULL,
        at REAL NOT NULL,
        PRIMARY KEY (task_id, seq)
    ) WITHOUT ROWID;
    """,
    2: """
    ALTER TABLE tasks ADD COLUMN waiting_for TEXT;
    ALTER TABLE tasks ADD COLUMN wake_at REAL;
    CREATE INDEX tasks_wake ON tasks(wake_at) WHERE status = 'waiting';
    CREATE TABLE signals (
        id INTEGER PRIMARY KEY,
        task_id TEXT NOT NULL,
        name TEXT NOT NULL,
        payload TEXT NOT NULL,
        at REAL NOT NULL,
        consumed_by TEXT
    );
    CREATE INDEX signals_pending ON signals(task_id, name) WHERE consumed_by IS NULL;
    """,
    3: """
    CREATE TABLE dead_letters (
        id TEXT PRIMARY KEY,
        tool TEXT NOT NULL,
        args TEXT NOT NULL,
        error TEXT NOT NULL,
        error_type TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        task_id TEXT,
        step_key TEXT,
        tenant TEXT NOT NULL,
        created_at REAL NOT NULL,
        status TEXT NOT NULL DEFAULT 'dead',
        replayed_at REAL,
        result TEXT
    );
    CREATE INDEX dead_letters_created ON dead_letters(created_at);
    """,
    4: """
    ALTER TABLE tasks ADD COLUMN crashes INTEGER NOT NULL DEFAULT 0;
    """,
    5: """
    ALTER TABLE tasks ADD COLUMN input_bytes INTEGER NOT NULL DEFAULT 0;
    UPDATE tasks SET input_bytes = length(CAST(input AS BLOB));
    CREATE INDEX tasks_tenant_created ON tasks(tenant, created_at, id);
    CREATE INDEX tasks_tenant_status ON tasks(tenant, status, input_bytes);
    """,
    # Version 6 moved PostgreSQL's blobs into its database; one process owns a SQLite file, so its
    # blobs stay files beside it.
    6: "",
    # Topic events and their deliveries (store/outbox.py).
    7: outbox.migration(seq="INTEGER PRIMARY KEY AUTOINCREMENT", real="REAL"),
    # Cron schedules and the scheduler's lease (store/schedules.py).
    8: schedules.migration(real="REAL"),
    # The W3C traceparent a task's spans belong under (runtime/tracing.py).
    9: "ALTER TABLE tasks ADD COLUMN trace_parent TEXT",
    # Event flow control per tenant, a tenant's events through an index, event quotas and
    # retention (store/outbox.py).
    10: outbox.MIGRATION_10,
    # The run that finished a task (a stale finish after a give-up is fenced, not taken for a
    # retransmission); what ended before it was finished by its last run.
    11: """
    ALTER TABLE tasks ADD COLUMN finished_run INTEGER;
    UPDATE tasks SET finished_run = runs WHERE status IN ('succeeded', 'failed', 'cancelled')
    """,
    # Why the scheduler paused a schedule, and when it looks at one next (store/schedules.py).
    12: schedules.MIGRATION_12.format(real="REAL"),
}

def queued_index_sql(aging_per_s: float) -> str:
    """The first queued tasks in rank order. INDEXED BY: SQLite's planner would take tasks_status
    and sort every queued task (a quarter of a second at a million) rather than read the first
    ones off the rank index."""
    return (f"SELECT id, priority, created_at, tenant FROM tasks INDEXED BY "
            f"{records.rank_index_name(aging_per_s)} WHERE status = 'queued' "
            f"ORDER BY {records.rank_order(aging_per_s)} LIMIT ?")


class SQLiteStore(BatchedWrites, outbox.Outbox, schedules.Schedules):
    """The Store on one SQLite file. Not thread-safe: one process, one thread (the Store actor)."""

    def __init__(self, path: Path, blob_dir: Path, synchronous: str = "FULL",
                 max_crashes: int = 3, aging_per_s: float = 1.0) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        blob_dir.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.blob_dir = blob_dir
        self.max_crashes = max_crashes
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute(f"PRAGMA synchronous={synchronous}")
        self._conn.execute("PRAGMA busy_timeout=5000")
        # 64 MiB of page cache (SQLite's default is 2 MiB): inserts into the indexes of a large
        # table (a million queued tasks, random ids) stay in memory instead of reading pages back.
        self._conn.execute("PRAGMA cache_size=-65536")
        # WAL checkpoints move off the writer: a commit that crosses the WAL's threshold would copy
        # its pages into a large database itself (a stall of a quarter of a second at a million
        # tasks); a thread with a connection of its own does it instead, without the write lock.
        self._conn.execute("PRAGMA wal_autocheckpoint=0")
        self._closed = threading.Event()
        self._checkpointer = threading.Thread(target=self._checkpoint_loop, daemon=True,
                                              name="raysquad-sqlite-checkpoint")
        self._checkpointer.start()
        self._depth = 0  # open transactions: 1, and savepoints inside it (see _tx)
        self._migrate()
        self.aging_per_s = aging_per_s
        with self._tx() as c:
            c.execute(records.rank_index(aging_per_s))
        # Task ids whose event log grew since the last drain; the Store actor wakes their waiters.
        self.touched: set[str] = set()

    # -- plumbing ---------------------------------------------------------------------------------

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """A transaction; inside one already open (``apply``), a savepoint that undoes only its own
        writes when it fails."""
        if self._depth:
            name = f"w{self._depth}"
            self._conn.execute(f"SAVEPOINT {name}")
            self._depth += 1
            try:
                yield self._conn
            except BaseException as e:
                self._conn.execute(f"ROLLBACK TO {name}")
                self._conn.execute(f"RELEASE {name}")
                if isinstance(e, sqlite3.Error):  # the write's own failure, answered alone
                    raise StoreError(f"the store failed ({type(e).__name__})", str(e)) from None
                raise
            else:
                self._conn.execute(f"RELEASE {name}")
            finally:
                self._depth -= 1
            return
        self._conn.execute("BEGIN IMMEDIATE")
        self._depth = 1
        metrics.inc("raysquad_store_transactions", backend="sqlite")
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        else:
            self._conn.execute("COMMIT")
        finally:
            self._depth = 0

    def _migrate(self) -> None:
        with self._tx() as c:
            c.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            row = c.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            version = int(row["value"]) if row else 0
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path} has schema version {version}, newer than this raysquad's "
                    f"{SCHEMA_VERSION}; upgrade raysquad"
                )
            for v in range(version + 1, SCHEMA_VERSION + 1):
                for statement in _MIGRATIONS[v].split(";"):
                    if statement.strip():
                        c.execute(statement)
            c.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)",
                (str(SCHEMA_VERSION),),
            )

    def _event(self, c: sqlite3.Connection, task_id: str, kind: str, data: dict[str, Any],
               now: float) -> int:
        row = c.execute(
            "UPDATE tasks SET last_seq = last_seq + 1 WHERE id = ? RETURNING last_seq", (task_id,)
        ).fetchone()
        if row is None:
            raise TaskNotFound(task_id)
        seq = int(row[0])
        c.execute(
            "INSERT INTO events (task_id, seq, kind, data, at) VALUES (?, ?, ?, ?, ?)",
            (task_id, seq, kind, json.dumps(data, default=str), now),
        )
        self.touched.add(task_id)
        return seq

    def _get(self, c: sqlite3.Connection, task_id: str) -> TaskRecord:
        row = c.execute(f"SELECT {records.TASK_COLUMNS} FROM tasks WHERE id = ?", (task_id,)).fetchone()
        if row is None:
            raise TaskNotFound(task_id)
        return records.task(row)

    def _requeue(self, c: sqlite3.Connection, rows: list[sqlite3.Row], reason: str,
                 now: float, crashed: bool = False) -> list[TaskRecord]:
        """Queue running tasks again. ``crashed``: their run ended without a word (a worker died, a
        lease ran out), which counts towards ``max_crashes``; a task at the limit fails instead."""
        out = []
        for row in rows:
            crashes = c.execute(
                "UPDATE tasks SET crashes = crashes + ? WHERE id = ? RETURNING crashes",
                (int(crashed), row["id"])).fetchone()[0]
            if crashed and crashes >= self.max_crashes:
                self._give_up(c, row["id"], crashes, reason, now)
                continue
            c.execute(
                "UPDATE tasks SET status = 'queued', owner = NULL, lease_until = NULL, updated_at = ? "
                "WHERE id = ?",
                (now, row["id"]),
            )
            self._event(c, row["id"], "requeued", {"reason": reason, "owner": row["owner"]}, now)
            out.append(self._get(c, row["id"]))
        return out

    def _give_up(self, c: sqlite3.Connection, task_id: str, attempts: int, reason: str,
                 now: float) -> None:
        error = str(PoisonTask(task_id, attempts, reason))
        c.execute("UPDATE tasks SET status = 'failed', error = ?, owner = NULL, lease_until = NULL, "
                  "finished_at = ?, updated_at = ? WHERE id = ?", (error, now, now, task_id))
        self._event(c, task_id, TaskStatus.FAILED.value, {"error": error}, now)

    # -- tasks ------------------------------------------------------------------------------------

    def _create(self, c: sqlite3.Connection, task_id: str, req: SubmitRequest,
                now: float) -> tuple[TaskRecord, bool]:
        row = c.execute(f"SELECT {records.TASK_COLUMNS} FROM tasks WHERE id = ?", (task_id,)).fetchone()
        if row is not None:  # the same submit sent again (its first reply was lost): it is this task
            return records.task(row), True
        if req.idempotency_key is not None:
            row = c.execute(
                f"SELECT {records.TASK_COLUMNS} FROM tasks WHERE tenant = ? AND idempotency_key = ?",
                (req.tenant, req.idempotency_key),
            ).fetchone()
            if row is not None:
                return records.task(row), False
        text = json.dumps(req.input)
        c.execute(
            "INSERT INTO tasks (id, workflow, input, input_bytes, status, priority, tenant, "
            "idempotency_key, created_at, updated_at, trace_parent) "
            "VALUES (?, ?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?)",
            (task_id, req.workflow, text, len(text.encode()), req.priority, req.tenant,
             req.idempotency_key, now, now, req.trace_parent),
        )
        self._event(c, task_id, "submitted", {"priority": req.priority}, now)
        # The row as written, without reading it back (and parsing its input again).
        return TaskRecord(id=task_id, workflow=req.workflow, input=req.input,
                          status=TaskStatus.QUEUED, priority=req.priority, tenant=req.tenant,
                          idempotency_key=req.idempotency_key, created_at=now,
                          updated_at=now, trace_parent=req.trace_parent), True

    def get_task(self, task_id: str) -> TaskRecord:
        return self._get(self._conn, task_id)

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
        return [records.summary(r) for r in self._conn.execute(sql, (*args, limit))]

    def count_tasks(self, status: TaskStatus) -> int:
        row = self._conn.execute("SELECT count(*) FROM tasks WHERE status = ?", (status.value,))
        return int(row.fetchone()[0])

    def queued_load(self, tenant: str) -> tuple[int, int]:
        """``tenant``'s queued tasks and their input bytes (off the tasks_tenant_status index)."""
        row = self._conn.execute("SELECT count(*), coalesce(sum(input_bytes), 0) FROM tasks "
                                 "WHERE tenant = ? AND status = 'queued'", (tenant,)).fetchone()
        return int(row[0]), int(row[1])

    def queued_index(self, limit: int) -> list[Queued]:
        """(id, priority, created_at, tenant) of the first ``limit`` queued tasks in the
        dispatcher's order (``records.rank_order``): what its window holds, without their inputs."""
        return [(r[0], r[1], r[2], r[3]) for r in self._conn.execute(
            queued_index_sql(self.aging_per_s), (limit,))]

    def recover(self, now: float, limit: int = 1_000_000) -> list[Queued]:
        """Queue again the tasks an earlier run left running; the queued tasks' index."""
        with self._tx() as c:
            rows = c.execute("SELECT id, owner FROM tasks WHERE status = 'running'").fetchall()
            self._requeue(c, rows, "runtime restarted", now)
        return self.queued_index(limit)

    def claim(self, task_ids: list[str], owner: str, lease_s: float, now: float) -> list[Claim]:
        claims = []
        with self._tx() as c:
            for task_id in task_ids:
                row = c.execute(
                    "UPDATE tasks SET status = 'running', owner = ?, lease_until = ?, runs = runs + 1, "
                    "started_at = coalesce(started_at, ?), updated_at = ? "
                    "WHERE id = ? AND status = 'queued' RETURNING runs",
                    (owner, now + lease_s, now, now, task_id),
                ).fetchone()
                if row is None:
                    continue
                self._event(c, task_id, "started", {"owner": owner, "run": row[0]}, now)
                steps = {
                    r["key"]: bytes(r["output"])
                    for r in c.execute("SELECT key, output FROM steps WHERE task_id = ?", (task_id,))
                }
                claims.append(Claim(task=self._get(c, task_id), steps=steps))
        return claims

    def renew(self, owner: str, leases: dict[str, int], lease_s: float,
              now: float) -> dict[str, bool]:
        """Extend ``owner``'s leases (task id -> token); returns task id -> cancel requested, for the
        leases still held."""
        held = {}
        with self._tx() as c:
            for task_id, token in leases.items():
                row = c.execute(
                    "UPDATE tasks SET lease_until = ? WHERE id = ? AND owner = ? AND runs = ? "
                    "AND status = 'running' RETURNING cancel_requested",
                    (now + lease_s, task_id, owner, token),
                ).fetchone()
                if row is not None:
                    held[task_id] = bool(row[0])
        return held

    def expire_leases(self, now: float) -> list[TaskRecord]:
        with self._tx() as c:
            rows = c.execute(
                "SELECT id, owner FROM tasks WHERE status = 'running' AND lease_until < ?", (now,)
            ).fetchall()
            return self._requeue(c, rows, "lease expired", now, crashed=True)

    def release_owner(self, owner: str, now: float, crashed: bool = True) -> list[TaskRecord]:
        """Queue again every task leased to ``owner``, which is gone. ``crashed``: its death counts
        against its tasks (not when it died with its pool, which says nothing about them)."""
        with self._tx() as c:
            rows = c.execute(
                "SELECT id, owner FROM tasks WHERE status = 'running' AND owner = ?", (owner,)
            ).fetchall()
            return self._requeue(c, rows, "worker lost" if crashed else "worker pool restarted",
                                 now, crashed=crashed)

    def running_owners(self) -> list[str]:
        """The owners that hold leases now."""
        rows = self._conn.execute("SELECT DISTINCT owner FROM tasks WHERE status = 'running'")
        return sorted(r[0] for r in rows if r[0] is not None)

    def abandon(self, lease: Lease, reason: str, now: float) -> TaskRecord:
        """The lease holder cannot run the task (its steps do not decode here): queue it again, as a
        crash (it fails once ``max_crashes`` is reached)."""
        with self._tx() as c:
            row = self._check_lease(c, lease)
            self._requeue(c, [row], reason, now, crashed=True)
            return self._get(c, lease.task_id)

    def _check_lease(self, c: sqlite3.Connection, lease: Lease) -> sqlite3.Row:
        """The fencing check of every write a runner makes: its claim (owner and token) still holds."""
        row = c.execute(
            "SELECT id, owner, status, runs, cancel_requested FROM tasks WHERE id = ?",
            (lease.task_id,)).fetchone()
        if row is None:
            raise TaskNotFound(lease.task_id)
        if row["owner"] != lease.owner or row["runs"] != lease.token or row["status"] != "running":
            raise LeaseLost(lease.task_id, lease.owner)
        return row

    def check_lease(self, lease: Lease) -> None:
        """LeaseLost unless ``lease`` still holds (checked before writing a step's blobs)."""
        self._check_lease(self._conn, lease)

    def record_step(self, lease: Lease, key: str, output: bytes, blobs: dict[str, bytes],
                    now: float, elapsed_s: float | None = None) -> bool:
        """Checkpoint a step under ``lease``. The first record of a key wins: a completed step is
        never overwritten, and the same record sent again changes nothing."""
        if blobs:
            self._check_lease(self._conn, lease)
        for blob_key, data in blobs.items():
            write_blob(self.blob_dir, blob_key, data)
        with self._tx() as c:
            row = self._check_lease(c, lease)
            inserted = c.execute(
                "INSERT OR IGNORE INTO steps (task_id, key, output, created_at) VALUES (?, ?, ?, ?)",
                (lease.task_id, key, output, now),
            ).rowcount
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
            task = self._get(c, lease.task_id)
            if task.status.ended and c.execute(  # the run that finished it: read only then
                    "SELECT finished_run FROM tasks WHERE id = ?",
                    (lease.task_id,)).fetchone()[0] == lease.token:
                return task  # this very finish, sent again after its reply was lost
            self._check_lease(c, lease)  # any other finish is fenced: a give-up, a newer claim
            c.execute(
                "UPDATE tasks SET status = ?, output = ?, error = ?, owner = NULL, lease_until = NULL, "
                "finished_at = ?, updated_at = ?, finished_run = runs WHERE id = ?",
                (status.value, json.dumps(output) if output is not None else None, error, now, now,
                 lease.task_id),
            )
            data = {"error": error} if error else {}
            self._event(c, lease.task_id, status.value, data, now)
            return self._get(c, lease.task_id)

    def request_cancel(self, task_id: str, now: float) -> TaskRecord:
        with self._tx() as c:
            task = self._get(c, task_id)
            if task.status.ended:
                raise InvalidTransition(task_id, task.status.value, "cancel")
            if task.status in (TaskStatus.QUEUED, TaskStatus.WAITING):
                c.execute(
                    "UPDATE tasks SET status = 'cancelled', waiting_for = NULL, wake_at = NULL, "
                    "finished_at = ?, updated_at = ? WHERE id = ?",
                    (now, now, task_id),
                )
                self._event(c, task_id, "cancelled", {"while": task.status.value}, now)
            else:
                c.execute(
                    "UPDATE tasks SET cancel_requested = 1, updated_at = ? WHERE id = ?", (now, task_id)
                )
                self._event(c, task_id, "cancel_requested", {}, now)
            return self._get(c, task_id)

    def retry(self, task_id: str, now: float) -> TaskRecord:
        with self._tx() as c:
            task = self._get(c, task_id)
            if task.status not in (TaskStatus.FAILED, TaskStatus.CANCELLED):
                raise InvalidTransition(task_id, task.status.value, "retry")
            kept = c.execute("SELECT count(*) FROM steps WHERE task_id = ?", (task_id,)).fetchone()[0]
            self._queue_again(c, task_id, {"steps_kept": kept}, now)
            return self._get(c, task_id)

    def _queue_again(self, c: sqlite3.Connection, task_id: str, why: dict[str, Any], now: float) -> None:
        """A failed or cancelled task runs again from its checkpoints (event ``retried``)."""
        c.execute("UPDATE tasks SET status = 'queued', error = NULL, cancel_requested = 0, "
                  "finished_at = NULL, finished_run = NULL, updated_at = ? WHERE id = ?",
                  (now, task_id))
        self._event(c, task_id, "retried", why, now)

    # -- signals ------------------------------------------------------------------------------------

    def send_signal(self, task_id: str, name: str, payload: Any, now: float,
                    limits: tuple[int, int] | None = None) -> TaskRecord:
        check_name(name, "signal name")
        text = json.dumps(payload)
        with self._tx() as c:
            task = self._get(c, task_id)
            if task.status.ended:
                raise InvalidTransition(task_id, task.status.value, f"signal {name!r} to")
            awaited = task.status is TaskStatus.WAITING and task.waiting_for == name
            if limits is not None and not awaited:  # one waited for is taken at once: it passes
                held = c.execute("SELECT count(*), coalesce(sum(length(CAST(payload AS BLOB))), 0) "
                                 "FROM signals WHERE task_id = ? AND consumed_by IS NULL",
                                 (task_id,)).fetchone()
                check_signal_room(task_id, int(held[0]), int(held[1]), len(text.encode()), limits)
            c.execute("INSERT INTO signals (task_id, name, payload, at) VALUES (?, ?, ?, ?)",
                      (task_id, name, text, now))
            self._event(c, task_id, "signal", {"name": name}, now)
            if task.status is TaskStatus.WAITING and task.waiting_for == name:
                c.execute(
                    "UPDATE tasks SET status = 'queued', waiting_for = NULL, wake_at = NULL, "
                    "updated_at = ? WHERE id = ?", (now, task_id))
                self._event(c, task_id, "requeued", {"reason": f"signal {name}"}, now)
            return self._get(c, task_id)

    def await_signal(self, lease: Lease, name: str, key: str, wake_at: float | None,
                     now: float) -> tuple[str, Any]:
        with self._tx() as c:
            done = c.execute("SELECT output FROM steps WHERE task_id = ? AND key = ?",
                             (lease.task_id, key)).fetchone()
            if done is not None:  # sent again after its reply was lost: the recorded outcome
                return refs.loads(bytes(done["output"]))  # type: ignore[no-any-return]
            self._check_lease(c, lease)
            task_id = lease.task_id
            row = c.execute(
                "SELECT id, payload FROM signals WHERE task_id = ? AND name = ? AND consumed_by IS NULL "
                "ORDER BY id LIMIT 1", (task_id, name)).fetchone()
            if row is not None or (wake_at is not None and now >= wake_at):
                outcome = ("signal", json.loads(row["payload"])) if row else ("timeout", None)
                if row is not None:
                    c.execute("UPDATE signals SET consumed_by = ? WHERE id = ?", (key, row["id"]))
                data, _ = refs.dumps(outcome)
                c.execute(
                    "INSERT INTO steps (task_id, key, output, created_at) VALUES (?, ?, ?, ?)",
                    (task_id, key, data, now))
                self._event(c, task_id, "step", records.step_event(key, len(data), []), now)
                return outcome
            c.execute(
                "UPDATE tasks SET status = 'waiting', owner = NULL, lease_until = NULL, waiting_for = ?, "
                "wake_at = ?, updated_at = ? WHERE id = ?", (name, wake_at, now, task_id))
            self._event(c, task_id, "waiting", {"signal": name, "wake_at": wake_at}, now)
            return ("parked", None)

    def wake_due(self, now: float) -> list[TaskRecord]:
        with self._tx() as c:
            rows = c.execute(
                "SELECT id FROM tasks WHERE status = 'waiting' AND wake_at IS NOT NULL AND wake_at <= ?",
                (now,)).fetchall()
            out = []
            for row in rows:
                c.execute(
                    "UPDATE tasks SET status = 'queued', waiting_for = NULL, wake_at = NULL, "
                    "updated_at = ? WHERE id = ?", (now, row["id"]))
                self._event(c, row["id"], "requeued", {"reason": "signal wait timed out"}, now)
                out.append(self._get(c, row["id"]))
            return out

    def events(self, task_id: str, after: int = 0, limit: int = 1000) -> list[Event]:
        rows = self._conn.execute(
            "SELECT task_id, seq, kind, data, at FROM events WHERE task_id = ? AND seq > ? "
            "ORDER BY seq LIMIT ?",
            (task_id, after, limit),
        ).fetchall()
        if not rows and after == 0:
            self._get(self._conn, task_id)
        return [Event(task_id=r["task_id"], seq=r["seq"], kind=r["kind"], data=json.loads(r["data"]),
                      at=r["at"]) for r in rows]

    # -- dead letters ----------------------------------------------------------------------------

    def add_dead_letter(self, letter: DeadLetter) -> None:
        with self._tx() as c:
            c.execute(
                "INSERT INTO dead_letters (id, tool, args, error, error_type, attempts, task_id, "
                "step_key, tenant, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (letter.id, letter.tool, json.dumps(letter.args), letter.error, letter.error_type,
                 letter.attempts, letter.task_id, letter.step_key, letter.tenant, letter.created_at),
            )

    def dead_letters(self, status: str | None = None, tool: str | None = None,
                     tenant: str | None = None, limit: int = 100) -> list[DeadLetter]:
        where, params = [], []
        for column, value in (("status", status), ("tool", tool), ("tenant", tenant)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        sql = f"SELECT {records.DEAD_LETTER_COLUMNS} FROM dead_letters"
        sql += " WHERE " + " AND ".join(where) if where else ""
        rows = self._conn.execute(sql + " ORDER BY created_at DESC LIMIT ?", (*params, limit))
        return [records.dead_letter(r) for r in rows]

    def get_dead_letter(self, letter_id: str) -> DeadLetter:
        row = self._conn.execute(f"SELECT {records.DEAD_LETTER_COLUMNS} FROM dead_letters WHERE id = ?",
                                 (letter_id,)).fetchone()
        if row is None:
            raise DeadLetterNotFound(letter_id)
        return records.dead_letter(row)

    def replayed(self, letter_id: str, ok: bool, result: Any, error: str, attempts: int,
                 now: float, step_output: bytes | None = None) -> DeadLetter:
        with self._tx() as c:
            if ok:
                c.execute("UPDATE dead_letters SET status = 'replayed', replayed_at = ?, result = ?, "
                          "attempts = attempts + ? WHERE id = ?",
                          (now, json.dumps(result), attempts, letter_id))
                if step_output is not None:
                    self._resume_with(c, letter_id, step_output, now)
            else:  # dead again, for a later replay to take
                c.execute("UPDATE dead_letters SET status = 'dead', replayed_at = NULL, error = ?, "
                          "attempts = attempts + ? WHERE id = ?", (error, attempts, letter_id))
        return self.get_dead_letter(letter_id)

    def take_dead_letter(self, letter_id: str, now: float) -> tuple[DeadLetter, bool]:
        """Mark a dead letter ``replaying`` before its replay runs; (the letter, taken). Not taken:
        it is replayed already, or another replay holds it (one taken over ``REPLAY_HOLD_S`` ago
        is taken again: its replayer died)."""
        with self._tx() as c:
            taken = c.execute(
                "UPDATE dead_letters SET status = 'replaying', replayed_at = ? WHERE id = ? AND "
                "(status = 'dead' OR (status = 'replaying' AND replayed_at < ?))",
                (now, letter_id, now - REPLAY_HOLD_S)).rowcount
        return self.get_dead_letter(letter_id), bool(taken)

    def _resume_with(self, c: sqlite3.Connection, letter_id: str, output: bytes, now: float) -> None:
        """A replayed call's task failed at that call: record the result as the step, queue the task
        (as a retry would; its earlier steps are kept). A task that went on without it is left be."""
        letter = c.execute("SELECT task_id, step_key FROM dead_letters WHERE id = ?",
                           (letter_id,)).fetchone()
        if letter is None or letter["task_id"] is None or letter["step_key"] is None:
            return
        task = c.execute("SELECT status FROM tasks WHERE id = ?", (letter["task_id"],)).fetchone()
        done = c.execute("SELECT 1 FROM steps WHERE task_id = ? AND key = ?",
                         (letter["task_id"], letter["step_key"])).fetchone()
        if task is None or task["status"] != TaskStatus.FAILED.value or done is not None:
            return
        c.execute("INSERT INTO steps (task_id, key, output, created_at) VALUES (?, ?, ?, ?)",
                  (letter["task_id"], letter["step_key"], output, now))
        self._queue_again(c, letter["task_id"],
                          {"by": "replay", "dead_letter": letter_id, "step": letter["step_key"]}, now)

    def read_blob(self, key: str) -> bytes:
        return read_blob(self.blob_dir, key)

    def _checkpoint_loop(self, every_s: float = 1.0) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA busy_timeout=5000")
            while not self._closed.wait(every_s):
                try:  # PASSIVE: copies what no reader needs, never waits for the writer
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except sqlite3.Error:
                    pass  # busy or closing: the next round does it
        finally:
            conn.close()

    def close(self) -> None:
        self._closed.set()
        self._checkpointer.join(timeout=5)
        self._conn.close()
