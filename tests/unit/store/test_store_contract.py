"""The Store contract: one suite, run on SQLite and on PostgreSQL alike (both real; see
tests/unit/conftest.py). Task lifecycle, leases and fencing, steps, blobs, events, signals, dead
letters, lists, recovery and the schema. What only one backend has is in test_store_backends.py."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest

from runtime.core.config import Settings
from runtime.core.errors import (
    DeadLetterNotFound,
    InvalidName,
    InvalidTransition,
    LeaseLost,
    SignalQuotaExceeded,
    StoreError,
    TaskNotFound,
    TenantQuotaExceeded,
)
from runtime.core.models import DeadLetter, Lease, SubmitRequest, TaskStatus
from runtime.store import postgres as postgres_store
from runtime.store import sqlite as sqlite_store
from runtime.store.base import REPLAY_HOLD_S, SCHEMA_VERSION
from runtime.store.postgres import PostgresStore
from runtime.store.service import admit
from tests.unit.stores import (
    LEASE_S,
    T0,
    AnyStore,
    Backend,
    kinds,
    lease,
    running,
    submit,
    tokens,
)

# -- create -----------------------------------------------------------------------------------------


def test_create_task(store: AnyStore) -> None:
    task = submit(store, "t1", workflow="research", input={"q": "x"}, priority=7, tenant="acme")

    assert task.status is TaskStatus.QUEUED
    assert (task.workflow, task.input, task.priority, task.tenant) == ("research", {"q": "x"}, 7, "acme")
    assert task.created_at == task.updated_at == T0
    assert task.runs == 0 and task.owner is None and task.output is None
    assert store.get_task("t1") == task
    assert kinds(store, "t1") == ["submitted"]


def test_get_unknown_task(store: AnyStore) -> None:
    with pytest.raises(TaskNotFound):
        store.get_task("nope")
    with pytest.raises(TaskNotFound):
        store.events("nope")


def test_idempotency_key_is_per_tenant(store: AnyStore) -> None:
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


def test_tasks_without_key_are_never_deduplicated(store: AnyStore) -> None:
    submit(store, "t1")
    submit(store, "t2")
    assert store.count_tasks(TaskStatus.QUEUED) == 2


def test_the_same_submit_again_is_the_same_task(store: AnyStore) -> None:
    first = submit(store, "t1", idempotency_key="k")

    again, created = store.create_task("t1", SubmitRequest(workflow="other"), T0 + 5)

    assert created and again == first  # its first reply was lost: the task as stored
    assert kinds(store, "t1") == ["submitted"]


def test_an_item_the_database_refuses_fails_alone_in_its_batch(store: AnyStore) -> None:
    """A value the database cannot hold (PostgreSQL: NUL in text) fails only its own item: the
    group commit's other submits are created. (Names are checked before; this is the backstop.)"""
    items = [("t1", SubmitRequest(workflow="wf")),
             ("t2", SubmitRequest.model_construct(workflow="wf", input={}, priority=0,
                                                   idempotency_key="bad\x00", tenant="default",
                                                   trace_parent=None)),
             ("t3", SubmitRequest(workflow="wf"))]
    results = store.create_tasks(items, T0)
    assert isinstance(results[0], tuple) and isinstance(results[2], tuple)
    if isinstance(store, PostgresStore):
        assert isinstance(results[1], StoreError)
        assert [t.id for t in store.list_tasks()] == ["t3", "t1"]
    else:  # SQLite keeps NUL
        assert isinstance(results[1], tuple)


def test_create_tasks_in_one_batch(store: AnyStore) -> None:
    results = store.create_tasks([
        ("a", SubmitRequest(workflow="wf", idempotency_key="k")),
        ("b", SubmitRequest(workflow="wf", idempotency_key="k")),  # the key "a" took in this batch
        ("c", SubmitRequest(workflow="wf", input={"text": "\u00e9t\u00e9 \u2713"}, priority=3)),
        ("a", SubmitRequest(workflow="wf")),  # "a" again
    ], T0)

    assert [(task.id, created) for task, created in results] == [
        ("a", True), ("a", False), ("c", True), ("a", True)]
    assert store.count_tasks(TaskStatus.QUEUED) == 2
    assert store.get_task("c").input == {"text": "\u00e9t\u00e9 \u2713"}
    sizes = {t.id: t.input_bytes for t in store.list_tasks()}
    assert sizes == {"a": 2, "c": len(json.dumps({"text": "\u00e9t\u00e9 \u2713"}).encode())}
    assert store.create_tasks([], T0) == []


# -- claim, renew, leases ---------------------------------------------------------------------------


def test_claim_only_queued_tasks(store: AnyStore) -> None:
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


