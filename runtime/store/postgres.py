"""The PostgreSQL Store: the Store protocol on a database that several processes may share.

Each method is one transaction under READ COMMITTED. What SQLite gets from its single writer, this
gets from row locks: a method that reads a task and then writes it locks the row first (``FOR
UPDATE``), so a lease's fencing check and the write it guards cannot be split by another process's
claim, and an event's ``seq`` is taken by ``UPDATE ... RETURNING`` on the locked row. ``claim`` skips
rows another transaction holds (``FOR UPDATE SKIP LOCKED``): two processes claiming the same ids
never both get a task, and neither waits for the other. A method that locks several tasks locks them
in id order, so no two methods wait on each other in a cycle.

Every process may open its own PostgresStore: it holds a small pool of connections (psycopg_pool),
so threads of one process run methods side by side. Large step outputs live in the database too
(``blobs``, written in the step's own transaction), so a worker on any node reads what a worker on
another wrote. Triggers NOTIFY each new event and each new task on channels named after the schema
(``channels``): a process that LISTENs (store/listen.py) is woken by writes from every other one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import DictRow, dict_row
from psycopg_pool import ConnectionPool, PoolTimeout

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
from runtime.store.blobs import blob_path, read_blob

Conn = psycopg.Connection[DictRow]

log = logging.getLogger(__name__)


def store_failure(where: str, error: BaseException, doing: str = "") -> StoreError:
    """A PostgreSQL or pool error as a StoreError whose message names only its class: the driver's
    own text names the host, port, user and database (and may quote the URL). That detail goes to
    this process's log and to ``StoreError.detail``, never to the message an API caller gets."""
    down = isinstance(error, (PoolTimeout, psycopg.OperationalError, psycopg.InterfaceError))
    what = ("the store is unavailable" if down else "the store failed") + (f": {doing}" if doing else "")
    detail = f"PostgreSQL at {where}: {type(error).__name__}: {str(error).strip()}"
    log.warning("%s: %s", what, detail)
    return StoreError(f"{what} ({type(error).__name__})", detail)

def without_passwords(conninfo: str) -> str:
    """The connection string without its passwords: what the log may say of where the database is."""
    return make_conninfo("", **{k: v for k, v in conninfo_to_dict(conninfo).items()
                                if k not in ("password", "sslpassword")})


