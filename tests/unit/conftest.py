"""Fixtures of the Store tests: ``backend`` and ``store`` run each test on SQLite and on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.unit.stores import (
    PG_URL,
    AnyStore,
    Backend,
    PostgresBackend,
    PostgresDatabase,
    SQLiteBackend,
)


@pytest.fixture(scope="session")
def pg_database() -> Iterator[PostgresDatabase]:
    """This test session's own database (each test makes a schema in it), dropped at the end.
    PostgreSQL must be there: a suite that cannot reach it fails rather than skip."""
    try:
        database = PostgresDatabase()
    except psycopg.OperationalError as e:
        unreachable = str(e)
    else:
        yield database
        database.drop()
        return
    pytest.fail(f"the PostgreSQL Store tests need PostgreSQL at {PG_URL} (set "
                f"RAYSQUAD_TEST_POSTGRES_URL to another server; .ci/run starts the local one): "
                f"{unreachable}", pytrace=False)


@pytest.fixture
def postgres_backend(tmp_path: Path, pg_database: PostgresDatabase) -> Iterator[PostgresBackend]:
    backend = PostgresBackend(tmp_path, pg_database)
    yield backend
    backend.close()


@pytest.fixture
def sqlite_backend(tmp_path: Path) -> Iterator[SQLiteBackend]:
    backend = SQLiteBackend(tmp_path)
    yield backend
    backend.close()


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> Backend:
    return request.getfixturevalue(f"{request.param}_backend")


@pytest.fixture
def store(backend: Backend) -> AnyStore:
    return backend.open()