def test_claim_returns_recorded_steps_and_counts_runs(store: AnyStore) -> None:
    running(store, "t1")
    store.record_step(lease(store, "t1", "w1"), "a", b"out-a", {}, T0 + 1)
    store.record_step(lease(store, "t1", "w1"), "a#2", b"out-a2", {}, T0 + 2)
    store.release_owner("w1", T0 + 3)

    (claim,) = store.claim(["t1"], "w2", LEASE_S, T0 + 4)

    assert claim.steps == {"a": b"out-a", "a#2": b"out-a2"}
    assert claim.task.runs == 2
    assert claim.task.owner == "w2"
    assert claim.task.started_at == T0  # the first start is kept


def test_renew_extends_held_leases_and_reports_cancel(store: AnyStore) -> None:
    running(store, "t1")
    running(store, "t2")
    running(store, "other", owner="w2")
    store.request_cancel("t2", T0 + 1)

    held = store.renew("w1", tokens(store, "t1", "t2", "other", "missing"), LEASE_S, T0 + 10)

    assert held == {"t1": False, "t2": True}
    assert store.get_task("t1").lease_until == T0 + 10 + LEASE_S
    assert store.get_task("other").lease_until == T0 + LEASE_S


def test_expire_leases(store: AnyStore) -> None:
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


def test_release_owner(store: AnyStore) -> None:
    running(store, "t1", owner="dead")
    running(store, "t2", owner="dead")
    running(store, "t3", owner="alive")

    released = store.release_owner("dead", T0 + 1)

    assert sorted(t.id for t in released) == ["t1", "t2"]
    assert all(t.status is TaskStatus.QUEUED for t in released)
    assert store.get_task("t3").status is TaskStatus.RUNNING
    assert store.events("t1")[-1].data["reason"] == "worker lost"
    assert store.release_owner("dead", T0 + 2) == []


def test_a_pool_restart_releases_tasks_without_counting_a_crash(backend: Backend) -> None:
    store = backend.open(max_crashes=1)
    running(store, "t1")

    (task,) = store.release_owner("w1", T0 + 1, crashed=False)

    assert task.status is TaskStatus.QUEUED and task.crashes == 0
    assert store.events("t1")[-1].data == {"reason": "worker pool restarted", "owner": "w1"}
    store.claim(["t1"], "w2", LEASE_S, T0 + 2)
    assert store.release_owner("w2", T0 + 3) == []  # a crash, the first of one allowed
    assert store.get_task("t1").status is TaskStatus.FAILED


def test_check_lease(store: AnyStore) -> None:
    running(store, "t1")

    store.check_lease(lease(store, "t1", "w1"))
    with pytest.raises(LeaseLost):
        store.check_lease(lease(store, "t1", "w2"))
    with pytest.raises(LeaseLost):
        store.check_lease(Lease("t1", "w1", 2))  # a token the task has not reached
    with pytest.raises(TaskNotFound):
        store.check_lease(Lease("missing", "w1", 1))


def test_running_owners(store: AnyStore) -> None:
    assert store.running_owners() == []
    running(store, "t1", owner="w2")
    running(store, "t2", owner="w1")
    running(store, "t3", owner="w1")
    submit(store, "q")

    assert store.running_owners() == ["w1", "w2"]


# -- steps and blobs --------------------------------------------------------------------------------


def test_record_step_under_lease(store: AnyStore) -> None:
    running(store, "t1")

    assert store.record_step(lease(store, "t1", "w1"), "fetch", b"\x00bytes", {}, T0 + 1) is False
    step = store.events("t1")[-1]
    assert (step.kind, step.data) == ("step", {"key": "fetch", "bytes": 6, "blobs": []})

    store.request_cancel("t1", T0 + 2)
    assert store.record_step(lease(store, "t1", "w1"), "next", b"x", {}, T0 + 3) is True


def test_a_recorded_step_is_never_overwritten(store: AnyStore) -> None:
    running(store, "t1")
    store.record_step(lease(store, "t1", "w1"), "a", b"first", {}, T0 + 1)
    store.record_step(lease(store, "t1", "w1"), "a", b"again", {}, T0 + 2)  # a repeated call
    assert kinds(store, "t1").count("step") == 1
    store.release_owner("w1", T0 + 3)

    (claim,) = store.claim(["t1"], "w1", LEASE_S, T0 + 4)
    assert claim.steps == {"a": b"first"}


def test_a_stale_run_cannot_write_after_the_task_is_claimed_again(store: AnyStore) -> None:
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


