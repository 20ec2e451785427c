"""SQLiteStore on a temporary file: task lifecycle, leases, steps, blobs, events, schema."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.errors import InvalidTransition, LeaseLost, StoreError, TaskNotFound
from runtime.models import Lease, SubmitRequest, TaskRecord, TaskStatus
from runtime.store.base import SCHEMA_VERSION
from runtime.store.sqlite import SQLiteStore

T0 = 1_700_000_000.0
LEASE_S = 30.0


def open_store(tmp_path: Path) -> SQLiteStore:
    return SQLiteStore(tmp_path / "data" / "raysquad.db", tmp_path / "data" / "blobs")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    s = open_store(tmp_path)
    yield s
    s.close()


def submit(store: SQLiteStore, task_id: str, now: float = T0, **fields: object) -> TaskRecord:
    req = SubmitRequest.model_validate({"workflow": "wf", "input": {"n": 1}, **fields})
    task, created = store.create_task(task_id, req, now)
    assert created
    return task


def running(store: SQLiteStore, task_id: str, owner: str = "w1", now: float = T0) -> TaskRecord:
    submit(store, task_id, now)
    (claim,) = store.claim([task_id], owner, LEASE_S, now)
    return claim.task


def lease(store: SQLiteStore, task_id: str, owner: str) -> Lease:
    """The lease ``owner`` would hold on the task's current run."""
    return Lease(task_id, owner, store.get_task(task_id).runs)


def tokens(store: SQLiteStore, *task_ids: str) -> dict[str, int]:
    """task id -> its current run, for renewals (0 for a task that does not exist)."""
    out = {}
    for task_id in task_ids:
        try:
            out[task_id] = store.get_task(task_id).runs
        except TaskNotFound:
            out[task_id] = 0
    return out


def kinds(store: SQLiteStore, task_id: str) -> list[str]:
    return [e.kind for e in store.events(task_id)]


# -- create -----------------------------------------------------------------------------------------


def test_create_task(store: SQLiteStore) -> None:
    task = submit(store, "t1", workflow="research", input={"q": "x"}, priority=7, tenant="acme")

    assert task.status is TaskStatus.QUEUED
    assert (task.workflow, task.input, task.priority, task.tenant) == ("research", {"q": "x"}, 7, "acme")
    assert task.created_at == task.updated_at == T0
    assert task.runs == 0 and task.owner is None and task.output is None
    assert store.get_task("t1") == task
    assert kinds(store, "t1") == ["submitted"]


def test_get_unknown_task(store: SQLiteStore) -> None:
    with pytest.raises(TaskNotFound):
        store.get_task("nope")
    with pytest.raises(TaskNotFound):
        store.events("nope")


def test_idempotency_key_is_per_tenant(store: SQLiteStore) -> None:
    first = submit(store, "t1", idempotency_key="k", tenant="a")

    again, created = store.create_task(
        "t2", SubmitRequest(workflow="wf", idempotency_key="k", tenant="a"), T0 + 1)
    assert not created
    assert again == first

    other, created = store.create_task(
        "t3", SubmitRequest(workflow="wf", idempotency_key="k", tenant="b"), T0 + 2)
    assert created
    assert other.id == "t3"

    with pytest.raises(TaskNotFound):
        store.get_task("t2")
    assert store.count_tasks(TaskStatus.QUEUED) == 2


def test_tasks_without_key_are_never_deduplicated(store: SQLiteStore) -> None:
    submit(store, "t1")
    submit(store, "t2")
    assert store.count_tasks(TaskStatus.QUEUED) == 2


# -- claim, renew, leases ---------------------------------------------------------------------------


def test_claim_only_queued_tasks(store: SQLiteStore) -> None:
    submit(store, "t1")
    submit(store, "t2")
    submit(store, "t3")
    store.request_cancel("t3", T0)

    claims = store.claim(["t1", "t2", "t3", "missing"], "w1", LEASE_S, T0 + 5)

    assert [c.task.id for c in claims] == ["t1", "t2"]
    task = claims[0].task
    assert task.status is TaskStatus.RUNNING
    assert task.owner == "w1"
    assert task.lease_until == T0 + 5 + LEASE_S
    assert task.runs == 1
    assert task.started_at == T0 + 5
    assert claims[0].steps == {}
    assert store.claim(["t1"], "w2", LEASE_S, T0 + 6) == []  # already running
    started = store.events("t1")[-1]
    assert (started.kind, started.data) == ("started", {"owner": "w1", "run": 1})


