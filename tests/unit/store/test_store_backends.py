"""What one Store backend has and the other has not: SQLite's file settings and query plans;
PostgreSQL's plans, several processes on one database (claims, fencing, keys, event numbers,
migrations), its connection and its errors. The shared contract is test_store_contract.py."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from runtime.core.config import Settings
from runtime.core.errors import ConfigError, LeaseLost, StoreError
from runtime.core.models import DeadLetter, Lease, SubmitRequest, TaskStatus
from runtime.store import records
from runtime.store.base import SCHEMA_VERSION
from runtime.store.postgres import PostgresStore, channels
from runtime.store.service import open_store
from runtime.store.sqlite import SQLiteStore, queued_index_sql
from serve.errors import answer
from tests.conftest import wait_for
from tests.unit.stores import (
    LEASE_S,
    T0,
    PostgresBackend,
    SQLiteBackend,
    kinds,
    lease,
    running,
    submit,
)

# -- SQLite -----------------------------------------------------------------------------------------


def test_sqlite_synchronous_is_full_by_default_in_wal_mode(sqlite_backend: SQLiteBackend) -> None:
    store = sqlite_backend.open()
    assert isinstance(store, SQLiteStore)
    assert store._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert store._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_sqlite_blobs_are_files_beside_the_database(sqlite_backend: SQLiteBackend) -> None:
    store = sqlite_backend.open()
    running(store, "t1")
    store.record_step(lease(store, "t1", "w1"), "big", b"pickled", {"t1/big": b"x" * 5000}, T0 + 1)

    assert (store.blob_dir / "t1" / "big").read_bytes() == b"x" * 5000
    assert not list(store.blob_dir.rglob("*.tmp"))


def test_sqlite_task_list_by_tenant_uses_the_tenant_index(sqlite_backend: SQLiteBackend) -> None:
    store = sqlite_backend.open()
    assert isinstance(store, SQLiteStore)
    plan = store._conn.execute(
        "EXPLAIN QUERY PLAN SELECT id FROM tasks WHERE tenant = ? AND (created_at, id) < (?, ?) "
        "ORDER BY created_at DESC, id DESC LIMIT 5", ("x", T0, "z")).fetchall()
    text = " ".join(str(tuple(row)) for row in plan)
    assert "tasks_tenant_created" in text and "TEMP B-TREE" not in text, text


def test_sqlite_queued_tasks_in_rank_order_are_read_off_the_rank_index(
        sqlite_backend: SQLiteBackend) -> None:
    """The dispatcher's refill reads the first queued tasks by rank; a sort of every queued task
    instead stalled the Store a quarter of a second at a million."""
    store = sqlite_backend.open()
    assert isinstance(store, SQLiteStore)
    for i in range(20):
        submit(store, f"t{i:02}", now=T0 + i, priority=i % 3)
    store._conn.execute("ANALYZE")  # whatever the planner learns, the plan stays the index's
    plan = store._conn.execute("EXPLAIN QUERY PLAN " + queued_index_sql(store.aging_per_s),
                               (5,)).fetchall()
    text = " ".join(str(tuple(row)) for row in plan)
    assert records.rank_index_name(store.aging_per_s) in text and "TEMP B-TREE" not in text, text
    index = store.queued_index(20)
    keys = [store.aging_per_s * at - priority for _, priority, at, _ in index]
    assert keys == sorted(keys) and len(index) == 20


# -- PostgreSQL: plans ------------------------------------------------------------------------------


def explain(backend: PostgresBackend, query: str) -> str:
    with psycopg.connect(backend.url, autocommit=True) as conn:
        conn.execute("SET enable_seqscan = off")  # an empty table would be scanned whole otherwise
        return "\n".join(row[0] for row in conn.execute(f"EXPLAIN {query}"))


@pytest.mark.parametrize("query, index", [
    (f"SELECT id FROM tasks WHERE tenant = 'x' AND (created_at, id) < ({T0}, 'z') "
     "ORDER BY created_at DESC, id DESC LIMIT 5", "tasks_tenant_created"),
    # The dispatcher's refill: queued tasks in rank order (the default aging, 1.0 a second).
    (f"SELECT id, priority, created_at FROM tasks WHERE status = 'queued' "
     f"ORDER BY {records.rank_order(1.0)} LIMIT 5", "tasks_rank_"),
    # On an empty table either index of queued tasks serves; neither is a scan of every task.
    ("SELECT coalesce(sum(input_bytes), 0) FROM tasks WHERE tenant = 'x' AND status = 'queued'",
     "tasks_tenant_status|tasks_rank_"),
])
def test_postgres_lists_and_sums_use_their_index(postgres_backend: PostgresBackend, query: str,
                                                  index: str) -> None:
    postgres_backend.open()
    plan = explain(postgres_backend, query)
    assert any(name in plan for name in index.split("|")) and "Sort" not in plan, plan


# -- PostgreSQL: several processes on one database ----------------------------------------------------


def in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    """Run ``fn`` in a thread; the dict gets its result or its error."""
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["result"] = fn()
        except Exception as e:  # noqa: BLE001 - the test reads it
            out["error"] = e

    thread = threading.Thread(target=run)
    thread.start()
    return thread, out


def waiting_for_a_lock(backend: PostgresBackend) -> bool:
    rows = backend.query("SELECT count(*) FROM pg_stat_activity "
                         "WHERE datname = current_database() AND wait_event_type = 'Lock'")
    return bool(rows[0][0])


def test_postgres_two_processes_claiming_the_same_tasks_never_both_get_one(
        postgres_backend: PostgresBackend) -> None:
    one, two = postgres_backend.open(), postgres_backend.open()
    ids = [f"t{i:03}" for i in range(200)]
    one.create_tasks([(task_id, SubmitRequest(workflow="wf")) for task_id in ids], T0)
    start = threading.Barrier(2)

    def claim_all(store: PostgresStore | SQLiteStore, owner: str, order: list[str]) -> list[str]:
        start.wait()
        taken = []
        for i in range(0, len(order), 8):
            taken += [c.task.id for c in store.claim(order[i:i + 8], owner, LEASE_S, T0 + 1)]
        return taken

    first, got_one = in_thread(lambda: claim_all(one, "w1", ids))
    second, got_two = in_thread(lambda: claim_all(two, "w2", ids[::-1]))
    first.join(30)
    second.join(30)

    assert "error" not in got_one and "error" not in got_two, (got_one, got_two)
    w1, w2 = set(got_one["result"]), set(got_two["result"])
    assert not w1 & w2
    assert w1 | w2 == set(ids)
    owners = {t.id: (t.owner, t.runs) for t in one.list_tasks(limit=1000)}
    assert owners == {task_id: ("w1" if task_id in w1 else "w2", 1) for task_id in ids}
    assert kinds(one, ids[0]).count("started") == 1


def test_postgres_a_claim_skips_a_task_another_transaction_holds(postgres_backend: PostgresBackend) -> None:
    store = postgres_backend.open()
    submit(store, "t1")
    submit(store, "t2")
    # A claim that waited for the lock would fail here after 2 s instead of hanging the test.
    impatient = PostgresStore(make_conninfo(postgres_backend.url, options=(
        f"-c search_path={postgres_backend.schema} -c lock_timeout=2s")), postgres_backend.blob_dir)
    try:
        with psycopg.connect(postgres_backend.url) as other:
            other.execute("SELECT id FROM tasks WHERE id = 't1' FOR UPDATE")
            assert [c.task.id for c in impatient.claim(["t1", "t2"], "w1", LEASE_S, T0 + 1)] == ["t2"]
        assert [c.task.id for c in impatient.claim(["t1"], "w1", LEASE_S, T0 + 2)] == ["t1"]
    finally:
        impatient.close()


STALE_WRITES: dict[str, Callable[[PostgresStore | SQLiteStore, Lease], object]] = {
    "record_step": lambda store, stale: store.record_step(stale, "a", b"stale", {}, T0 + 1),
    "append_event": lambda store, stale: store.append_event("t1", "tokens", {}, T0 + 1, stale),
    "finish": lambda store, stale: store.finish(stale, TaskStatus.SUCCEEDED, 1, None, T0 + 1),
    "await_signal": lambda store, stale: store.await_signal(stale, "go", "s", None, T0 + 1),
    "abandon": lambda store, stale: store.abandon(stale, "cannot read", T0 + 1),
}


@pytest.mark.parametrize("write", sorted(STALE_WRITES))
def test_postgres_a_stale_write_waits_for_a_new_claim_and_is_refused(
        postgres_backend: PostgresBackend, write: str) -> None:
    store = postgres_backend.open()
    running(store, "t1")
    stale = lease(store, "t1", "w1")
    with psycopg.connect(postgres_backend.url) as other:
        # Another process gives the task to a new run; not committed yet.
        other.execute("UPDATE tasks SET owner = 'w2', runs = runs + 1 WHERE id = 't1'")
        thread, out = in_thread(lambda: STALE_WRITES[write](store, stale))
        wait_for(lambda: waiting_for_a_lock(postgres_backend), timeout_s=10,
                 what="the stale write to wait for the task's row")
    thread.join(10)  # the new claim committed as ``other`` closed

    assert isinstance(out.get("error"), LeaseLost), out
    assert kinds(store, "t1") == ["submitted", "started"]
    task = store.get_task("t1")
    assert (task.status, task.owner, task.runs) == (TaskStatus.RUNNING, "w2", 2)


def test_postgres_a_submit_racing_another_with_its_key_gets_that_task(
        postgres_backend: PostgresBackend) -> None:
    store = postgres_backend.open()
    with psycopg.connect(postgres_backend.url) as other:
        other.execute(
            "INSERT INTO tasks (id, workflow, input, status, priority, tenant, idempotency_key, "
            "created_at, updated_at) VALUES ('first', 'wf', '{}', 'queued', 0, 'default', 'k', %s, %s)",
            (T0, T0))
        thread, out = in_thread(lambda: store.create_task(
            "second", SubmitRequest(workflow="wf", idempotency_key="k"), T0 + 1))
        wait_for(lambda: waiting_for_a_lock(postgres_backend), timeout_s=10,
                 what="the second submit to wait for the first's key")
    thread.join(10)

    assert "error" not in out, out
    task, created = out["result"]
    assert (task.id, created) == ("first", False)
    assert [t.id for t in store.list_tasks()] == ["first"]


def test_postgres_events_from_two_processes_are_numbered_without_gaps(
        postgres_backend: PostgresBackend) -> None:
    one, two = postgres_backend.open(), postgres_backend.open()
    submit(one, "t1")
    start = threading.Barrier(2)

    def append(store: PostgresStore | SQLiteStore, who: str) -> list[int]:
        start.wait()
        return [store.append_event("t1", "progress", {"who": who, "i": i}, T0) for i in range(100)]

    first, seqs_one = in_thread(lambda: append(one, "one"))
    second, seqs_two = in_thread(lambda: append(two, "two"))
    first.join(30)
    second.join(30)

    assert sorted(seqs_one["result"] + seqs_two["result"]) == list(range(2, 202))
    assert [e.seq for e in one.events("t1")] == list(range(1, 202))


def test_postgres_processes_starting_together_migrate_once(postgres_backend: PostgresBackend) -> None:
    start = threading.Barrier(4)

    def open_one() -> PostgresStore | SQLiteStore:
        start.wait()
        return postgres_backend.open()

    threads = [in_thread(open_one) for _ in range(4)]
    for thread, _ in threads:
        thread.join(30)

    assert [sorted(out) for _, out in threads] == [["result"]] * 4, threads
    assert postgres_backend.query("SELECT value FROM meta") == [(str(SCHEMA_VERSION),)]


# -- PostgreSQL: the connection and its errors ---------------------------------------------------------


def test_postgres_lost_connections_are_replaced(postgres_backend: PostgresBackend,
                                               tmp_path: Path) -> None:
    name = f"lost-{uuid.uuid4().hex[:8]}"
    store = PostgresStore(make_conninfo(postgres_backend.url, application_name=name), tmp_path,
                          pool_size=2)
    submit(store, "t1")
    pids = [r[0] for r in postgres_backend.query(
        f"SELECT pid FROM pg_stat_activity WHERE application_name = '{name}'")]
    assert pids

    postgres_backend.query(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                           f"WHERE application_name = '{name}'")
    wait_for(lambda: not postgres_backend.query(
        f"SELECT 1 FROM pg_stat_activity WHERE pid IN ({', '.join(map(str, pids))})"),
        timeout_s=10, what="the Store's server processes to end")

    assert store.get_task("t1").status is TaskStatus.QUEUED
    store.close()


def test_postgres_blobs_are_in_the_database_for_every_process(postgres_backend: PostgresBackend,
                                                              tmp_path: Path) -> None:
    here = postgres_backend.open()
    running(here, "t1")
    here.record_step(lease(here, "t1", "w1"), "big", b"pickled", {"t1/big": b"x" * 5000}, T0 + 1)
    # Another node: the same database, a blob folder of its own.
    there = PostgresStore(postgres_backend.url, tmp_path / "elsewhere")

    assert there.read_blob("t1/big") == b"x" * 5000
    assert postgres_backend.query("SELECT key, length(data) FROM blobs") == [("t1/big", 5000)]
    assert not list(here.blob_dir.rglob("*"))
    there.close()


def test_postgres_new_events_and_tasks_are_notified(postgres_backend: PostgresBackend) -> None:
    store = postgres_backend.open()
    events_channel, tasks_channel = channels(store.schema)
    with psycopg.connect(postgres_backend.url, autocommit=True) as listener:
        for channel in (events_channel, tasks_channel):
            listener.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
        submit(store, "t1", priority=3, tenant="a b")
        store.append_event("t1", "progress", {}, T0 + 1)
        notes = [(n.channel, n.payload) for n in listener.notifies(timeout=5, stop_after=3)]

    events = [payload for channel, payload in notes if channel == events_channel]
    tasks = [payload.split(" ", 3) for channel, payload in notes if channel == tasks_channel]
    assert events == ["t1", "t1"]  # submitted, progress: one transaction each
    assert [(i, int(p), float(at), t) for i, p, at, t in tasks] == [("t1", 3, T0, "a b")]


def test_postgres_an_unreachable_server_is_a_store_error_without_the_conninfo(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    url = "postgresql://rsq_user:s3cret@127.0.0.1:1/rsq_db?sslpassword=k3y&application_name=rsq_app"
    refused = r"^the store is unavailable: cannot connect \(OperationalError\)$"
    with pytest.raises(StoreError, match=refused) as info:
        PostgresStore(url, tmp_path)
    # What an API caller would get (a 500 body) names no host, port, user, database or password.
    status, body = answer(info.value)
    shown = f"{status} {body} {info.value!s}"
    assert status == 500 and body["type"] == "StoreError"
    for part in ("127.0.0.1", "rsq_user", "s3cret", "rsq_db", "k3y", "rsq_app", "port"):
        assert part not in shown, part
    # The operator finds where and why in the log (the passwords left out there too).
    assert "127.0.0.1" in info.value.detail and "rsq_db" in caplog.text
    assert "s3cret" not in caplog.text and "k3y" not in caplog.text
    with pytest.raises(StoreError, match="bad PostgreSQL URL") as bad:
        PostgresStore("postgresql://127.0.0.1:5432/x?nonsense=s3cret", tmp_path)
    assert "s3cret" not in str(bad.value)


def test_postgres_errors_come_out_as_store_errors(postgres_backend: PostgresBackend) -> None:
    store = postgres_backend.open()
    letter = DeadLetter(id="d1", tool="t", args={}, error="e", error_type="E", attempts=1,
                        created_at=T0)
    store.add_dead_letter(letter)

    with pytest.raises(StoreError, match=r"^the store failed \(UniqueViolation\)$"):
        store.add_dead_letter(letter)
    with pytest.raises(StoreError, match=r"\(DataError\)$") as info:  # SQLite would keep it
        store.create_task("t\x00", SubmitRequest(workflow="wf"), T0)
    assert "NUL" in info.value.detail  # the driver's text: the log's, not the message's
    assert store.get_dead_letter("d1") == letter  # and the connection goes on


def test_postgres_error_messages_keep_their_text_without_nul(postgres_backend: PostgresBackend) -> None:
    store = postgres_backend.open()
    running(store, "t1")

    task = store.finish(lease(store, "t1", "w1"), TaskStatus.FAILED, None, "got b'\x00\x01'", T0 + 1)

    assert task.error == "got b'\ufffd\x01'"
    assert store.events("t1")[-1].data == {"error": "got b'\x00\x01'"}  # JSON keeps it escaped


# -- choosing the backend ------------------------------------------------------------------------------


def test_open_store_opens_postgres_when_settings_say_so(
        postgres_backend: PostgresBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAYSQUAD_STORE", "postgres")
    monkeypatch.setenv("RAYSQUAD_POSTGRES_URL", postgres_backend.url)

    store = open_store(Settings(data_dir=tmp_path, max_task_crashes=5))
    try:
        assert isinstance(store, PostgresStore)
        assert (store.blob_dir, store.max_crashes) == (tmp_path / "blobs", 5)
    finally:
        store.close()


def test_postgres_without_a_url_is_a_config_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAYSQUAD_POSTGRES_URL", raising=False)
    with pytest.raises(ConfigError, match="RAYSQUAD_POSTGRES_URL"):
        open_store(Settings(store="postgres", data_dir=tmp_path))


def test_a_runtime_on_postgres_without_a_url_fails_before_it_starts_anything(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from runtime.control.launch import Runtime

    monkeypatch.delenv("RAYSQUAD_POSTGRES_URL", raising=False)
    with pytest.raises(ConfigError, match="RAYSQUAD_POSTGRES_URL"):
        Runtime.start(Settings(store="postgres", data_dir=tmp_path))