def test_a_stale_finish_after_a_give_up_is_fenced_and_a_repeat_finish_is_not(
        backend: Backend) -> None:
    """The lease runs out, the task is given up (poison), then the slow first run finishes: its
    finish is refused (LeaseLost), not taken for a retransmission, and the task stays failed (it
    ran out of its tries; a retry runs it again from its checkpoints). The same finish sent twice
    by the run that holds the lease is answered both times."""
    store = backend.open(max_crashes=1)
    running(store, "t1")
    slow = lease(store, "t1", "w1")
    assert store.expire_leases(T0 + LEASE_S + 1) == []  # given up at once (max_crashes=1)
    assert store.get_task("t1").status is TaskStatus.FAILED
    with pytest.raises(LeaseLost):
        store.finish(slow, TaskStatus.SUCCEEDED, {"late": True}, None, T0 + LEASE_S + 2)
    failed = store.get_task("t1")
    assert failed.status is TaskStatus.FAILED and failed.output is None
    assert "given up" in (failed.error or "")

    store.retry("t1", T0 + LEASE_S + 3)
    (claim,) = store.claim(["t1"], "w2", LEASE_S, T0 + LEASE_S + 4)
    done = store.finish(claim.lease, TaskStatus.SUCCEEDED, 1, None, T0 + LEASE_S + 5)
    again = store.finish(claim.lease, TaskStatus.SUCCEEDED, 1, None, T0 + LEASE_S + 6)
    assert again == done and kinds(store, "t1").count("succeeded") == 1
    with pytest.raises(LeaseLost):  # the first run, later still: fenced
        store.finish(slow, TaskStatus.SUCCEEDED, None, None, T0 + LEASE_S + 7)


def test_a_task_that_keeps_killing_its_worker_fails_as_poison(backend: Backend) -> None:
    store = backend.open(max_crashes=2)
    running(store, "t1")
    assert [t.id for t in store.release_owner("w1", T0 + 1)] == ["t1"]  # crash 1: queued again
    store.claim(["t1"], "w2", LEASE_S, T0 + 2)
    assert store.release_owner("w2", T0 + 3) == []  # crash 2: given up
    task = store.get_task("t1")
    assert task.status is TaskStatus.FAILED and task.crashes == 2
    assert "given up after 2 failed attempt(s)" in (task.error or "")
    assert "worker lost" in (task.error or "")


def test_an_undecodable_task_is_abandoned_until_it_fails(backend: Backend) -> None:
    store = backend.open(max_crashes=2)
    running(store, "t1")
    assert store.abandon(lease(store, "t1", "w1"), "cannot read", T0 + 1).status is TaskStatus.QUEUED
    store.claim(["t1"], "w1", LEASE_S, T0 + 2)
    task = store.abandon(lease(store, "t1", "w1"), "cannot read", T0 + 3)
    assert task.status is TaskStatus.FAILED and "cannot read" in (task.error or "")


def test_record_step_with_a_wrong_owner_is_refused(store: AnyStore) -> None:
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


def test_blobs_written_and_read_back(store: AnyStore) -> None:
    running(store, "t1")
    big = bytes(range(256)) * 1000

    store.record_step(lease(store, "t1", "w1"), "big", b"pickled", {"t1/big": big, "t1/small": b"s"}, T0 + 1)

    assert store.read_blob("t1/big") == big
    assert store.read_blob("t1/small") == b"s"
    assert store.events("t1")[-1].data["blobs"] == ["t1/big", "t1/small"]
    with pytest.raises(StoreError):
        store.read_blob("t1/missing")


@pytest.mark.parametrize("key", ["../escape", "a/../../escape", "/etc/passwd", ".."])
def test_path_traversal_blob_key_is_refused(store: AnyStore, key: str) -> None:
    running(store, "t1")
    outside_before = set(store.blob_dir.parent.parent.rglob("*"))

    with pytest.raises(StoreError):
        store.record_step(lease(store, "t1", "w1"), "a", b"x", {key: b"evil"}, T0 + 1)
    with pytest.raises(StoreError):
        store.read_blob(key)

    assert set(store.blob_dir.parent.parent.rglob("*")) == outside_before
    assert kinds(store, "t1")[-1] == "started"  # nothing recorded


@pytest.mark.parametrize("key", [".", ""])
def test_blob_key_naming_the_blob_dir_is_refused(store: AnyStore, key: str) -> None:
    running(store, "t1")
    data_dir = store.blob_dir.parent
    before = set(data_dir.iterdir())

    try:
        with pytest.raises(StoreError):
            store.record_step(lease(store, "t1", "w1"), "a", b"x", {key: b"evil"}, T0 + 1)
    finally:
        assert set(data_dir.iterdir()) == before


# -- finish, cancel, retry --------------------------------------------------------------------------


def test_finish(store: AnyStore) -> None:
    running(store, "t1")

    task = store.finish(lease(store, "t1", "w1"), TaskStatus.SUCCEEDED, {"answer": [1, 2]}, None, T0 + 9)

    assert task.status is TaskStatus.SUCCEEDED
    assert task.output == {"answer": [1, 2]}
    assert task.finished_at == T0 + 9
    assert task.owner is None and task.lease_until is None
    assert store.events("t1")[-1].kind == "succeeded"
    with pytest.raises(LeaseLost):
        store.finish(Lease("t1", "w1", 2), TaskStatus.SUCCEEDED, None, None, T0 + 10)


def test_finish_failed_records_error_and_needs_the_lease(store: AnyStore) -> None:
    running(store, "t1")

    with pytest.raises(LeaseLost):
        store.finish(lease(store, "t1", "w2"), TaskStatus.FAILED, None, "boom", T0 + 1)
    with pytest.raises(ValueError):
        store.finish(lease(store, "t1", "w1"), TaskStatus.RUNNING, None, None, T0 + 1)

    task = store.finish(lease(store, "t1", "w1"), TaskStatus.FAILED, None, "boom", T0 + 2)
    assert (task.status, task.error, task.output) == (TaskStatus.FAILED, "boom", None)
    last = store.events("t1")[-1]
    assert (last.kind, last.data) == ("failed", {"error": "boom"})


