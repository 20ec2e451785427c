"""``sql_query``: one read-only query on the configured database (SQLite file or PostgreSQL).

Read-only and bounded are enforced by the database, not by reading the SQL. A query is exactly one
statement (a trailing semicolon or comment is fine), refused before anything runs otherwise: SQLite's
own rule for ``execute``, and on PostgreSQL the extended query protocol, which cannot carry two
statements (a ``COMMIT; ...`` cannot end the read-only transaction or outrun the timeout). A result
has at most ``sql_max_rows`` rows and ``sql_max_bytes`` of values (as text); rows past either are cut
and the result says ``truncated``.

SQLite opens the file read-only, and an authorizer allows reads and the functions in ``FUNCTIONS``
only (no ATTACH, no PRAGMA, no randomblob/zeroblob, no load_extension); a progress handler stops the
query at ``sql_timeout_s`` from its start (one deadline for preparing and every row), or as soon as
the call is over for its caller (``ToolContext.over``), and no string or blob in it may grow past
``sql_max_bytes``.

PostgreSQL runs the query through a server-side cursor (``DECLARE ... CURSOR FOR``: one SELECT,
VALUES, TABLE or WITH query), in a READ ONLY transaction that is never committed; rows are fetched a
few at a time, so a large result is not loaded to be cut. The time limit is one deadline for the whole
query, all its FETCHes together, kept by this process (``_Watchdog``): at ``sql_timeout_s`` from the
start, or once the call is over for its caller (an attempt that timed out), it cancels the running
statement, and if the server has not stopped it shortly after, cuts the connection. That holds
whatever the query does to its session: ``statement_timeout`` (set on connect too) only guards the
server when this process is gone, and a query can turn it off with ``set_config``; for that case the
server also checks every second that the client is still there (``client_connection_check_interval``)
and ends the query when it is not.

The database role a deployment should give sql_query (in the URL) is the last line of defence and
the one that does not depend on this code: a role of its own that can log in and read chosen tables
or views and nothing else, for instance ``CREATE ROLE raysquad_reader LOGIN PASSWORD '...'
CONNECTION LIMIT 4; GRANT CONNECT ON DATABASE app TO raysquad_reader; GRANT USAGE ON SCHEMA
reporting TO raysquad_reader; GRANT SELECT ON reporting.orders, reporting.customers_public TO
raysquad_reader;`` (views are the way to offer some columns or rows of a table), with ``ALTER ROLE
raysquad_reader SET default_transaction_read_only = on; ALTER ROLE raysquad_reader SET
statement_timeout = '10s'; ALTER ROLE raysquad_reader SET idle_in_transaction_session_timeout =
'30s';``. It should own nothing, hold no other grants (``REVOKE ALL ON SCHEMA public FROM PUBLIC``
where the public schema is not meant to be read, and ``REVOKE EXECUTE ON FUNCTION`` for functions it
should not call, such as ``pg_sleep`` or ``dblink``; ``REVOKE EXECUTE ON FUNCTION
pg_catalog.set_config(text, text, boolean) FROM PUBLIC`` keeps a query from changing its own
settings, if nothing else that logs in as a role without its own grant needs it), and be neither
superuser nor a member of ``pg_read_server_files``, ``pg_execute_server_program`` or
``pg_read_all_data``. For SQLite, give
sql_query a copy of the data it may read, or a file holding only that, not the application's own
database file.
"""

from __future__ import annotations

import logging
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from runtime.core.config import RetryPolicy, ToolSettings
from runtime.core.errors import QueryRefused
from runtime.tools.registry import ToolContext, tool

log = logging.getLogger(__name__)

Params = list[Any] | dict[str, Any] | None

ONE_STATEMENT = "sql_query runs exactly one SQL statement"
_SQLITE_READS = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_RECURSIVE}