def test_claim_returns_recorded_steps_and_counts_runs(store: SQLiteStore) -> None:
    running(store, "t1")
    store.record_step(lease(store, "t1", "w1"), "a", b"out-a", {}, T0 + 1)
    store.record_step(lease(store, "t1", "w1"), "a#2", b"out-a2", {}, T0 + 2)
    store.release_owner("w1", T0 + 3)

    (claim,) = store.claim(["t1"], "w2", LEASE_S, T0 + 4)

    assert claim.steps == {"a": b"out-a", "a#2": b"out-a2"}
    assert claim.task.runs == 2
    assert claim.task.owner == "w2"
    assert claim.task.started_at == T0  # the first start is kept


def test_renew_extends_held_leases_and_reports_cancel(store: SQLiteStore) -> None:
    running(store, "t1")
    running(store, "t2")
    running(store, "other", owner="w2")
    store.request_cancel("t2", T0 + 1)

    held = store.renew("w1", tokens(store, "t1", "t2", "other", "missing"), LEASE_S, T0 + 10)

    assert held == {"t1": False, "t2": True}
    assert store.get_task("t1").lease_until == T0 + 10 + LEASE_S
    assert store.get_task("other").lease_until == T0 + LEASE_S


def test_expire_leases(store: SQLiteStore) -> None:
    running(store, "t1")
    running(store, "t2", now=T0 + 20)

    assert store.expire_leases(T0 + LEASE_S) == []  # not yet past
    expired = store.expire_leases(T0 + LEASE_S + 1)

    assert [t.id for t in expired] == ["t1"]
    task = store.get_task("t1")
    assert task.status is TaskStatus.QUEUED
    assert task.owner is None and task.lease_until is None
    last = store.events("t1")[-1]
    assert (last.kind, last.data) == ("requeued", {"reason": "lease expired", "owner": "w1"})
    assert store.get_task("t2").status is TaskStatus.RUNNING
    assert store.renew("w1", tokens(store, "t1"), LEASE_S, T0 + 40) == {}


def test_release_owner(store: SQLiteStore) -> None:
    running(store, "t1", owner="dead")
    running(store, "t2", owner="dead")
    running(store, "t3", owner="alive")

    released = store.release_owner("dead", T0 + 1)

    assert sorted(t.id for t in released) == ["t1", "t2"]
    assert all(t.status is TaskStatus.QUEUED for t in released)
    assert store.get_task("t3").status is TaskStatus.RUNNING
    assert store.events("t1")[-1].data["reason"] == "worker lost"
    assert store.release_owner("dead", T0 + 2) == []


# -- steps and blobs --------------------------------------------------------------------------------


def test_record_step_under_lease(store: SQLiteStore) -> None:
    running(store, "t1")

    assert store.record_step(lease(store, "t1", "w1"), "fetch", b"\x00bytes", {}, T0 + 1) is False
    step = store.events("t1")[-1]
    assert (step.kind, step.data) == ("step", {"key": "fetch", "bytes": 6, "blobs": []})

    store.request_cancel("t1", T0 + 2)
    assert store.record_step(lease(store, "t1", "w1"), "next", b"x", {}, T0 + 3) is True


def test_a_recorded_step_is_never_overwritten(store: SQLiteStore) -> None:
    running(store, "t1")
    store.record_step(lease(store, "t1", "w1"), "a", b"first", {}, T0 + 1)
    store.record_step(lease(store, "t1", "w1"), "a", b"again", {}, T0 + 2)  # a repeated call
    assert kinds(store, "t1").count("step") == 1
    store.release_owner("w1", T0 + 3)

    (claim,) = store.claim(["t1"], "w1", LEASE_S, T0 + 4)
    assert claim.steps == {"a": b"first"}