def test_cancel_queued_task_at_once(store: AnyStore) -> None:
    submit(store, "t1")

    task = store.request_cancel("t1", T0 + 1)

    assert task.status is TaskStatus.CANCELLED
    assert task.finished_at == T0 + 1
    assert store.events("t1")[-1].data == {"while": "queued"}
    assert store.claim(["t1"], "w1", LEASE_S, T0 + 2) == []


def test_cancel_running_task_marks_it(store: AnyStore) -> None:
    running(store, "t1")

    task = store.request_cancel("t1", T0 + 1)

    assert task.status is TaskStatus.RUNNING
    assert task.cancel_requested
    assert kinds(store, "t1")[-1] == "cancel_requested"


@pytest.mark.parametrize("end", [TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.CANCELLED])
def test_cancel_ended_task_is_invalid(store: AnyStore, end: TaskStatus) -> None:
    running(store, "t1")
    store.finish(lease(store, "t1", "w1"), end, None, None, T0 + 1)

    with pytest.raises(InvalidTransition) as info:
        store.request_cancel("t1", T0 + 2)
    assert (info.value.status, info.value.operation) == (end.value, "cancel")


def test_retry_failed_task_keeps_steps(store: AnyStore) -> None:
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


def test_retry_cancelled_task(store: AnyStore) -> None:
    submit(store, "t1")
    store.request_cancel("t1", T0 + 1)

    assert store.retry("t1", T0 + 2).status is TaskStatus.QUEUED


@pytest.mark.parametrize("state", ["queued", "running", "succeeded"])
def test_retry_is_invalid_unless_failed_or_cancelled(store: AnyStore, state: str) -> None:
    if state == "queued":
        submit(store, "t1")
    else:
        running(store, "t1")
        if state == "succeeded":
            store.finish(lease(store, "t1", "w1"), TaskStatus.SUCCEEDED, 1, None, T0 + 1)

    with pytest.raises(InvalidTransition) as info:
        store.retry("t1", T0 + 2)
    assert (info.value.status, info.value.operation) == (state, "retry")


# -- signals ----------------------------------------------------------------------------------------


def test_signals_sent_before_the_wait_are_taken_oldest_first(store: AnyStore) -> None:
    submit(store, "t1")
    assert store.send_signal("t1", "approve", {"ok": True}, T0 + 1).status is TaskStatus.QUEUED
    (claim,) = store.claim(["t1"], "w1", LEASE_S, T0 + 2)
    store.send_signal("t1", "approve", {"ok": False}, T0 + 3)

    assert store.await_signal(claim.lease, "approve", "s1", None, T0 + 4) == ("signal", {"ok": True})
    assert store.await_signal(claim.lease, "approve", "s2", None, T0 + 5) == ("signal", {"ok": False})
    # the first wait sent again (its reply lost): its recorded outcome; nothing is taken twice
    assert store.await_signal(claim.lease, "approve", "s1", None, T0 + 6) == ("signal", {"ok": True})
    assert kinds(store, "t1") == ["submitted", "signal", "started", "signal", "step", "step"]
    store.release_owner("w1", T0 + 7)
    (again,) = store.claim(["t1"], "w2", LEASE_S, T0 + 8)
    assert set(again.steps) == {"s1", "s2"}


def test_signals_a_task_has_not_taken_are_bounded_in_number_and_bytes(store: AnyStore) -> None:
    submit(store, "t1")
    submit(store, "t2")
    limits = (3, 100)
    for i in range(3):  # kept although nobody waits for them, up to the bound
        store.send_signal("t1", "s", {"i": i}, T0 + i, limits)
    with pytest.raises(SignalQuotaExceeded, match="holds 3 signals not yet taken") as info:
        store.send_signal("t1", "other", None, T0 + 5, limits)
    assert info.value.retry_after_s > 0 and kinds(store, "t1").count("signal") == 3
    with pytest.raises(SignalQuotaExceeded, match="task_signal_bytes"):
        store.send_signal("t2", "s", "x" * 200, T0 + 5, limits)
    # A signal taken frees its room.
    (claim,) = store.claim(["t1"], "w1", LEASE_S, T0 + 6)
    store.await_signal(claim.lease, "s", "k1", None, T0 + 7)
    store.send_signal("t1", "other", None, T0 + 8, limits)
    # The signal the task waits for passes even when junk fills its room: it is taken at once.
    store.await_signal(claim.lease, "approve", "k2", None, T0 + 9)  # parks: waiting for approve
    with pytest.raises(SignalQuotaExceeded):
        store.send_signal("t1", "junk", None, T0 + 10, limits)
    assert store.send_signal("t1", "approve", 1, T0 + 11, limits).status is TaskStatus.QUEUED