#: The SQLite functions a query may call: ordinary scalar, aggregate, window, date and time, math and
#: JSON functions. Anything else (randomblob, zeroblob, load_extension, sqlite_*, fts3_tokenizer, the
#: functions of extensions) is refused.
FUNCTIONS = frozenset("""
    abs avg char coalesce concat concat_ws count format glob group_concat hex ifnull iif instr
    length like likelihood likely lower ltrim max min nullif octet_length printf quote random replace
    round rtrim sign string_agg substr substring sum total trim typeof unhex unicode unlikely upper
    date time datetime julianday unixepoch strftime timediff current_date current_time current_timestamp
    acos acosh asin asinh atan atan2 atanh ceil ceiling cos cosh degrees exp floor ln log log10 log2
    mod pi pow power radians sin sinh sqrt tan tanh trunc
    row_number rank dense_rank percent_rank cume_dist ntile lag lead first_value last_value nth_value
    json json_array json_array_length json_extract json_group_array json_group_object json_object
    json_quote json_type json_valid json_error_position -> ->>
""".split())

_BATCH = 64  # rows fetched at a time
_WATCH_S = 0.05  # how often the watchdog looks whether the call is over for its caller
_CANCEL_S = 2.0  # how long a cancel request may take, and how long the server has to act on it


class QueryResult(BaseModel):
    columns: list[str]
    rows: list[list[Any]]
    truncated: bool


def query(sql: str, settings: ToolSettings, params: Params = None, max_rows: int | None = None,
          over: threading.Event | None = None) -> QueryResult:
    """Runs one query within ``settings.sql_timeout_s``; it also stops once ``over`` is set (the
    call is over for its caller)."""
    if not settings.sql_url:
        raise QueryRefused("no database is configured (RAYSQUAD_TOOLS__SQL_URL)")
    limit = min(max_rows or settings.sql_max_rows, settings.sql_max_rows)
    over = over or threading.Event()
    if settings.sql_url.startswith(("postgresql://", "postgres://")):
        return _postgres(settings.sql_url, sql, params, limit, settings, over)
    return _sqlite(Path(settings.sql_url.removeprefix("sqlite:///")), sql, params, limit, settings,
                   over)


def _size(value: Any) -> int:
    """A value's size as the result carries it (numbers and nulls count 8)."""
    if value is None or isinstance(value, (bool, int, float)):
        return 8
    if isinstance(value, (bytes, bytearray, memoryview)):
        return len(value)
    return len(str(value).encode())


def _take(fetch: Callable[[int], Sequence[Sequence[Any]]], limit: int,
          max_bytes: int) -> tuple[list[list[Any]], bool]:
    """Rows from ``fetch`` (n -> at most n rows) up to ``limit`` rows and ``max_bytes``; whether
    there were more."""
    rows: list[list[Any]] = []
    size = 0
    while batch := fetch(min(_BATCH, limit + 1 - len(rows))):
        for row in batch:
            size += sum(_size(v) for v in row)
            if len(rows) == limit or size > max_bytes:
                return rows, True
            rows.append(list(row))
    return rows, False


# -- SQLite --------------------------------------------------------------------------------------------


class _SqliteGuard:
    """The authorizer (reads and FUNCTIONS only) and the progress handler (the deadline) of one query;
    remembers what it refused, for the message."""

    def __init__(self, timeout_s: float, over: threading.Event) -> None:
        self.deadline = time.monotonic() + timeout_s
        self.over = over
        self.refused: str | None = None

    def authorize(self, action: int, arg1: str | None, arg2: str | None, *_: Any) -> int:
        if action in _SQLITE_READS:
            return sqlite3.SQLITE_OK
        if action == sqlite3.SQLITE_FUNCTION and (arg2 or "").lower() in FUNCTIONS:
            return sqlite3.SQLITE_OK
        if self.refused is None:
            self.refused = (f"function {arg2}() is not allowed" if action == sqlite3.SQLITE_FUNCTION
                            else "only reads are allowed")
        return sqlite3.SQLITE_DENY

    def progress(self) -> int:
        return int(time.monotonic() > self.deadline or self.over.is_set())