# The schema by the version it brings the database to. PostgreSQL support began at version 5, so its
# first migration creates that schema whole; later versions append their changes here. JSON is kept
# as TEXT, exactly the text SQLite keeps (so ``input_bytes`` counts the same bytes and any JSON that
# Python writes, NaN included, reads back). Ids, tenants and statuses sort bytewise (COLLATE "C"),
# as SQLite's do, whatever the database's locale.
_MIGRATIONS: dict[int, str] = {
    5: """
    CREATE TABLE tasks (
        id TEXT COLLATE "C" PRIMARY KEY,
        workflow TEXT NOT NULL,
        input TEXT NOT NULL,
        input_bytes BIGINT NOT NULL DEFAULT 0,
        status TEXT COLLATE "C" NOT NULL,
        priority INTEGER NOT NULL,
        tenant TEXT COLLATE "C" NOT NULL,
        idempotency_key TEXT,
        output TEXT,
        error TEXT,
        runs INTEGER NOT NULL DEFAULT 0,
        crashes INTEGER NOT NULL DEFAULT 0,
        created_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL,
        started_at DOUBLE PRECISION,
        finished_at DOUBLE PRECISION,
        owner TEXT,
        lease_until DOUBLE PRECISION,
        cancel_requested BOOLEAN NOT NULL DEFAULT false,
        waiting_for TEXT,
        wake_at DOUBLE PRECISION,
        last_seq BIGINT NOT NULL DEFAULT 0
    );
    CREATE UNIQUE INDEX tasks_idempotency ON tasks(tenant, idempotency_key)
        WHERE idempotency_key IS NOT NULL;
    CREATE INDEX tasks_status ON tasks(status, created_at, id);
    CREATE INDEX tasks_owner ON tasks(owner) WHERE owner IS NOT NULL;
    CREATE INDEX tasks_wake ON tasks(wake_at) WHERE status = 'waiting';
    CREATE INDEX tasks_tenant_created ON tasks(tenant, created_at, id);
    CREATE INDEX tasks_tenant_status ON tasks(tenant, status, input_bytes);
    CREATE TABLE steps (
        task_id TEXT NOT NULL,
        key TEXT NOT NULL,
        output BYTEA NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (task_id, key)
    );
    CREATE TABLE events (
        task_id TEXT NOT NULL,
        seq BIGINT NOT NULL,
        kind TEXT NOT NULL,
        data TEXT NOT NULL,
        at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (task_id, seq)
    );
    CREATE TABLE signals (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        task_id TEXT NOT NULL,
        name TEXT NOT NULL,
        payload TEXT NOT NULL,
        at DOUBLE PRECISION NOT NULL,
        consumed_by TEXT
    );
    CREATE INDEX signals_pending ON signals(task_id, name, id) WHERE consumed_by IS NULL;
    CREATE TABLE dead_letters (
        id TEXT COLLATE "C" PRIMARY KEY,
        tool TEXT NOT NULL,
        args TEXT NOT NULL,
        error TEXT NOT NULL,
        error_type TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        task_id TEXT,
        step_key TEXT,
        tenant TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        status TEXT NOT NULL DEFAULT 'dead',
        replayed_at DOUBLE PRECISION,
        result TEXT
    );
    CREATE INDEX dead_letters_created ON dead_letters(created_at, id);
    """,
    # Blobs move into the database (any node reads them); new events and tasks are NOTIFYed.
    6: """
    CREATE TABLE blobs (
        key TEXT COLLATE "C" PRIMARY KEY,
        data BYTEA NOT NULL
    );
    CREATE FUNCTION raysquad_notify_event() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM pg_notify('raysquad_' || md5(TG_TABLE_SCHEMA) || '_events', NEW.task_id);
        RETURN NULL;
    END $$;
    CREATE TRIGGER events_notify AFTER INSERT ON events
        FOR EACH ROW EXECUTE FUNCTION raysquad_notify_event();
    CREATE FUNCTION raysquad_notify_task() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM pg_notify('raysquad_' || md5(TG_TABLE_SCHEMA) || '_tasks',
                          NEW.id || ' ' || NEW.priority || ' ' || NEW.created_at);
        RETURN NULL;
    END $$;
    CREATE TRIGGER tasks_notify AFTER INSERT ON tasks
        FOR EACH ROW EXECUTE FUNCTION raysquad_notify_task();
    """,
    # Topic events and their deliveries (store/outbox.py).
    7: outbox.migration(seq="BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY", real="DOUBLE PRECISION"),
    # Cron schedules and the scheduler's lease (store/schedules.py).
    8: schedules.migration(real="DOUBLE PRECISION"),
    # The W3C traceparent a task's spans belong under (runtime/tracing.py).
    9: "ALTER TABLE tasks ADD COLUMN trace_parent TEXT",
    # Event flow control per tenant, a tenant's events through an index, event quotas and
    # retention (store/outbox.py).
    10: outbox.MIGRATION_10,
    # The run that finished a task (a stale finish after a give-up is fenced, not taken for a
    # retransmission); what ended before it was finished by its last run. New tasks are NOTIFYed
    # with their tenant (the dispatcher shares the queue between tenants).
    11: """
    ALTER TABLE tasks ADD COLUMN finished_run INTEGER;
    UPDATE tasks SET finished_run = runs WHERE status IN ('succeeded', 'failed', 'cancelled');
    CREATE OR REPLACE FUNCTION raysquad_notify_task() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM pg_notify('raysquad_' || md5(TG_TABLE_SCHEMA) || '_tasks',
                          NEW.id || ' ' || NEW.priority || ' ' || NEW.created_at || ' ' || NEW.tenant);
        RETURN NULL;
    END $$;
    """,
    # Why the scheduler paused a schedule, and when it looks at one next (store/schedules.py).
    12: schedules.MIGRATION_12.format(real="DOUBLE PRECISION"),
}

#: Seconds since the epoch by the database's clock, read as the statement runs. ``claim``,
#: ``renew`` and ``expire_leases`` called with ``now=None`` (as store/direct.py calls them) take
#: lease times from it, so the clocks of the processes that claim, renew and expire leases
#: (several nodes) are never compared.
DB_NOW = "extract(epoch FROM clock_timestamp())::double precision"
LEASE_NOW = f"coalesce(%s::double precision, {DB_NOW})"


def channels(schema: str) -> tuple[str, str]:
    """The NOTIFY channels of a schema's Store: (new events, payload a task id; new tasks, payload
    ``"<id> <priority> <created_at>"``). Named by a hash, as a schema's name may be too long."""
    prefix = "raysquad_" + hashlib.md5(schema.encode()).hexdigest()
    return prefix + "_events", prefix + "_tasks"