@pytest.mark.parametrize("name", ["a\x00", "new\nline", "tab\t", "del\x7f"])
def test_a_signal_name_with_a_control_character_is_refused(store: AnyStore, name: str) -> None:
    submit(store, "t1")
    with pytest.raises(InvalidName, match="signal name"):
        store.send_signal("t1", name, None, T0 + 1)
    assert kinds(store, "t1") == ["submitted"]


def test_a_wait_without_a_signal_parks_the_task_until_it_comes(store: AnyStore) -> None:
    running(store, "t1")
    held = lease(store, "t1", "w1")

    assert store.await_signal(held, "go", "s1", T0 + 100, T0 + 1) == ("parked", None)

    task = store.get_task("t1")
    assert (task.status, task.owner, task.lease_until, task.waiting_for, task.wake_at) == (
        TaskStatus.WAITING, None, None, "go", T0 + 100)
    assert store.events("t1")[-1].data == {"signal": "go", "wake_at": T0 + 100}
    with pytest.raises(LeaseLost):  # parking gave the lease up
        store.record_step(held, "x", b"x", {}, T0 + 2)
    assert store.send_signal("t1", "other", 1, T0 + 3).status is TaskStatus.WAITING
    woken = store.send_signal("t1", "go", {"v": 1}, T0 + 4)
    assert (woken.status, woken.waiting_for, woken.wake_at) == (TaskStatus.QUEUED, None, None)
    last = store.events("t1")[-1]
    assert (last.kind, last.data) == ("requeued", {"reason": "signal go"})
    (claim,) = store.claim(["t1"], "w2", LEASE_S, T0 + 5)
    assert store.await_signal(claim.lease, "go", "s1", T0 + 100, T0 + 6) == ("signal", {"v": 1})


def test_a_wait_past_its_deadline_times_out(store: AnyStore) -> None:
    running(store, "t1")

    assert store.await_signal(lease(store, "t1", "w1"), "go", "s1", T0 + 10, T0 + 10) == ("timeout", None)
    last = store.events("t1")[-1]
    assert (last.kind, last.data["key"], last.data["blobs"]) == ("step", "s1", [])
    assert store.get_task("t1").status is TaskStatus.RUNNING
    with pytest.raises(LeaseLost):
        store.await_signal(lease(store, "t1", "w2"), "go", "s2", None, T0 + 11)


def test_wake_due_queues_waits_that_ran_out(store: AnyStore) -> None:
    for task_id, wake_at in (("t1", T0 + 10), ("t2", T0 + 20), ("t3", None)):
        running(store, task_id)
        store.await_signal(lease(store, task_id, "w1"), "go", "s", wake_at, T0 + 1)

    assert store.wake_due(T0 + 9) == []
    (woken,) = store.wake_due(T0 + 10)
    assert (woken.id, woken.status, woken.wake_at) == ("t1", TaskStatus.QUEUED, None)
    assert store.events("t1")[-1].data == {"reason": "signal wait timed out"}
    assert [t.id for t in store.wake_due(T0 + 1000)] == ["t2"]
    assert store.get_task("t3").status is TaskStatus.WAITING  # it waits for ever
    (claim,) = store.claim(["t1"], "w1", LEASE_S, T0 + 11)
    assert store.await_signal(claim.lease, "go", "s", T0 + 10, T0 + 11) == ("timeout", None)


def test_cancel_a_waiting_task_at_once(store: AnyStore) -> None:
    running(store, "t1")
    store.await_signal(lease(store, "t1", "w1"), "go", "s", T0 + 50, T0 + 1)

    task = store.request_cancel("t1", T0 + 2)

    assert (task.status, task.waiting_for, task.wake_at) == (TaskStatus.CANCELLED, None, None)
    assert store.events("t1")[-1].data == {"while": "waiting"}
    assert store.wake_due(T0 + 100) == []


def test_signals_to_ended_or_missing_tasks_are_refused(store: AnyStore) -> None:
    running(store, "t1")
    store.finish(lease(store, "t1", "w1"), TaskStatus.SUCCEEDED, None, None, T0 + 1)

    with pytest.raises(InvalidTransition) as info:
        store.send_signal("t1", "go", 1, T0 + 2)
    assert (info.value.status, info.value.operation) == ("succeeded", "signal 'go' to")
    with pytest.raises(TaskNotFound):
        store.send_signal("missing", "go", 1, T0 + 2)


# -- events -----------------------------------------------------------------------------------------


def test_events_are_numbered_per_task_and_paged_with_after(store: AnyStore) -> None:
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


def test_event_data_and_outputs_read_back_as_written(store: AnyStore) -> None:
    running(store, "t1")
    data = {"text": "\u00fcn\u00efcode \u2713 \"quoted\"", "n": 0.1, "list": [None, True, 2**53]}

    store.append_event("t1", "note", {**data, "when": datetime(2026, 1, 2, 3, 4, 5)}, T0 + 0.1)
    task = store.finish(lease(store, "t1", "w1"), TaskStatus.SUCCEEDED, data, None, T0 + 0.2)

    note = store.events("t1")[-2]
    assert note.data == {**data, "when": "2026-01-02 03:04:05"}  # what JSON cannot hold, as text
    assert note.at == T0 + 0.1
    assert task.output == store.get_task("t1").output == data
    assert task.finished_at == T0 + 0.2


