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
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import cast

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import DictRow, dict_row
from psycopg_pool import ConnectionPool, PoolTimeout

from runtime.core import metrics
from runtime.core.errors import StoreError
from runtime.store import memo, outbox, records, schedules, tasks
from runtime.store.base import SCHEMA_VERSION, BatchedWrites
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
    # The W3C traceparent a task's spans belong under (runtime/core/tracing.py).
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
    # A task's token budget and the tokens its model calls used, by model (JSON).
    13: """
    ALTER TABLE tasks ADD COLUMN token_budget INTEGER;
    ALTER TABLE tasks ADD COLUMN usage TEXT;
    """,
    # Finished tasks by time, a tenant's and everyone's, for their throughput (``task_stats``).
    14: """
    CREATE INDEX tasks_tenant_finished ON tasks(tenant, finished_at) WHERE finished_at IS NOT NULL;
    CREATE INDEX tasks_finished ON tasks(finished_at) WHERE finished_at IS NOT NULL
    """,
    # The LLM memo: model calls' answers by tenant and request hash (store/memo.py).
    15: memo.MIGRATION.format(real="DOUBLE PRECISION", without_rowid=""),
}

#: Seconds since the epoch by the database's clock, read as the statement runs. ``claim``,
#: ``renew`` and ``expire_leases`` called with ``now=None`` (as store/direct.py calls them) take
#: lease times from it, so the clocks of the processes that claim, renew and expire leases
#: (several nodes) are never compared.
DB_NOW = "extract(epoch FROM clock_timestamp())::double precision"
LEASE_NOW = f"coalesce(?::double precision, {DB_NOW})"


def channels(schema: str) -> tuple[str, str]:
    """The NOTIFY channels of a schema's Store: (new events, payload a task id; new tasks, payload
    ``"<id> <priority> <created_at>"``). Named by a hash, as a schema's name may be too long."""
    prefix = "raysquad_" + hashlib.md5(schema.encode()).hexdigest()
    return prefix + "_events", prefix + "_tasks"


class PostgresStore(BatchedWrites, tasks.Tasks, outbox.Outbox, schedules.Schedules, memo.Memo):
    """The Store on a PostgreSQL database (``url``: a libpq URL or conninfo string; its
    ``search_path`` decides the schema). Thread-safe: each method takes a connection from the pool
    (``pool_size`` at most); other processes may hold their own on the same database."""

    _placeholder = "%s"
    _lock_taken = " FOR UPDATE OF d SKIP LOCKED"
    _lock_row = " FOR UPDATE"
    _lease_now = LEASE_NOW
    _octets = "octet_length({})"
    _floor = "CAST(floor({}) AS BIGINT)"

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

    # -- what the shared SQL (store/tasks.py) leaves to the backend -----------------------------------

    def _claimable(self, c: Conn, task_ids: list[str]) -> set[str]:
        """A task another transaction holds right now is skipped, not waited for: it is being
        claimed, cancelled or signalled elsewhere (and if it is still queued after that, the
        dispatcher's reconcile finds it again)."""
        return {r["id"] for r in c.execute(
            "SELECT id FROM tasks WHERE id = ANY(%s) AND status = 'queued' "
            "ORDER BY id FOR UPDATE SKIP LOCKED", (task_ids,))}

    def _keep_blobs(self, c: Conn, blobs: dict[str, bytes]) -> None:
        """Blobs are rows, written in the step's transaction: any node reads them."""
        for blob_key, data in blobs.items():
            blob_path(self.blob_dir, blob_key)  # the same rule for keys as blob files
            c.execute("INSERT INTO blobs (key, data) VALUES (%s, %s) ON CONFLICT (key) DO NOTHING",
                      (blob_key, data))

    @staticmethod
    def _text(message: str | None) -> str | None:
        """An error message as a TEXT column can hold it: PostgreSQL refuses NUL characters (SQLite
        keeps them), and a message that quotes an upstream's bytes must not make its write fail."""
        return message.replace("\x00", "\ufffd") if message is not None else None

    # -- blobs --------------------------------------------------------------------------------------

    def read_blob(self, key: str) -> bytes:
        with self._tx() as c:
            row = c.execute("SELECT data FROM blobs WHERE key = %s", (key,)).fetchone()
        if row is None:  # written as a file, before schema 6
            return read_blob(self.blob_dir, key)
        return bytes(row["data"])

    def ping(self) -> str:
        """Where the Store is (without passwords); StoreError unless the database answers."""
        with self._tx() as c:
            c.execute("SELECT 1")
        return self.path

    def close(self) -> None:
        self._pool.close()


def _one(row: DictRow | None) -> DictRow:
    """The row an aggregate always returns."""
    assert row is not None
    return row
