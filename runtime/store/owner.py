"""One runtime owns a Store: its Store actor holds a lock on it for as long as it lives.

A second runtime started on the same file (a second ``raysquad up`` in the same folder, on a new
local cluster, passes the namespace check) would run ``recover`` and make the first runtime's
running tasks queued again, so their steps in flight would run twice. The Store actor takes an
``flock`` on ``<database>.lock`` as it opens; the kernel drops it when the process ends however it
ends, so a crashed runtime never leaves a stale lock behind. A restarted Store actor, or a runtime
started again at once after a crash, waits a moment for the dying process to let go.

A PostgreSQL Store (a schema) is held by a session-level advisory lock on a connection of its own;
the server drops it when that session ends.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from pathlib import Path

from runtime.core.config import Settings
from runtime.core.errors import StoreInUse

log = logging.getLogger(__name__)

#: How long a Store waits for the lock of a process that may be dying.
OWNER_WAIT_S = 30.0


class StoreLock:
    """An exclusive flock on ``<database>.lock``, held until ``release`` or the process ends."""

    def __init__(self, database: Path, wait_s: float = OWNER_WAIT_S) -> None:
        self.path = database.with_name(database.name + ".lock")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    holder = self._holder()
                    self.release()
                    raise StoreInUse(f"the Store {database}", holder) from None
                time.sleep(0.1)
        os.ftruncate(self._fd, 0)
        os.write(self._fd, f"pid {os.getpid()} on {os.uname().nodename}\n".encode())

    def _holder(self) -> str:
        with contextlib.suppress(OSError):
            return self.path.read_text().strip()
        return ""

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor drops the flock
            self._fd = None


class PostgresLock:
    """The same for a PostgreSQL Store: a session-level advisory lock, keyed by the schema, held on
    a connection of its own for as long as the process lives. The server lets go of it when that
    connection ends, which the death of the process does."""

    def __init__(self, conninfo: str, wait_s: float = OWNER_WAIT_S) -> None:
        import psycopg
        from psycopg.conninfo import make_conninfo

        from runtime.store.listen import KEEPALIVES
        from runtime.store.postgres import store_failure, without_passwords

        try:
            # Keepalives both ways: the server ends the session of a peer that vanished (its node
            # gone) within a minute, not hours, and lets go of the lock with it.
            self._conn: psycopg.Connection[tuple[object, ...]] | None = psycopg.connect(
                make_conninfo(conninfo, connect_timeout=10, **KEEPALIVES), autocommit=True)
            self._conn.execute("SET tcp_keepalives_idle = 10")
            self._conn.execute("SET tcp_keepalives_interval = 5")
            self._conn.execute("SET tcp_keepalives_count = 3")
        except psycopg.Error as e:
            raise store_failure(without_passwords(conninfo), e, "cannot connect") from None
        schema = str(_first(self._conn.execute("SELECT current_schema()").fetchone()))
        deadline = time.monotonic() + wait_s
        while not _first(self._conn.execute(
                "SELECT pg_try_advisory_lock(hashtext('raysquad-owner:' || current_schema()))"
        ).fetchone()):
            if time.monotonic() > deadline:
                self.release()
                raise StoreInUse(f"the Store in PostgreSQL schema {schema!r}") from None
            time.sleep(0.2)

    def release(self) -> None:
        if self._conn is not None:
            self._conn.close()  # the session ends, and its advisory lock with it
            self._conn = None


def own_store(settings: Settings, *, restarted: bool = False,
              wait_s: float = OWNER_WAIT_S) -> StoreLock | PostgresLock | None:
    """Take the Store's ownership for this process (the Store actor's, or a launcher's check).

    A restarted Store actor takes it if it can but goes on without it: the holder can only be its
    own previous incarnation (one runtime per namespace), whose session a vanished node may hold
    until the server's keepalives end it, and the runtime must not stay down meanwhile.
    """
    try:
        if settings.store == "sqlite":
            return StoreLock(settings.database_path, wait_s)
        assert settings.postgres_url is not None
        return PostgresLock(settings.postgres_url, wait_s)
    except StoreInUse:
        if not restarted:
            raise
        log.warning("the restarted Store goes on without its ownership lock (still held by its "
                    "previous process, which is gone)")
        return None


def _first(row: tuple[object, ...] | None) -> object:
    """The one column of the row a SELECT without FROM always returns."""
    assert row is not None
    return row[0]