# -- listing and counting ---------------------------------------------------------------------------


def test_list_tasks_filters_and_pages(store: AnyStore) -> None:
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


def test_lists_carry_no_inputs_only_their_size(store: AnyStore) -> None:
    submit(store, "big", input={"text": "x" * 100_000})
    (summary,) = store.list_tasks()
    assert summary.id == "big" and summary.input_bytes == len(json.dumps({"text": "x" * 100_000}))
    assert "input" not in type(summary).model_fields and "output" not in type(summary).model_fields


def test_pages_do_not_skip_tasks_created_in_the_same_instant(store: AnyStore) -> None:
    for i in range(5):
        submit(store, f"t{i}", now=T0, tenant="x")  # one clock reading for all: ids break the tie
    seen: list[str] = []
    before = None
    while page := store.list_tasks(tenant="x", limit=2, before=before):
        seen += [t.id for t in page]
        before = (page[-1].created_at, page[-1].id)
    assert sorted(seen) == [f"t{i}" for i in range(5)] and len(seen) == 5


def test_queued_load_and_index_read_no_inputs(store: AnyStore) -> None:
    submit(store, "a", tenant="x", input={"text": "x" * 1000})
    submit(store, "b", tenant="x", input={"text": "y" * 10})
    submit(store, "c", tenant="y", input={})
    running(store, "d")
    assert store.queued_load("x") == (2, len(json.dumps({"text": "x" * 1000})) + len(
        json.dumps({"text": "y" * 10})))
    assert store.queued_load("nobody") == (0, 0)
    assert [(i, p, t) for i, p, _, t in store.queued_index(10)] == [
        ("a", 0, "x"), ("b", 0, "x"), ("c", 0, "y")]


def test_a_tenant_past_its_queued_task_cap_is_refused_and_others_are_not(
        store: AnyStore, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, queue_capacity=100, tenant_queued_tasks=3)
    batch = [(f"a{i}", SubmitRequest(workflow="wf", tenant="a")) for i in range(5)]
    results = admit(store, settings, batch, T0)
    # A batch is admitted item by item, like the byte quota: the first three fit, the rest not.
    assert [isinstance(r, tuple) for r in results] == [True] * 3 + [False] * 2
    refused = results[3]
    assert isinstance(refused, TenantQuotaExceeded) and refused.limit_name == "tenant_queued_tasks"
    assert "'a' has 3 tasks queued, and the limit (tenant_queued_tasks) is 3" in str(refused)
    assert refused.retry_after_s > 0
    assert store.queued_load("a")[0] == 3
    # Another tenant still gets in; and once a's tasks leave the queue, a does again.
    assert isinstance(admit(store, settings, [("b0", SubmitRequest(workflow="wf", tenant="b"))],
                            T0)[0], tuple)
    store.claim(["a0"], "w1", LEASE_S, T0)
    again = admit(store, settings, [("a9", SubmitRequest(workflow="wf", tenant="a"))], T0)
    assert isinstance(again[0], tuple)


def test_count_tasks(store: AnyStore) -> None:
    running(store, "t1")
    submit(store, "t2")
    submit(store, "t3")
    store.request_cancel("t3", T0)

    counts = {s: store.count_tasks(s) for s in TaskStatus}

    assert counts == {TaskStatus.QUEUED: 1, TaskStatus.RUNNING: 1, TaskStatus.WAITING: 0,
                      TaskStatus.SUCCEEDED: 0, TaskStatus.FAILED: 0, TaskStatus.CANCELLED: 1}


def test_ids_sort_bytewise_in_lists_and_pages(store: AnyStore) -> None:
    ids = ["B", "a", "_", "a-1", "a1", "Z", "\u00e9"]
    for task_id in ids:
        submit(store, task_id, now=T0)

    newest_first = sorted(ids, key=str.encode, reverse=True)
    assert [t.id for t in store.list_tasks()] == newest_first
    seen: list[str] = []
    before = None
    while page := store.list_tasks(limit=3, before=before):
        seen += [t.id for t in page]
        before = (page[-1].created_at, page[-1].id)
    assert seen == newest_first


# -- dead letters -----------------------------------------------------------------------------------


def letter(letter_id: str, created_at: float, **fields: object) -> DeadLetter:
    return DeadLetter.model_validate({
        "id": letter_id, "tool": "http_fetch", "args": {"url": "http://example.com"},
        "error": "timed out", "error_type": "UpstreamError", "attempts": 3, "created_at": created_at,
        **fields})