def test_a_stale_run_cannot_write_after_the_task_is_claimed_again(store: SQLiteStore) -> None:
    running(store, "t1")
    stale = lease(store, "t1", "w1")
    store.expire_leases(T0 + LEASE_S + 1)
    (claim,) = store.claim(["t1"], "w1", LEASE_S, T0 + LEASE_S + 2)  # the same worker, a new run
    assert claim.lease.token == stale.token + 1

    with pytest.raises(LeaseLost):
        store.record_step(stale, "a", b"stale", {"t1/blob": b"stale"}, T0 + LEASE_S + 3)
    with pytest.raises(LeaseLost):
        store.append_event("t1", "tokens", {"text": "stale"}, T0 + LEASE_S + 3, stale)
    with pytest.raises(LeaseLost):
        store.finish(stale, TaskStatus.SUCCEEDED, None, None, T0 + LEASE_S + 3)
    assert store.renew("w1", {"t1": stale.token}, LEASE_S, T0 + LEASE_S + 3) == {}
    assert not (store.blob_dir / "t1" / "blob").exists()
    store.record_step(claim.lease, "a", b"fresh", {}, T0 + LEASE_S + 4)
    store.finish(claim.lease, TaskStatus.SUCCEEDED, 1, None, T0 + LEASE_S + 5)
    # the same finish again (its reply lost) is answered, not refused
    assert store.finish(claim.lease, TaskStatus.SUCCEEDED, 1, None, T0 + LEASE_S + 6).output == 1


def test_a_task_that_keeps_killing_its_worker_fails_as_poison(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "db", tmp_path / "blobs", max_crashes=2)
    running(store, "t1")
    assert [t.id for t in store.release_owner("w1", T0 + 1)] == ["t1"]  # crash 1: queued again
    store.claim(["t1"], "w2", LEASE_S, T0 + 2)
    assert store.release_owner("w2", T0 + 3) == []  # crash 2: given up
    task = store.get_task("t1")
    assert task.status is TaskStatus.FAILED and task.crashes == 2
    assert "given up after 2 failed attempt(s)" in (task.error or "")
    assert "worker lost" in (task.error or "")


def test_an_undecodable_task_is_abandoned_until_it_fails(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "db", tmp_path / "blobs", max_crashes=2)
    running(store, "t1")
    assert store.abandon(lease(store, "t1", "w1"), "cannot read", T0 + 1).status is TaskStatus.QUEUED
    store.claim(["t1"], "w1", LEASE_S, T0 + 2)
    task = store.abandon(lease(store, "t1", "w1"), "cannot read", T0 + 3)
    assert task.status is TaskStatus.FAILED and "cannot read" in (task.error or "")


def test_record_step_with_a_wrong_owner_is_refused(store: SQLiteStore) -> None:
    running(store, "t1")

    with pytest.raises(LeaseLost) as info:
        store.record_step(lease(store, "t1", "intruder"), "a", b"x", {}, T0 + 1)
    assert (info.value.task_id, info.value.owner) == ("t1", "intruder")

    store.expire_leases(T0 + LEASE_S + 1)
    with pytest.raises(LeaseLost):
        store.record_step(lease(store, "t1", "w1"), "a", b"x", {}, T0 + LEASE_S + 2)
    with pytest.raises(TaskNotFound):
        store.record_step(lease(store, "missing", "w1"), "a", b"x", {}, T0)

    store.release_owner("w1", T0 + 100)
    (claim,) = store.claim(["t1"], "w2", LEASE_S, T0 + 100)
    assert claim.steps == {}


def test_blobs_written_and_read_back(store: SQLiteStore) -> None:
    running(store, "t1")
    big = bytes(range(256)) * 1000

    store.record_step(lease(store, "t1", "w1"), "big", b"pickled", {"t1/big": big, "t1/small": b"s"}, T0 + 1)

    assert store.read_blob("t1/big") == big
    assert store.read_blob("t1/small") == b"s"
    assert store.events("t1")[-1].data["blobs"] == ["t1/big", "t1/small"]
    assert (store.blob_dir / "t1" / "big").read_bytes() == big
    assert not list(store.blob_dir.rglob("*.tmp"))
    with pytest.raises(StoreError):
        store.read_blob("t1/missing")