def _sqlite(path: Path, sql: str, params: Params, limit: int, settings: ToolSettings,
            over: threading.Event) -> QueryResult:
    if not path.exists():
        raise QueryRefused(f"no SQLite database at {path}")
    timeout_s, max_bytes = settings.sql_timeout_s, settings.sql_max_bytes
    guard = _SqliteGuard(timeout_s, over)
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        conn.set_authorizer(guard.authorize)
        conn.set_progress_handler(guard.progress, 10_000)
        conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, max_bytes)
        try:
            # execute() prepares the whole text and refuses a second statement before running any.
            cursor = conn.execute(sql, params or ())
            columns = [d[0] for d in cursor.description or ()]
            rows, truncated = _take(cursor.fetchmany, limit, max_bytes)
        except sqlite3.ProgrammingError as e:
            if "one statement at a time" in str(e):
                raise QueryRefused(ONE_STATEMENT) from None
            raise QueryRefused(str(e)) from None
        except sqlite3.DatabaseError as e:
            raise QueryRefused(_sqlite_reason(e, guard, timeout_s, max_bytes)) from None
    finally:
        conn.close()
    return QueryResult(columns=columns, rows=rows, truncated=truncated)


def _sqlite_reason(error: sqlite3.DatabaseError, guard: _SqliteGuard, timeout_s: float,
                   max_bytes: int) -> str:
    text = str(error)
    if "not authorized" in text:
        return guard.refused or "only reads are allowed"
    if "readonly" in text:
        return f"only reads are allowed ({text})"
    if "interrupted" in text:
        return f"query ran over {timeout_s}s"
    if "too big" in text:
        return f"a value is larger than {max_bytes} bytes (RAYSQUAD_TOOLS__SQL_MAX_BYTES)"
    return text


# -- PostgreSQL ----------------------------------------------------------------------------------------