def test_dead_letters_are_kept_and_listed_newest_first(store: AnyStore) -> None:
    store.add_dead_letter(letter("d1", T0, tenant="a"))
    store.add_dead_letter(letter("d2", T0 + 1, tool="sql_query", tenant="b", task_id="t1", step_key="k"))
    store.add_dead_letter(letter("d3", T0 + 2, tenant="a"))

    assert [d.id for d in store.dead_letters()] == ["d3", "d2", "d1"]
    assert [d.id for d in store.dead_letters(tenant="a")] == ["d3", "d1"]
    assert [d.id for d in store.dead_letters(tool="sql_query")] == ["d2"]
    assert [d.id for d in store.dead_letters(status="dead", tool="sql_query", tenant="a")] == []
    assert [d.id for d in store.dead_letters(limit=1)] == ["d3"]
    assert store.get_dead_letter("d2") == letter(
        "d2", T0 + 1, tool="sql_query", tenant="b", task_id="t1", step_key="k")
    with pytest.raises(DeadLetterNotFound):
        store.get_dead_letter("nope")


def test_a_replay_marks_the_letter_or_keeps_its_new_error(store: AnyStore) -> None:
    store.add_dead_letter(letter("d1", T0))

    failed = store.replayed("d1", False, None, "still down", 2, T0 + 1)
    assert (failed.status, failed.error, failed.attempts, failed.replayed_at) == (
        "dead", "still down", 5, None)
    done = store.replayed("d1", True, {"rows": [1]}, "", 1, T0 + 2)
    assert (done.status, done.result, done.attempts, done.replayed_at) == (
        "replayed", {"rows": [1]}, 6, T0 + 2)
    assert [d.id for d in store.dead_letters(status="replayed")] == ["d1"]
    with pytest.raises(DeadLetterNotFound):
        store.replayed("nope", True, 1, "", 1, T0)


def test_a_replay_resumes_the_task_that_failed_at_the_call(store: AnyStore) -> None:
    running(store, "t1")
    store.record_step(lease(store, "t1", "w1"), "a", b"A", {}, T0 + 1)
    store.finish(lease(store, "t1", "w1"), TaskStatus.FAILED, None, "tool failed", T0 + 2)
    store.add_dead_letter(letter("d1", T0 + 2, task_id="t1", step_key="call"))

    store.replayed("d1", True, "ok", "", 1, T0 + 3, step_output=b"result")

    task = store.get_task("t1")
    assert (task.status, task.error) == (TaskStatus.QUEUED, None)
    last = store.events("t1")[-1]
    assert (last.kind, last.data) == ("retried", {"by": "replay", "dead_letter": "d1", "step": "call"})
    (claim,) = store.claim(["t1"], "w2", LEASE_S, T0 + 4)
    assert claim.steps == {"a": b"A", "call": b"result"}
    # a task that went on without the call is left be
    store.add_dead_letter(letter("d2", T0 + 5, task_id="t1", step_key="other"))
    store.replayed("d2", True, "ok", "", 1, T0 + 6, step_output=b"late")
    assert kinds(store, "t1")[-1] == "started"


# -- recovery and the file --------------------------------------------------------------------------


def test_recover_requeues_running_tasks(store: AnyStore) -> None:
    submit(store, "q1", now=T0)
    running(store, "r1", now=T0 + 1)
    running(store, "done", now=T0 + 2)
    store.finish(lease(store, "done", "w1"), TaskStatus.SUCCEEDED, None, None, T0 + 3)

    queued = store.recover(T0 + 10)

    assert [task_id for task_id, _, _, _ in queued] == ["q1", "r1"]  # oldest first, ids only
    assert store.get_task("r1").status is TaskStatus.QUEUED
    assert store.get_task("r1").owner is None
    assert store.events("r1")[-1].data == {"reason": "runtime restarted", "owner": "w1"}
    assert store.get_task("done").status is TaskStatus.SUCCEEDED
    assert store.count_tasks(TaskStatus.RUNNING) == 0


def test_schema_version_is_stored(backend: Backend, store: AnyStore) -> None:
    rows = backend.query("SELECT value FROM meta WHERE key = 'schema_version'")
    assert rows == [(str(SCHEMA_VERSION),)]


def test_of_concurrent_replays_of_a_letter_one_takes_it(store: AnyStore) -> None:
    store.add_dead_letter(letter("d1", T0))
    taken, ok = store.take_dead_letter("d1", T0 + 1)
    assert ok and taken.status == "replaying"
    again, second = store.take_dead_letter("d1", T0 + 2)
    assert not second and again.status == "replaying"  # the second replay runs nothing
    # A replay that failed leaves it dead, for a later one to take; one that succeeded, done.
    assert store.replayed("d1", False, None, "still down", 1, T0 + 3).status == "dead"
    assert store.take_dead_letter("d1", T0 + 4)[1]
    store.replayed("d1", True, 1, "", 1, T0 + 5)
    assert not store.take_dead_letter("d1", T0 + 6)[1]
    # A replayer that died holds its letter only so long.
    store.add_dead_letter(letter("d2", T0))
    assert store.take_dead_letter("d2", T0 + 1)[1]
    assert not store.take_dead_letter("d2", T0 + REPLAY_HOLD_S)[1]
    assert store.take_dead_letter("d2", T0 + REPLAY_HOLD_S + 2)[1]
    with pytest.raises(DeadLetterNotFound):
        store.take_dead_letter("nope", T0)