@pytest.mark.parametrize("key", ["../escape", "a/../../escape", "/etc/passwd", ".."])
def test_path_traversal_blob_key_is_refused(store: SQLiteStore, key: str) -> None:
    running(store, "t1")
    outside_before = set(store.blob_dir.parent.parent.rglob("*"))

    with pytest.raises(StoreError):
        store.record_step(lease(store, "t1", "w1"), "a", b"x", {key: b"evil"}, T0 + 1)
    with pytest.raises(StoreError):
        store.read_blob(key)

    assert set(store.blob_dir.parent.parent.rglob("*")) == outside_before
    assert kinds(store, "t1")[-1] == "started"  # nothing recorded


@pytest.mark.parametrize("key", [".", ""])
def test_blob_key_naming_the_blob_dir_is_refused(store: SQLiteStore, key: str) -> None:
    running(store, "t1")
    data_dir = store.blob_dir.parent
    before = set(data_dir.iterdir())

    try:
        with pytest.raises(StoreError):
            store.record_step(lease(store, "t1", "w1"), "a", b"x", {key: b"evil"}, T0 + 1)
    finally:
        assert set(data_dir.iterdir()) == before


# -- finish, cancel, retry --------------------------------------------------------------------------


def test_finish(store: SQLiteStore) -> None:
    running(store, "t1")

    task = store.finish(lease(store, "t1", "w1"), TaskStatus.SUCCEEDED, {"answer": [1, 2]}, None, T0 + 9)

    assert task.status is TaskStatus.SUCCEEDED
    assert task.output == {"answer": [1, 2]}
    assert task.finished_at == T0 + 9
    assert task.owner is None and task.lease_until is None
    assert store.events("t1")[-1].kind == "succeeded"
    with pytest.raises(LeaseLost):
        store.finish(Lease("t1", "w1", 2), TaskStatus.SUCCEEDED, None, None, T0 + 10)


def test_finish_failed_records_error_and_needs_the_lease(store: SQLiteStore) -> None:
    running(store, "t1")

    with pytest.raises(LeaseLost):
        store.finish(lease(store, "t1", "w2"), TaskStatus.FAILED, None, "boom", T0 + 1)
    with pytest.raises(ValueError):
        store.finish(lease(store, "t1", "w1"), TaskStatus.RUNNING, None, None, T0 + 1)

    task = store.finish(lease(store, "t1", "w1"), TaskStatus.FAILED, None, "boom", T0 + 2)
    assert (task.status, task.error, task.output) == (TaskStatus.FAILED, "boom", None)
    last = store.events("t1")[-1]
    assert (last.kind, last.data) == ("failed", {"error": "boom"})


def test_cancel_queued_task_at_once(store: SQLiteStore) -> None:
    submit(store, "t1")

    task = store.request_cancel("t1", T0 + 1)

    assert task.status is TaskStatus.CANCELLED
    assert task.finished_at == T0 + 1
    assert store.events("t1")[-1].data == {"while": "queued"}
    assert store.claim(["t1"], "w1", LEASE_S, T0 + 2) == []


def test_cancel_running_task_marks_it(store: SQLiteStore) -> None:
    running(store, "t1")

    task = store.request_cancel("t1", T0 + 1)

    assert task.status is TaskStatus.RUNNING
    assert task.cancel_requested
    assert kinds(store, "t1")[-1] == "cancel_requested"


@pytest.mark.parametrize("end", [TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.CANCELLED])
def test_cancel_ended_task_is_invalid(store: SQLiteStore, end: TaskStatus) -> None:
    running(store, "t1")
    store.finish(lease(store, "t1", "w1"), end, None, None, T0 + 1)

    with pytest.raises(InvalidTransition) as info:
        store.request_cancel("t1", T0 + 2)
    assert (info.value.status, info.value.operation) == (end.value, "cancel")


def test_retry_failed_task_keeps_steps(store: SQLiteStore) -> None:
    running(store, "t1")
    store.record_step(lease(store, "t1", "w1"), "a", b"A", {}, T0 + 1)
    store.request_cancel("t1", T0 + 2)
    store.finish(lease(store, "t1", "w1"), TaskStatus.FAILED, None, "boom", T0 + 3)

    task = store.retry("t1", T0 + 4)

    assert task.status is TaskStatus.QUEUED
    assert task.error is None and task.finished_at is None and not task.cancel_requested
    last = store.events("t1")[-1]
    assert (last.kind, last.data) == ("retried", {"steps_kept": 1})
    (claim,) = store.claim(["t1"], "w2", LEASE_S, T0 + 5)
    assert claim.steps == {"a": b"A"}
    assert claim.task.runs == 2


