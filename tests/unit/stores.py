"""The Store backends the contract suite runs on, both real, and helpers the Store tests share.

SQLite lives in a temporary folder. PostgreSQL lives in a schema of its own (``search_path``) in a
database made for the test session (tests/unit/conftest.py), so each test starts empty and the
suite stays fast; the server is ``RAYSQUAD_TEST_POSTGRES_URL`` (default: the local one CI starts).
"""

from __future__ import annotations

import os
import sqlite3
import uuid
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from runtime.core.errors import TaskNotFound
from runtime.core.models import Lease, SubmitRequest, TaskRecord
from runtime.store.postgres import PostgresStore
from runtime.store.sqlite import SQLiteStore

PG_URL = os.environ.get("RAYSQUAD_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")

T0 = 1_700_000_000.0
LEASE_S = 30.0

AnyStore = SQLiteStore | PostgresStore


class Backend:
    """Where one test's Store lives; ``open`` opens it (again) there, and every Store it opened is
    closed when the test ends."""

    name = ""

    def __init__(self, root: Path) -> None:
        self.blob_dir = root / "data" / "blobs"
        self.opened: list[AnyStore] = []

    def open(self, max_crashes: int = 3) -> AnyStore:
        store = self._open(max_crashes)
        self.opened.append(store)
        return store

    def _open(self, max_crashes: int) -> AnyStore:
        raise NotImplementedError

    def query(self, statement: str) -> list[tuple[Any, ...]]:
        """Run one SQL statement on a connection of its own (committed); its rows."""
        raise NotImplementedError

    def close(self) -> None:
        for store in self.opened:
            store.close()


class SQLiteBackend(Backend):
    name = "sqlite"

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.path = root / "data" / "raysquad.db"

    def _open(self, max_crashes: int) -> SQLiteStore:
        return SQLiteStore(self.path, self.blob_dir, max_crashes=max_crashes)

    def query(self, statement: str) -> list[tuple[Any, ...]]:
        conn = sqlite3.connect(self.path)
        try:
            with conn:
                return conn.execute(statement).fetchall()
        finally:
            conn.close()


class PostgresDatabase:
    """A database of one test session's own, made on the server at ``PG_URL`` and dropped at the
    end (with whatever schemas its tests left there)."""

    def __init__(self) -> None:
        self.name = f"raysquad_t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(PG_URL, autocommit=True, connect_timeout=5) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.name)))
        self.conninfo = make_conninfo(PG_URL, dbname=self.name)
        self.admin = psycopg.connect(self.conninfo, autocommit=True)

    def drop(self) -> None:
        self.admin.close()
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(self.name)))


class PostgresBackend(Backend):
    """A schema of its own in the session's database; the Store finds it by ``search_path``.
    Commits do not wait for the disk here (``synchronous_commit=off``): no test pulls the plug."""

    name = "postgres"

    def __init__(self, root: Path, database: PostgresDatabase) -> None:
        super().__init__(root)
        self.schema = f"t_{uuid.uuid4().hex[:12]}"
        self.url = make_conninfo(database.conninfo, options=f"-c search_path={self.schema} "
                                                            "-c synchronous_commit=off")
        database.admin.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(self.schema)))

    def _open(self, max_crashes: int) -> PostgresStore:
        return PostgresStore(self.url, self.blob_dir, max_crashes=max_crashes)

    def query(self, statement: str) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.url, autocommit=True) as conn:
            cur = conn.execute(statement)
            return cur.fetchall() if cur.description else []


# -- helpers ------------------------------------------------------------------------------------------


def submit(store: AnyStore, task_id: str, now: float = T0, **fields: object) -> TaskRecord:
    req = SubmitRequest.model_validate({"workflow": "wf", "input": {"n": 1}, **fields})
    task, created = store.create_task(task_id, req, now)
    assert created
    return task


def running(store: AnyStore, task_id: str, owner: str = "w1", now: float = T0) -> TaskRecord:
    submit(store, task_id, now)
    (claim,) = store.claim([task_id], owner, LEASE_S, now)
    return claim.task


def lease(store: AnyStore, task_id: str, owner: str) -> Lease:
    """The lease ``owner`` would hold on the task's current run."""
    return Lease(task_id, owner, store.get_task(task_id).runs)


def tokens(store: AnyStore, *task_ids: str) -> dict[str, int]:
    """task id -> its current run, for renewals (0 for a task that does not exist)."""
    out = {}
    for task_id in task_ids:
        try:
            out[task_id] = store.get_task(task_id).runs
        except TaskNotFound:
            out[task_id] = 0
    return out


def kinds(store: AnyStore, task_id: str) -> list[str]:
    return [e.kind for e in store.events(task_id)]