def test_reopening_keeps_everything(backend: Backend) -> None:
    first = backend.open()
    running(first, "t1")
    first.record_step(lease(first, "t1", "w1"), "a", b"A", {"t1/a": b"blob"}, T0 + 1)
    submit(first, "t2", idempotency_key="k")
    first.close()

    second = backend.open()
    assert second.get_task("t1").status is TaskStatus.RUNNING
    assert kinds(second, "t1") == ["submitted", "started", "step"]
    assert second.read_blob("t1/a") == b"blob"
    _, created = second.create_task("t3", SubmitRequest(workflow="wf", idempotency_key="k"), T0)
    assert not created
    assert second.append_event("t1", "x", {}, T0 + 2) == 4
    second.release_owner("w1", T0 + 3)
    (claim,) = second.claim(["t1"], "w2", LEASE_S, T0 + 4)
    assert claim.steps == {"a": b"A"}


def test_newer_schema_version_is_refused(backend: Backend) -> None:
    backend.open().close()
    backend.query(f"UPDATE meta SET value = '{SCHEMA_VERSION + 1}' WHERE key = 'schema_version'")

    with pytest.raises(StoreError, match="newer"):
        backend.open()


def test_a_database_of_an_earlier_version_is_brought_up_to_date(
        backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    """A database made by version 10 (before finished_run) is migrated when opened: a task it
    finished answers its own finish sent again, and new tasks run as before."""
    module = sqlite_store if backend.name == "sqlite" else postgres_store
    with monkeypatch.context() as old:
        old.setattr(module, "SCHEMA_VERSION", 10)
        old.setattr(module, "_MIGRATIONS", {v: m for v, m in module._MIGRATIONS.items() if v <= 10})
        first = backend.open()
        first.close()
    # A task as that version's submit, claim and finish left it (written as SQL: this version's code
    # reads and writes columns that version did not have).
    backend.query("INSERT INTO tasks (id, workflow, input, status, priority, tenant, runs, "
                  f"created_at, updated_at, output) VALUES ('t1', 'wf', '{{}}', 'succeeded', 0, "
                  f"'default', 1, {T0}, {T0}, '1')")
    held = Lease("t1", "w1", 1)
    assert backend.query("SELECT value FROM meta WHERE key = 'schema_version'") == [("10",)]

    second = backend.open()
    assert backend.query("SELECT value FROM meta WHERE key = 'schema_version'") == [
        (str(SCHEMA_VERSION),)]
    assert second.finish(held, TaskStatus.SUCCEEDED, 1, None, T0 + 2).output == 1
    running(second, "t2")
    second.finish(lease(second, "t2", "w1"), TaskStatus.SUCCEEDED, 2, None, T0 + 3)


# -- batched writes -----------------------------------------------------------------------------------


def test_apply_commits_each_write_and_answers_a_refused_one_alone(store: AnyStore) -> None:
    running(store, "t1")
    running(store, "t2")
    running(store, "t3")
    stale = Lease("t2", "w1", 99)  # not t2's run: its writes are refused, the others' are not

    results = store.apply([
        ("record_step", {"lease": lease(store, "t1", "w1"), "key": "a", "output": b"out-a",
                         "blobs": {}, "elapsed_s": 0.5}),
        ("record_step", {"lease": stale, "key": "a", "output": b"stale", "blobs": {}}),
        ("finish", {"lease": lease(store, "t3", "w1"), "status": TaskStatus.SUCCEEDED,
                    "output": {"ok": 1}, "error": None}),
        ("finish", {"lease": stale, "status": TaskStatus.SUCCEEDED, "output": None, "error": None}),
        ("record_step", {"lease": lease(store, "t1", "w1"), "key": "a", "output": b"again",
                         "blobs": {}}),
    ], T0 + 1)

    assert results[0] is False and results[4] is False
    assert isinstance(results[1], LeaseLost) and isinstance(results[3], LeaseLost)
    assert results[2].status is TaskStatus.SUCCEEDED and results[2].output == {"ok": 1}
    assert store.get_task("t2").status is TaskStatus.RUNNING
    assert kinds(store, "t1").count("step") == 1 and kinds(store, "t2").count("step") == 0
    assert store.get_task("t3").status is TaskStatus.SUCCEEDED
    store.release_owner("w1", T0 + 4)
    steps = {c.task.id: c.steps for c in store.claim(["t1", "t2"], "w2", LEASE_S, T0 + 5)}
    assert steps == {"t1": {"a": b"out-a"}, "t2": {}}  # the first record of a key wins


def test_apply_takes_only_the_writes_of_a_run(store: AnyStore) -> None:
    with pytest.raises(ValueError, match="not a write"):
        store.apply([("retry", {"task_id": "t1"})], T0)