def test_retry_cancelled_task(store: SQLiteStore) -> None:
    submit(store, "t1")
    store.request_cancel("t1", T0 + 1)

    assert store.retry("t1", T0 + 2).status is TaskStatus.QUEUED


@pytest.mark.parametrize("state", ["queued", "running", "succeeded"])
def test_retry_is_invalid_unless_failed_or_cancelled(store: SQLiteStore, state: str) -> None:
    if state == "queued":
        submit(store, "t1")
    else:
        running(store, "t1")
        if state == "succeeded":
            store.finish(lease(store, "t1", "w1"), TaskStatus.SUCCEEDED, 1, None, T0 + 1)

    with pytest.raises(InvalidTransition) as info:
        store.retry("t1", T0 + 2)
    assert (info.value.status, info.value.operation) == (state, "retry")


# -- events -----------------------------------------------------------------------------------------


def test_events_are_numbered_per_task_and_paged_with_after(store: SQLiteStore) -> None:
    running(store, "t1")
    submit(store, "t2")
    seqs = [store.append_event("t1", "progress", {"i": i}, T0 + i) for i in range(5)]

    assert seqs == [3, 4, 5, 6, 7]  # after submitted (1) and started (2)
    events = store.events("t1")
    assert [e.seq for e in events] == list(range(1, 8))
    assert [e.data for e in store.events("t1", after=5)] == [{"i": 3}, {"i": 4}]
    assert [e.seq for e in store.events("t1", after=2, limit=2)] == [3, 4]
    assert store.events("t1", after=7) == []
    assert [e.seq for e in store.events("t2")] == [1]
    assert events[2].at == T0 and events[2].task_id == "t1"
    assert "t1" in store.touched
    with pytest.raises(TaskNotFound):
        store.append_event("missing", "x", {}, T0)


# -- listing and counting ---------------------------------------------------------------------------


def test_list_tasks_filters_and_pages(store: SQLiteStore) -> None:
    for i in range(6):
        submit(store, f"t{i}", now=T0 + i, workflow="a" if i % 2 else "b",
               tenant="x" if i < 3 else "y")
    store.claim(["t4"], "w1", LEASE_S, T0 + 10)

    assert [t.id for t in store.list_tasks()] == ["t5", "t4", "t3", "t2", "t1", "t0"]  # newest first
    assert [t.id for t in store.list_tasks(workflow="a")] == ["t5", "t3", "t1"]
    assert [t.id for t in store.list_tasks(tenant="x")] == ["t2", "t1", "t0"]
    assert [t.id for t in store.list_tasks(status=TaskStatus.RUNNING)] == ["t4"]
    assert [t.id for t in store.list_tasks(status=TaskStatus.QUEUED, workflow="b", tenant="y")] == []
    assert [t.id for t in store.list_tasks(workflow="b", tenant="x")] == ["t2", "t0"]
    assert [t.id for t in store.list_tasks(limit=2)] == ["t5", "t4"]
    page = store.list_tasks(limit=2)
    page2 = store.list_tasks(limit=2, before=(page[-1].created_at, page[-1].id))
    assert [t.id for t in page2] == ["t3", "t2"]
    last = store.list_tasks()[-1]
    assert store.list_tasks(before=(last.created_at, last.id)) == []


def test_lists_carry_no_inputs_only_their_size(store: SQLiteStore) -> None:
    submit(store, "big", input={"text": "x" * 100_000})
    (summary,) = store.list_tasks()
    assert summary.id == "big" and summary.input_bytes == len(json.dumps({"text": "x" * 100_000}))
    assert "input" not in type(summary).model_fields and "output" not in type(summary).model_fields


def test_pages_do_not_skip_tasks_created_in_the_same_instant(store: SQLiteStore) -> None:
    for i in range(5):
        submit(store, f"t{i}", now=T0, tenant="x")  # one clock reading for all: ids break the tie
    seen: list[str] = []
    before = None
    while page := store.list_tasks(tenant="x", limit=2, before=before):
        seen += [t.id for t in page]
        before = (page[-1].created_at, page[-1].id)
    assert sorted(seen) == [f"t{i}" for i in range(5)] and len(seen) == 5