class PostgresStore(BatchedWrites, outbox.Outbox, schedules.Schedules):
    """The Store on a PostgreSQL database (``url``: a libpq URL or conninfo string; its
    ``search_path`` decides the schema). Thread-safe: each method takes a connection from the pool
    (``pool_size`` at most); other processes may hold their own on the same database."""

    _placeholder = "%s"
    _lock_taken = " FOR UPDATE OF d SKIP LOCKED"
    _lock_row = " FOR UPDATE"

    def __init__(self, url: str, blob_dir: Path, max_crashes: int = 3, pool_size: int = 1,
                 aging_per_s: float = 1.0) -> None:
        blob_dir.mkdir(parents=True, exist_ok=True)
        self.blob_dir = blob_dir  # where blobs written before schema 6 are read from
        self.max_crashes = max_crashes
        try:
            params = conninfo_to_dict(url)
        except psycopg.ProgrammingError as e:
            raise StoreError("bad PostgreSQL URL (RAYSQUAD_POSTGRES_URL): it does not parse",
                             str(e)) from None
        params.setdefault("connect_timeout", 10)
        params.setdefault("application_name", "raysquad")
        self.conninfo = make_conninfo("", **params)
        connect_timeout = float(str(params["connect_timeout"]))
        self.path = without_passwords(self.conninfo)  # where the Store is, for the log and ``ping``
        self._held = threading.local()  # the connection of the transaction this thread has open
        # A connection found broken when it is taken (the server restarted, the network dropped) is
        # replaced before use: nothing was done on it yet.
        self._pool = ConnectionPool(
            self.conninfo, min_size=1, max_size=max(1, pool_size), open=False, name="raysquad-store",
            kwargs={"autocommit": False, "row_factory": dict_row},
            check=ConnectionPool.check_connection, timeout=connect_timeout + 5)
        try:  # one plain connection first: an unreachable server says why at once
            psycopg.connect(self.conninfo).close()
        except psycopg.Error as e:
            raise store_failure(self.path, e, "cannot connect") from None
        try:
            self._pool.open(wait=True, timeout=connect_timeout)
        except PoolTimeout as e:
            self._pool.close()
            raise store_failure(self.path, e, "cannot connect") from None
        self.aging_per_s = aging_per_s
        try:
            self._migrate()
            with self._tx() as c:
                self.schema = str(_one(c.execute("SELECT current_schema() AS s").fetchone())["s"])
                # Processes opening together make the rank index one at a time.
                c.execute("SELECT pg_advisory_xact_lock(hashtext('raysquad:' || current_schema()))")
                c.execute(records.rank_index(aging_per_s))
        except BaseException:
            self._pool.close()
            raise
        # Task ids whose event log grew through this object since the last drain (the Store actor
        # wakes their waiters; writes from other processes arrive by NOTIFY).
        self.touched: set[str] = set()

    # -- plumbing ---------------------------------------------------------------------------------

    @contextmanager
    def _tx(self) -> Iterator[Conn]:
        """One transaction on a pooled connection; PostgreSQL's own errors come out as StoreError
        (ours pass through). Inside one this thread holds open (``apply``), a savepoint on its
        connection that undoes only its own writes when it fails."""
        held: Conn | None = getattr(self._held, "conn", None)
        if held is not None:
            try:
                with held.transaction():
                    yield held
            except psycopg.Error as e:  # the savepoint is undone: the write's failure, alone
                raise store_failure(self.path, e) from None
            return
        try:
            with self._pool.connection() as conn, conn.transaction():
                metrics.inc("raysquad_store_transactions", backend="postgres")
                self._held.conn = conn
                try:
                    yield cast(Conn, conn)  # the pool's connections are made with dict rows
                finally:
                    self._held.conn = None
        except PoolTimeout as e:
            raise store_failure(self.path, e) from None
        except psycopg.Error as e:
            raise store_failure(self.path, e) from None

    def _migrate(self) -> None:
        if max(_MIGRATIONS) != SCHEMA_VERSION:
            raise StoreError(f"the PostgreSQL migrations end at version {max(_MIGRATIONS)}, "
                             f"not this raysquad's {SCHEMA_VERSION}")
        with self._tx() as c:
            # Processes starting together migrate one at a time (per schema).
            c.execute("SELECT pg_advisory_xact_lock(hashtext('raysquad:' || current_schema()))")
            c.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            row = c.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            version = int(row["value"]) if row else 0
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"the database has schema version {version}, newer than this raysquad's "
                    f"{SCHEMA_VERSION}; upgrade raysquad", self.path)
            for v, sql in sorted(_MIGRATIONS.items()):
                if v > version:
                    c.execute(sql)  # several statements: fine without parameters
            c.execute(
                "INSERT INTO meta (key, value) VALUES ('schema_version', %s) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (str(SCHEMA_VERSION),),
            )

    def _event(self, c: Conn, task_id: str, kind: str, data: dict[str, Any], now: float) -> int:
        row = c.execute(
            "UPDATE tasks SET last_seq = last_seq + 1 WHERE id = %s RETURNING last_seq", (task_id,)
        ).fetchone()
        if row is None:
            raise TaskNotFound(task_id)
        seq = int(row["last_seq"])
        c.execute(
            "INSERT INTO events (task_id, seq, kind, data, at) VALUES (%s, %s, %s, %s, %s)",
            (task_id, seq, kind, json.dumps(data, default=str), now),
        )
        self.touched.add(task_id)
        return seq

    def _get(self, c: Conn, task_id: str, lock: bool = False) -> TaskRecord:
        row = c.execute(f"SELECT {records.TASK_COLUMNS} FROM tasks WHERE id = %s"
                        + (" FOR UPDATE" if lock else ""), (task_id,)).fetchone()
        if row is None:
            raise TaskNotFound(task_id)
        return records.task(row)

    def _requeue(self, c: Conn, rows: Sequence[DictRow], reason: str, now: float,
                 crashed: bool = False) -> list[TaskRecord]:
        """Queue running tasks (their rows locked) again. ``crashed``: their run ended without a word
        (a worker died, a lease ran out), which counts towards ``max_crashes``; a task at the limit
        fails instead."""
        out = []
        for row in rows:
            counted = c.execute(
                "UPDATE tasks SET crashes = crashes + %s WHERE id = %s RETURNING crashes",
                (int(crashed), row["id"])).fetchone()
            assert counted is not None  # the row is locked: it is there
            crashes = int(counted["crashes"])
            if crashed and crashes >= self.max_crashes:
                self._give_up(c, row["id"], crashes, reason, now)
                continue
            c.execute(
                "UPDATE tasks SET status = 'queued', owner = NULL, lease_until = NULL, updated_at = %s "
                "WHERE id = %s",
                (now, row["id"]),
            )
            self._event(c, row["id"], "requeued", {"reason": reason, "owner": row["owner"]}, now)
            out.append(self._get(c, row["id"]))
        return out

    def _give_up(self, c: Conn, task_id: str, attempts: int, reason: str, now: float) -> None:
        error = str(PoisonTask(task_id, attempts, reason))
        c.execute("UPDATE tasks SET status = 'failed', error = %s, owner = NULL, lease_until = NULL, "
                  "finished_at = %s, updated_at = %s WHERE id = %s", (_text(error), now, now, task_id))
        self._event(c, task_id, TaskStatus.FAILED.value, {"error": error}, now)

    # -- tasks ------------------------------------------------------------------------------------

    def _create(self, c: Conn, task_id: str, req: SubmitRequest, now: float) -> tuple[TaskRecord, bool]:
        text = json.dumps(req.input)
        for _ in range(3):
            row = c.execute(f"SELECT {records.TASK_COLUMNS} FROM tasks WHERE id = %s",
                            (task_id,)).fetchone()
            if row is not None:  # the same submit sent again (its first reply was lost): it is this task
                return records.task(row), True
            if req.idempotency_key is not None:
                row = c.execute(
                    f"SELECT {records.TASK_COLUMNS} FROM tasks WHERE tenant = %s AND idempotency_key = %s",
                    (req.tenant, req.idempotency_key),
                ).fetchone()
                if row is not None:
                    return records.task(row), False
            inserted = c.execute(
                "INSERT INTO tasks (id, workflow, input, input_bytes, status, priority, tenant, "
                "idempotency_key, created_at, updated_at, trace_parent) "
                "VALUES (%s, %s, %s, %s, 'queued', %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                (task_id, req.workflow, text, len(text.encode()), req.priority, req.tenant,
                 req.idempotency_key, now, now, req.trace_parent),
            ).rowcount
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
        with self._tx() as c:
            return self._get(c, task_id)

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
                where.append(f"{column} = %s")
                args.append(value)
        if before is not None:
            where.append("(created_at, id) < (%s, %s)")
            args.extend(before)
        sql = f"SELECT {records.SUMMARY_COLUMNS} FROM tasks"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC, id DESC LIMIT %s"
        with self._tx() as c:
            return [records.summary(r) for r in c.execute(sql, (*args, limit))]

    def count_tasks(self, status: TaskStatus) -> int:
        with self._tx() as c:
            row = c.execute("SELECT count(*) AS n FROM tasks WHERE status = %s", (status.value,))
            return int(_one(row.fetchone())["n"])

    def queued_load(self, tenant: str) -> tuple[int, int]:
        """``tenant``'s queued tasks and their input bytes (off the tasks_tenant_status index)."""
        with self._tx() as c:
            row = _one(c.execute("SELECT count(*) AS n, coalesce(sum(input_bytes), 0) AS b "
                                 "FROM tasks WHERE tenant = %s AND status = 'queued'",
                                 (tenant,)).fetchone())
            return int(row["n"]), int(row["b"])

    def queued_index(self, limit: int) -> list[Queued]:
        """(id, priority, created_at, tenant) of the first ``limit`` queued tasks in the dispatcher's order
        (``records.rank_order``): what its window holds, without their inputs."""
        with self._tx() as c:
            return self._queued_index(c, limit)

    def _queued_index(self, c: Conn, limit: int) -> list[Queued]:
        return [(r["id"], r["priority"], r["created_at"], r["tenant"]) for r in c.execute(
            "SELECT id, priority, created_at, tenant FROM tasks WHERE status = 'queued' "
            f"ORDER BY {records.rank_order(self.aging_per_s)} LIMIT %s", (limit,))]

    def recover(self, now: float, limit: int = 1_000_000) -> list[Queued]:
        """Queue again the tasks an earlier run left running; the queued tasks' index."""
        with self._tx() as c:
            rows = c.execute("SELECT id, owner FROM tasks WHERE status = 'running' "
                             "ORDER BY id FOR UPDATE").fetchall()
            self._requeue(c, rows, "runtime restarted", now)
            return self._queued_index(c, limit)

    def claim(self, task_ids: list[str], owner: str, lease_s: float,
              now: float | None) -> list[Claim]:
        """Lease each still-queued task to ``owner``. A task another transaction holds right now is
        skipped, not waited for: it is being claimed, cancelled or signalled elsewhere (and if it is
        still queued after that, the dispatcher's reconcile finds it again)."""
        claims: list[Claim] = []
        if not task_ids:
            return claims
        at = time.time() if now is None else now  # for started_at and the events, not the lease
        with self._tx() as c:
            free = {r["id"] for r in c.execute(
                "SELECT id FROM tasks WHERE id = ANY(%s) AND status = 'queued' "
                "ORDER BY id FOR UPDATE SKIP LOCKED", (task_ids,))}
            for task_id in task_ids:
                if task_id not in free:
                    continue
                row = c.execute(
                    f"UPDATE tasks SET status = 'running', owner = %s, lease_until = {LEASE_NOW} + %s, "
                    "runs = runs + 1, started_at = coalesce(started_at, %s), updated_at = %s "
                    "WHERE id = %s AND status = 'queued' RETURNING runs",
                    (owner, now, lease_s, at, at, task_id),
                ).fetchone()
                if row is None:  # named twice in task_ids
                    continue
                self._event(c, task_id, "started", {"owner": owner, "run": row["runs"]}, at)
                steps = {
                    r["key"]: bytes(r["output"])
                    for r in c.execute("SELECT key, output FROM steps WHERE task_id = %s", (task_id,))
                }
                claims.append(Claim(task=self._get(c, task_id), steps=steps))
        return claims

    def renew(self, owner: str, leases: dict[str, int], lease_s: float,
              now: float | None) -> dict[str, bool]:
        """Extend ``owner``'s leases (task id -> token); returns task id -> cancel requested, for the
        leases still held."""
        held = {}
        with self._tx() as c:
            for task_id, token in sorted(leases.items()):
                row = c.execute(
                    f"UPDATE tasks SET lease_until = {LEASE_NOW} + %s WHERE id = %s AND owner = %s "
                    "AND runs = %s AND status = 'running' RETURNING cancel_requested",
                    (now, lease_s, task_id, owner, token),
                ).fetchone()
                if row is not None:
                    held[task_id] = bool(row["cancel_requested"])
        return held

    def expire_leases(self, now: float | None) -> list[TaskRecord]:
        with self._tx() as c:
            # FOR UPDATE re-reads a row another transaction changed: a lease renewed meanwhile is kept.
            rows = c.execute(
                f"SELECT id, owner FROM tasks WHERE status = 'running' AND lease_until < {LEASE_NOW} "
                "ORDER BY id FOR UPDATE", (now,)
            ).fetchall()
            return self._requeue(c, rows, "lease expired", time.time() if now is None else now,
                                 crashed=True)

    def release_owner(self, owner: str, now: float, crashed: bool = True) -> list[TaskRecord]:
        """Queue again every task leased to ``owner``, which is gone. ``crashed``: its death counts
        against its tasks (not when it died with its pool, which says nothing about them)."""
        with self._tx() as c:
            rows = c.execute(
                "SELECT id, owner FROM tasks WHERE status = 'running' AND owner = %s "
                "ORDER BY id FOR UPDATE", (owner,)
            ).fetchall()
            return self._requeue(c, rows, "worker lost" if crashed else "worker pool restarted",
                                 now, crashed=crashed)

    def running_owners(self) -> list[str]:
        """The owners that hold leases now."""
        with self._tx() as c:
            rows = c.execute("SELECT DISTINCT owner FROM tasks WHERE status = 'running'").fetchall()
        return sorted(r["owner"] for r in rows if r["owner"] is not None)

    def abandon(self, lease: Lease, reason: str, now: float) -> TaskRecord:
        """The lease holder cannot run the task (its steps do not decode here): queue it again, as a
        crash (it fails once ``max_crashes`` is reached)."""
        with self._tx() as c:
            row = self._check_lease(c, lease)
            self._requeue(c, [row], reason, now, crashed=True)
            return self._get(c, lease.task_id)

    def _check_lease(self, c: Conn, lease: Lease, lock: bool = True) -> DictRow:
        """The fencing check of every write a runner makes: its claim (owner and token) still holds.
        The row stays locked until the transaction ends, so the write it guards lands under it."""
        row = c.execute(
            "SELECT id, owner, status, runs, cancel_requested FROM tasks WHERE id = %s"
            + (" FOR UPDATE" if lock else ""), (lease.task_id,)).fetchone()
        if row is None:
            raise TaskNotFound(lease.task_id)
        if row["owner"] != lease.owner or row["runs"] != lease.token or row["status"] != "running":
            raise LeaseLost(lease.task_id, lease.owner)
        return row

    def check_lease(self, lease: Lease) -> None:
        """LeaseLost unless ``lease`` still holds (checked before writing a step's blobs)."""
        with self._tx() as c:
            self._check_lease(c, lease, lock=False)

    def record_step(self, lease: Lease, key: str, output: bytes, blobs: dict[str, bytes],
                    now: float, elapsed_s: float | None = None) -> bool:
        """Checkpoint a step under ``lease``. The first record of a key wins: a completed step is
        never overwritten, and the same record sent again changes nothing."""
        with self._tx() as c:
            row = self._check_lease(c, lease)
            for blob_key, data in blobs.items():
                blob_path(self.blob_dir, blob_key)  # the same rule for keys as blob files
                c.execute("INSERT INTO blobs (key, data) VALUES (%s, %s) "
                          "ON CONFLICT (key) DO NOTHING", (blob_key, data))
            inserted = c.execute(
                "INSERT INTO steps (task_id, key, output, created_at) VALUES (%s, %s, %s, %s) "
                "ON CONFLICT (task_id, key) DO NOTHING",
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
            task = self._get(c, lease.task_id, lock=True)
            if task.status.ended and _one(c.execute(  # the run that finished it: read only then
                    "SELECT finished_run FROM tasks WHERE id = %s",
                    (lease.task_id,)).fetchone())["finished_run"] == lease.token:
                return task  # this very finish, sent again after its reply was lost
            self._check_lease(c, lease)  # any other finish is fenced: a give-up, a newer claim
            c.execute(
                "UPDATE tasks SET status = %s, output = %s, error = %s, owner = NULL, "
                "lease_until = NULL, finished_at = %s, updated_at = %s, finished_run = runs "
                "WHERE id = %s",
                (status.value, json.dumps(output) if output is not None else None, _text(error), now,
                 now, lease.task_id),
            )
            data = {"error": error} if error else {}
            self._event(c, lease.task_id, status.value, data, now)
            return self._get(c, lease.task_id)

    def request_cancel(self, task_id: str, now: float) -> TaskRecord:
        with self._tx() as c:
            task = self._get(c, task_id, lock=True)
            if task.status.ended:
                raise InvalidTransition(task_id, task.status.value, "cancel")
            if task.status in (TaskStatus.QUEUED, TaskStatus.WAITING):
                c.execute(
                    "UPDATE tasks SET status = 'cancelled', waiting_for = NULL, wake_at = NULL, "
                    "finished_at = %s, updated_at = %s WHERE id = %s",
                    (now, now, task_id),
                )
                self._event(c, task_id, "cancelled", {"while": task.status.value}, now)
            else:
                c.execute("UPDATE tasks SET cancel_requested = true, updated_at = %s WHERE id = %s",
                          (now, task_id))
                self._event(c, task_id, "cancel_requested", {}, now)
            return self._get(c, task_id)

    def retry(self, task_id: str, now: float) -> TaskRecord:
        with self._tx() as c:
            task = self._get(c, task_id, lock=True)
            if task.status not in (TaskStatus.FAILED, TaskStatus.CANCELLED):
                raise InvalidTransition(task_id, task.status.value, "retry")
            kept = _one(c.execute("SELECT count(*) AS n FROM steps WHERE task_id = %s",
                                  (task_id,)).fetchone())["n"]
            self._queue_again(c, task_id, {"steps_kept": kept}, now)
            return self._get(c, task_id)

    def _queue_again(self, c: Conn, task_id: str, why: dict[str, Any], now: float) -> None:
        """A failed or cancelled task (its row locked) runs again from its checkpoints."""
        c.execute("UPDATE tasks SET status = 'queued', error = NULL, cancel_requested = false, "
                  "finished_at = NULL, finished_run = NULL, updated_at = %s WHERE id = %s",
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
                held = _one(c.execute(
                    "SELECT count(*) AS n, coalesce(sum(octet_length(payload)), 0) AS b "
                    "FROM signals WHERE task_id = %s AND consumed_by IS NULL", (task_id,)).fetchone())
                check_signal_room(task_id, int(held["n"]), int(held["b"]), len(text.encode()),
                                  limits)
            c.execute("INSERT INTO signals (task_id, name, payload, at) VALUES (%s, %s, %s, %s)",
                      (task_id, name, text, now))
            self._event(c, task_id, "signal", {"name": name}, now)
            if task.status is TaskStatus.WAITING and task.waiting_for == name:
                c.execute(
                    "UPDATE tasks SET status = 'queued', waiting_for = NULL, wake_at = NULL, "
                    "updated_at = %s WHERE id = %s", (now, task_id))
                self._event(c, task_id, "requeued", {"reason": f"signal {name}"}, now)
            return self._get(c, task_id)

    def await_signal(self, lease: Lease, name: str, key: str, wake_at: float | None,
                     now: float) -> tuple[str, Any]:
        with self._tx() as c:
            # The task's row lock orders this against every other writer of the task: a signal is
            # sent, consumed and recorded only under it.
            c.execute("SELECT id FROM tasks WHERE id = %s FOR UPDATE", (lease.task_id,))
            done = c.execute("SELECT output FROM steps WHERE task_id = %s AND key = %s",
                             (lease.task_id, key)).fetchone()
            if done is not None:  # sent again after its reply was lost: the recorded outcome
                return refs.loads(bytes(done["output"]))  # type: ignore[no-any-return]
            self._check_lease(c, lease)
            task_id = lease.task_id
            row = c.execute(
                "SELECT id, payload FROM signals WHERE task_id = %s AND name = %s "
                "AND consumed_by IS NULL ORDER BY id LIMIT 1", (task_id, name)).fetchone()
            if row is not None or (wake_at is not None and now >= wake_at):
                outcome = ("signal", json.loads(row["payload"])) if row else ("timeout", None)
                if row is not None:
                    c.execute("UPDATE signals SET consumed_by = %s WHERE id = %s", (key, row["id"]))
                data, _ = refs.dumps(outcome)
                c.execute(
                    "INSERT INTO steps (task_id, key, output, created_at) VALUES (%s, %s, %s, %s)",
                    (task_id, key, data, now))
                self._event(c, task_id, "step", records.step_event(key, len(data), []), now)
                return outcome
            c.execute(
                "UPDATE tasks SET status = 'waiting', owner = NULL, lease_until = NULL, "
                "waiting_for = %s, wake_at = %s, updated_at = %s WHERE id = %s",
                (name, wake_at, now, task_id))
            self._event(c, task_id, "waiting", {"signal": name, "wake_at": wake_at}, now)
            return ("parked", None)

    def wake_due(self, now: float) -> list[TaskRecord]:
        with self._tx() as c:
            rows = c.execute(
                "SELECT id FROM tasks WHERE status = 'waiting' AND wake_at IS NOT NULL "
                "AND wake_at <= %s ORDER BY id FOR UPDATE", (now,)).fetchall()
            out = []
            for row in rows:
                c.execute(
                    "UPDATE tasks SET status = 'queued', waiting_for = NULL, wake_at = NULL, "
                    "updated_at = %s WHERE id = %s", (now, row["id"]))
                self._event(c, row["id"], "requeued", {"reason": "signal wait timed out"}, now)
                out.append(self._get(c, row["id"]))
            return out

    def events(self, task_id: str, after: int = 0, limit: int = 1000) -> list[Event]:
        with self._tx() as c:
            rows = c.execute(
                "SELECT task_id, seq, kind, data, at FROM events WHERE task_id = %s AND seq > %s "
                "ORDER BY seq LIMIT %s",
                (task_id, after, limit),
            ).fetchall()
            if not rows and after == 0:
                self._get(c, task_id)
        return [Event(task_id=r["task_id"], seq=r["seq"], kind=r["kind"], data=json.loads(r["data"]),
                      at=r["at"]) for r in rows]

    # -- dead letters ----------------------------------------------------------------------------

    def add_dead_letter(self, letter: DeadLetter) -> None:
        with self._tx() as c:
            c.execute(
                "INSERT INTO dead_letters (id, tool, args, error, error_type, attempts, task_id, "
                "step_key, tenant, created_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (letter.id, letter.tool, json.dumps(letter.args), _text(letter.error), letter.error_type,
                 letter.attempts, letter.task_id, letter.step_key, letter.tenant, letter.created_at),
            )

    def dead_letters(self, status: str | None = None, tool: str | None = None,
                     tenant: str | None = None, limit: int = 100) -> list[DeadLetter]:
        where, params = [], []
        for column, value in (("status", status), ("tool", tool), ("tenant", tenant)):
            if value is not None:
                where.append(f"{column} = %s")
                params.append(value)
        sql = f"SELECT {records.DEAD_LETTER_COLUMNS} FROM dead_letters"
        sql += " WHERE " + " AND ".join(where) if where else ""
        with self._tx() as c:
            rows = c.execute(sql + " ORDER BY created_at DESC, id DESC LIMIT %s", (*params, limit))
            return [records.dead_letter(r) for r in rows]

    def get_dead_letter(self, letter_id: str) -> DeadLetter:
        with self._tx() as c:
            return self._get_dead_letter(c, letter_id)

    def _get_dead_letter(self, c: Conn, letter_id: str) -> DeadLetter:
        row = c.execute(f"SELECT {records.DEAD_LETTER_COLUMNS} FROM dead_letters WHERE id = %s",
                        (letter_id,)).fetchone()
        if row is None:
            raise DeadLetterNotFound(letter_id)
        return records.dead_letter(row)

    def replayed(self, letter_id: str, ok: bool, result: Any, error: str, attempts: int,
                 now: float, step_output: bytes | None = None) -> DeadLetter:
        with self._tx() as c:
            if ok:
                c.execute("UPDATE dead_letters SET status = 'replayed', replayed_at = %s, result = %s, "
                          "attempts = attempts + %s WHERE id = %s",
                          (now, json.dumps(result), attempts, letter_id))
                if step_output is not None:
                    self._resume_with(c, letter_id, step_output, now)
            else:  # dead again, for a later replay to take
                c.execute("UPDATE dead_letters SET status = 'dead', replayed_at = NULL, error = %s, "
                          "attempts = attempts + %s WHERE id = %s", (_text(error), attempts, letter_id))
            return self._get_dead_letter(c, letter_id)

    def take_dead_letter(self, letter_id: str, now: float) -> tuple[DeadLetter, bool]:
        """Mark a dead letter ``replaying`` before its replay runs; (the letter, taken). Not taken:
        it is replayed already, or another replay holds it (one taken over ``REPLAY_HOLD_S`` ago
        is taken again: its replayer died). The conditional UPDATE waits on a concurrent one's row
        lock and then sees its status: of two, one takes it."""
        with self._tx() as c:
            taken = c.execute(
                "UPDATE dead_letters SET status = 'replaying', replayed_at = %s WHERE id = %s AND "
                "(status = 'dead' OR (status = 'replaying' AND replayed_at < %s))",
                (now, letter_id, now - REPLAY_HOLD_S)).rowcount
            return self._get_dead_letter(c, letter_id), bool(taken)

    def _resume_with(self, c: Conn, letter_id: str, output: bytes, now: float) -> None:
        """A replayed call's task failed at that call: record the result as the step, queue the task
        (as a retry would; its earlier steps are kept). A task that went on without it is left be."""
        letter = c.execute("SELECT task_id, step_key FROM dead_letters WHERE id = %s",
                           (letter_id,)).fetchone()
        if letter is None or letter["task_id"] is None or letter["step_key"] is None:
            return
        task = c.execute("SELECT status FROM tasks WHERE id = %s FOR UPDATE",
                         (letter["task_id"],)).fetchone()
        done = c.execute("SELECT 1 FROM steps WHERE task_id = %s AND key = %s",
                         (letter["task_id"], letter["step_key"])).fetchone()
        if task is None or task["status"] != TaskStatus.FAILED.value or done is not None:
            return
        c.execute("INSERT INTO steps (task_id, key, output, created_at) VALUES (%s, %s, %s, %s)",
                  (letter["task_id"], letter["step_key"], output, now))
        self._queue_again(c, letter["task_id"],
                          {"by": "replay", "dead_letter": letter_id, "step": letter["step_key"]}, now)

    # -- blobs --------------------------------------------------------------------------------------

    def read_blob(self, key: str) -> bytes:
        with self._tx() as c:
            row = c.execute("SELECT data FROM blobs WHERE key = %s", (key,)).fetchone()
        if row is None:  # written as a file, before schema 6
            return read_blob(self.blob_dir, key)
        return bytes(row["data"])

    def ping(self) -> None:
        """StoreError unless the database answers."""
        with self._tx() as c:
            c.execute("SELECT 1")

    def close(self) -> None:
        self._pool.close()


def _text(message: str | None) -> str | None:
    """An error message as a TEXT column can hold it: PostgreSQL refuses NUL characters (SQLite
    keeps them), and a message that quotes an upstream's bytes must not make its write fail."""
    return message.replace("\x00", "\ufffd") if message is not None else None


def _one(row: DictRow | None) -> DictRow:
    """The row an aggregate always returns."""
    assert row is not None
    return row
