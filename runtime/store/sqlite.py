"""The SQLite Store: one file in WAL mode, a versioned schema, large step outputs as blob files."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path

from runtime.core import metrics
from runtime.core.errors import StoreError
from runtime.store import memo, outbox, records, schedules, tasks
from runtime.store.base import SCHEMA_VERSION, BatchedWrites
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
    # The W3C traceparent a task's spans belong under (runtime/core/tracing.py).
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
    # A task's token budget and the tokens its model calls used, by model (JSON).
    13: """
    ALTER TABLE tasks ADD COLUMN token_budget INTEGER;
    ALTER TABLE tasks ADD COLUMN usage TEXT
    """,
    # Finished tasks by time, a tenant's and everyone's, for their throughput (``task_stats``).
    14: """
    CREATE INDEX tasks_tenant_finished ON tasks(tenant, finished_at) WHERE finished_at IS NOT NULL;
    CREATE INDEX tasks_finished ON tasks(finished_at) WHERE finished_at IS NOT NULL
    """,
    # The LLM memo: model calls' answers by tenant and request hash (store/memo.py).
    15: memo.MIGRATION.format(real="REAL", without_rowid=" WITHOUT ROWID"),
}

def queued_index_sql(aging_per_s: float) -> str:
    """The first queued tasks in rank order. INDEXED BY: SQLite's planner would take tasks_status
    and sort every queued task (a quarter of a second at a million) rather than read the first
    ones off the rank index."""
    return (f"SELECT id, priority, created_at, tenant FROM tasks INDEXED BY "
            f"{records.rank_index_name(aging_per_s)} WHERE status = 'queued' "
            f"ORDER BY {records.rank_order(aging_per_s)} LIMIT ?")


class SQLiteStore(BatchedWrites, tasks.Tasks, outbox.Outbox, schedules.Schedules, memo.Memo):
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

    # -- what the shared SQL (store/tasks.py) leaves to the backend -----------------------------------

    def _read(self) -> AbstractContextManager[sqlite3.Connection]:
        """Reads need no transaction: one writer, and it is this connection."""
        return nullcontext(self._conn)

    def _keep_blobs(self, c: sqlite3.Connection, blobs: dict[str, bytes]) -> None:
        """Blobs are files beside the database (one process owns it)."""
        for blob_key, data in blobs.items():
            write_blob(self.blob_dir, blob_key, data)

    def _queued_sql(self) -> str:
        return queued_index_sql(self.aging_per_s)

    def ping(self) -> str:
        """Where the Store is (its file); StoreError unless it answers."""
        self._conn.execute("SELECT 1")
        return str(self.path)

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