class _Watchdog:
    """Keeps one deadline for a whole PostgreSQL query, from another thread: when it passes, or when
    ``over`` is set, it asks the server to cancel the running statement, and if the query's thread
    has not finished ``_CANCEL_S`` later (the server did not answer, or the query went on), it shuts
    the connection's socket, which ends whatever the driver waits for there. ``close`` (from the
    query's thread, before the connection closes) makes sure it never touches the connection after."""

    def __init__(self, conn: Any, deadline: float, over: threading.Event) -> None:
        self.conn, self.deadline, self.over = conn, deadline, over
        self.fired = False
        self._done = threading.Event()
        self._lock = threading.Lock()  # held while the watchdog touches the connection
        self._thread = threading.Thread(target=self._watch, name="sql_query deadline", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._done.wait(min(_WATCH_S, max(0.0, self.deadline - time.monotonic()))):
            if self.over.is_set() or time.monotonic() >= self.deadline:
                break
        else:
            return
        with self._lock:
            if self._done.is_set():
                return
            self.fired = True
            try:
                self.conn.cancel_safe(timeout=_CANCEL_S)
            except Exception:  # noqa: BLE001 - no answer to the cancel: the socket goes next
                pass
        if self._done.wait(_CANCEL_S):
            return
        with self._lock:
            if not self._done.is_set():
                _shut(self.conn)

    def check(self, timeout_s: float) -> None:
        """Between statements, where a cancel request finds nothing to cancel."""
        if self.fired or time.monotonic() >= self.deadline:
            self.fired = True
            raise QueryRefused(f"query ran over {timeout_s}s")

    def close(self) -> None:
        with self._lock:
            self._done.set()
        self._thread.join()


def _shut(conn: Any) -> None:
    """Shuts the connection's socket both ways (through a copy of its descriptor: the driver still
    owns and closes its own), which fails whatever the driver is waiting for on it."""
    import psycopg

    try:
        with socket.socket(fileno=socket.dup(conn.pgconn.socket)) as sock:
            sock.shutdown(socket.SHUT_RDWR)
    except (OSError, psycopg.Error):
        pass


def _postgres(url: str, sql: str, params: Params, limit: int, settings: ToolSettings,
              over: threading.Event) -> QueryResult:
    import psycopg
    from psycopg import errors as pg_errors
    from psycopg.conninfo import conninfo_to_dict

    timeout_s = settings.sql_timeout_s
    ran_over = f"query ran over {timeout_s}s"
    deadline = time.monotonic() + timeout_s
    # statement_timeout guards the server should this process go away mid-query (the watchdog is
    # what keeps the deadline; the query may change statement_timeout).
    options = " ".join(filter(None, [
        str(conninfo_to_dict(url).get("options") or ""),
        f"-c statement_timeout={max(1, int(timeout_s * 1000))}", "-c default_transaction_read_only=on"]))
    try:
        conn = psycopg.connect(url, connect_timeout=max(2, int(timeout_s)), options=options)
    except psycopg.Error as e:  # its text names the host, port, user and database: for the log only
        log.warning("sql_query could not connect: %s", str(e).strip())
        raise QueryRefused(f"cannot connect to the database ({type(e).__name__})") from None
    watchdog = _Watchdog(conn, deadline, over)
    try:
        conn.read_only = True
        if conn.info.server_version >= 140000:  # the server ends the query if we are gone
            conn.execute("SET client_connection_check_interval = 1000")
        _parse_one(conn, sql, params)
        # A server-side cursor: DECLARE goes by the extended protocol too (one statement, or the
        # server refuses it), and FETCH brings a few rows at a time.
        with conn.cursor(name="sql_query") as cur:
            try:
                cur.execute(sql, params)
            except pg_errors.SyntaxError:  # it parsed on its own: it is not a query
                raise QueryRefused("only reads are allowed: one query that returns rows "
                                   "(SELECT, VALUES, TABLE or WITH ... SELECT)") from None
            columns = [d.name for d in cur.description or ()]

            def fetch(n: int) -> list[Any]:
                watchdog.check(timeout_s)
                return cur.fetchmany(n)

            rows, truncated = _take(fetch, limit, settings.sql_max_bytes)
    except QueryRefused:
        if watchdog.fired:  # whatever the cancel made of the statement it stopped
            raise QueryRefused(ran_over) from None
        raise
    except pg_errors.ReadOnlySqlTransaction as e:
        raise QueryRefused(f"only reads are allowed ({e})") from None
    except psycopg.Error as e:
        if watchdog.fired or isinstance(e, pg_errors.QueryCanceled):
            raise QueryRefused(ran_over) from None
        raise QueryRefused(str(e).strip()) from None
    finally:
        watchdog.close()
        conn.close()  # the transaction ends with the connection, never committed
    return QueryResult(columns=columns, rows=rows, truncated=truncated)


def _parse_one(conn: Any, sql: str, params: Params) -> None:
    """Has the server parse the query, as an unnamed prepared statement that never runs: that refuses
    a second statement (and says so) before anything runs, and gives syntax errors in the query's
    own terms."""
    import psycopg
    from psycopg import pq

    text = psycopg.ClientCursor(conn).mogrify(sql, params)
    parsed = conn.pgconn.prepare(b"", text.encode(conn.info.encoding))
    if parsed.status != pq.ExecStatus.COMMAND_OK:
        message = (parsed.error_field(pq.DiagnosticField.MESSAGE_PRIMARY) or b"").decode(
            conn.info.encoding, "replace")
        raise QueryRefused(ONE_STATEMENT if "multiple commands" in message else message)


@tool(retry=RetryPolicy(max_attempts=1))
def sql_query(sql: str, ctx: ToolContext, params: Params = None,
              max_rows: int | None = None) -> QueryResult:
    """Run one read-only SQL query (exactly one statement) on the configured database; returns its
    columns and rows (at most ``max_rows``, and a byte cap; ``truncated`` says when rows were cut).
    Use placeholders and ``params`` for values."""
    return query(sql, ctx.settings, params, max_rows, ctx.over)
