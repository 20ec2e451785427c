"""``sql_query``: one read-only query on the configured database (SQLite file or PostgreSQL).

Read-only is enforced by the database, not by reading the SQL: SQLite opens the file read-only and
an authorizer allows only reads (no ATTACH, no PRAGMA that writes); PostgreSQL runs the query in a
READ ONLY transaction with a statement timeout, which is rolled back.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from runtime.config import RetryPolicy, ToolSettings
from runtime.errors import QueryRefused
from runtime.tools.registry import ToolContext, tool

Params = list[Any] | dict[str, Any] | None

_SQLITE_READS = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION,
                 sqlite3.SQLITE_RECURSIVE}


class QueryResult(BaseModel):
    columns: list[str]
    rows: list[list[Any]]
    truncated: bool


def query(sql: str, settings: ToolSettings, params: Params = None,
          max_rows: int | None = None) -> QueryResult:
    if not settings.sql_url:
        raise QueryRefused("no database is configured (RAYSQUAD_TOOLS__SQL_URL)")
    limit = min(max_rows or settings.sql_max_rows, settings.sql_max_rows)
    if settings.sql_url.startswith(("postgresql://", "postgres://")):
        return _postgres(settings.sql_url, sql, params, limit, settings.sql_timeout_s)
    return _sqlite(Path(settings.sql_url.removeprefix("sqlite:///")), sql, params, limit,
                   settings.sql_timeout_s)


def _sqlite(path: Path, sql: str, params: Params, limit: int, timeout_s: float) -> QueryResult:
    if not path.exists():
        raise QueryRefused(f"no SQLite database at {path}")
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    deadline = time.monotonic() + timeout_s
    try:
        conn.set_authorizer(lambda action, *_: sqlite3.SQLITE_OK if action in _SQLITE_READS
                            else sqlite3.SQLITE_DENY)
        conn.set_progress_handler(lambda: int(time.monotonic() > deadline), 10_000)
        try:
            cursor = conn.execute(sql, params or ())
        except sqlite3.DatabaseError as e:
            if "not authorized" in str(e) or "readonly" in str(e):
                raise QueryRefused(f"only reads are allowed ({e})") from None
            if "interrupted" in str(e):
                raise QueryRefused(f"query ran over {timeout_s}s") from None
            raise QueryRefused(str(e)) from None
        except sqlite3.ProgrammingError as e:
            raise QueryRefused(str(e)) from None
        columns = [d[0] for d in cursor.description or ()]
        rows = cursor.fetchmany(limit + 1)
    finally:
        conn.close()
    return QueryResult(columns=columns, rows=[list(r) for r in rows[:limit]],
                       truncated=len(rows) > limit)


def _postgres(url: str, sql: str, params: Params, limit: int, timeout_s: float) -> QueryResult:
    import psycopg
    from psycopg import errors as pg_errors

    with psycopg.connect(url, connect_timeout=max(1, int(timeout_s))) as conn:
        conn.read_only = True
        try:
            with conn.cursor() as cur:
                cur.execute(f"SET LOCAL statement_timeout = {int(timeout_s * 1000)}")
                cur.execute(sql, params)  # type: ignore[arg-type]
                columns = [d.name for d in cur.description or ()]
                rows = cur.fetchmany(limit + 1) if cur.description else []
        except pg_errors.ReadOnlySqlTransaction as e:
            raise QueryRefused(f"only reads are allowed ({e})") from None
        except pg_errors.QueryCanceled:
            raise QueryRefused(f"query ran over {timeout_s}s") from None
        except psycopg.Error as e:
            raise QueryRefused(str(e).strip()) from None
        finally:
            conn.rollback()
    return QueryResult(columns=columns, rows=[list(r) for r in rows[:limit]],
                       truncated=len(rows) > limit)


@tool(retry=RetryPolicy(max_attempts=1))
def sql_query(sql: str, ctx: ToolContext, params: Params = None,
              max_rows: int | None = None) -> QueryResult:
    """Run one read-only SQL query on the configured database; returns its columns and rows
    (at most ``max_rows``). Use placeholders and ``params`` for values."""
    return query(sql, ctx.settings, params, max_rows)