def test_task_list_by_tenant_uses_the_tenant_index(store: SQLiteStore) -> None:
    plan = store._conn.execute(
        "EXPLAIN QUERY PLAN SELECT id FROM tasks WHERE tenant = ? AND (created_at, id) < (?, ?) "
        "ORDER BY created_at DESC, id DESC LIMIT 5", ("x", T0, "z")).fetchall()
    text = " ".join(str(tuple(row)) for row in plan)
    assert "tasks_tenant_created" in text and "TEMP B-TREE" not in text, text


def test_queued_bytes_and_index_read_no_inputs(store: SQLiteStore) -> None:
    submit(store, "a", tenant="x", input={"text": "x" * 1000})
    submit(store, "b", tenant="x", input={"text": "y" * 10})
    submit(store, "c", tenant="y", input={})
    running(store, "d")
    assert store.queued_bytes("x") == len(json.dumps({"text": "x" * 1000})) + len(
        json.dumps({"text": "y" * 10}))
    assert store.queued_bytes("nobody") == 0
    assert [(i, p) for i, p, _ in store.queued_index(10)] == [("a", 0), ("b", 0), ("c", 0)]


def test_synchronous_is_full_by_default(store: SQLiteStore) -> None:
    assert store._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_count_tasks(store: SQLiteStore) -> None:
    running(store, "t1")
    submit(store, "t2")
    submit(store, "t3")
    store.request_cancel("t3", T0)

    counts = {s: store.count_tasks(s) for s in TaskStatus}

    assert counts == {TaskStatus.QUEUED: 1, TaskStatus.RUNNING: 1, TaskStatus.WAITING: 0,
                      TaskStatus.SUCCEEDED: 0, TaskStatus.FAILED: 0, TaskStatus.CANCELLED: 1}


# -- recovery and the file --------------------------------------------------------------------------


def test_recover_requeues_running_tasks(store: SQLiteStore) -> None:
    submit(store, "q1", now=T0)
    running(store, "r1", now=T0 + 1)
    running(store, "done", now=T0 + 2)
    store.finish(lease(store, "done", "w1"), TaskStatus.SUCCEEDED, None, None, T0 + 3)

    queued = store.recover(T0 + 10)

    assert [task_id for task_id, _, _ in queued] == ["q1", "r1"]  # oldest first, ids only
    assert store.get_task("r1").status is TaskStatus.QUEUED
    assert store.get_task("r1").owner is None
    assert store.events("r1")[-1].data == {"reason": "runtime restarted", "owner": "w1"}
    assert store.get_task("done").status is TaskStatus.SUCCEEDED
    assert store.count_tasks(TaskStatus.RUNNING) == 0


def test_schema_version_is_stored(store: SQLiteStore) -> None:
    conn = sqlite3.connect(store.path)
    try:
        (value,) = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    finally:
        conn.close()
    assert int(value) == SCHEMA_VERSION


def test_reopening_keeps_everything(tmp_path: Path) -> None:
    first = open_store(tmp_path)
    running(first, "t1")
    first.record_step(lease(first, "t1", "w1"), "a", b"A", {"t1/a": b"blob"}, T0 + 1)
    submit(first, "t2", idempotency_key="k")
    first.close()

    second = open_store(tmp_path)
    try:
        assert second.get_task("t1").status is TaskStatus.RUNNING
        assert kinds(second, "t1") == ["submitted", "started", "step"]
        assert second.read_blob("t1/a") == b"blob"
        _, created = second.create_task("t3", SubmitRequest(workflow="wf", idempotency_key="k"), T0)
        assert not created
        assert second.append_event("t1", "x", {}, T0 + 2) == 4
        second.release_owner("w1", T0 + 3)
        (claim,) = second.claim(["t1"], "w2", LEASE_S, T0 + 4)
        assert claim.steps == {"a": b"A"}
    finally:
        second.close()


def test_newer_schema_version_is_refused(tmp_path: Path) -> None:
    open_store(tmp_path).close()
    conn = sqlite3.connect(tmp_path / "data" / "raysquad.db")
    with conn:
        conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    conn.close()

    with pytest.raises(StoreError, match="newer"):
        open_store(tmp_path)
