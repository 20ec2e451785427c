"""``task_stats``, the status page's numbers: a tenant's tasks by status and its finishes by time
bucket, on SQLite and on PostgreSQL alike (both real), each read off an index."""

from __future__ import annotations

import pytest

from runtime.core.models import TaskStatus
from runtime.store.base import MAX_STATS_BUCKETS, TaskStats
from tests.unit.stores import LEASE_S, T0, AnyStore, Backend, lease, submit


def ended(store: AnyStore, task_id: str, status: TaskStatus, at: float,
          tenant: str = "a") -> None:
    """A task of ``tenant`` submitted at T0, claimed and ended with ``status`` at ``at``."""
    submit(store, task_id, tenant=tenant)
    store.claim([task_id], "w1", LEASE_S, T0)
    store.finish(lease(store, task_id, "w1"), status, None,
                 None if status is TaskStatus.SUCCEEDED else "stopped", at)


def test_counts_every_status_of_the_tenant_alone_zeros_included(store: AnyStore) -> None:
    submit(store, "q1", tenant="a")
    submit(store, "q2", tenant="a")
    submit(store, "r1", tenant="a")
    store.claim(["r1"], "w1", LEASE_S, T0)
    ended(store, "s1", TaskStatus.SUCCEEDED, T0 + 5)
    ended(store, "f1", TaskStatus.FAILED, T0 + 6)
    submit(store, "b1", tenant="b")  # another tenant's: not counted
    ended(store, "b2", TaskStatus.SUCCEEDED, T0 + 5, tenant="b")

    stats = store.task_stats("a", T0, 60.0, T0 + 60)

    assert stats.counts == {TaskStatus.QUEUED: 2, TaskStatus.RUNNING: 1, TaskStatus.WAITING: 0,
                            TaskStatus.SUCCEEDED: 1, TaskStatus.FAILED: 1,
                            TaskStatus.CANCELLED: 0}
    assert list(stats.counts) == list(TaskStatus)
    empty = store.task_stats("nobody", T0, 60.0, T0 + 60)
    assert empty.counts == dict.fromkeys(TaskStatus, 0) and empty.finished == [0]


def test_no_tenant_counts_every_tenants_tasks(store: AnyStore) -> None:
    """``tenant=None``: the operator's view (``raysquad top``), every tenant's together."""
    submit(store, "q1", tenant="a")
    ended(store, "s1", TaskStatus.SUCCEEDED, T0 + 5)
    submit(store, "q2", tenant="b")
    ended(store, "s2", TaskStatus.FAILED, T0 + 15, tenant="b")

    stats = store.task_stats(None, T0, 10.0, T0 + 20)

    assert stats.counts == {TaskStatus.QUEUED: 2, TaskStatus.RUNNING: 0, TaskStatus.WAITING: 0,
                            TaskStatus.SUCCEEDED: 1, TaskStatus.FAILED: 1,
                            TaskStatus.CANCELLED: 0}
    assert stats.finished == [1, 1]
    assert store.task_stats("b", T0, 10.0, T0 + 20).finished == [0, 1]


def test_finishes_are_counted_in_their_buckets_oldest_first(store: AnyStore) -> None:
    ended(store, "early", TaskStatus.SUCCEEDED, T0 - 1)  # before ``since``: not counted
    ended(store, "a0", TaskStatus.SUCCEEDED, T0)  # on the first edge: the first bucket
    ended(store, "a1", TaskStatus.FAILED, T0 + 9.999)
    ended(store, "b0", TaskStatus.SUCCEEDED, T0 + 10)  # on an edge: the bucket it opens
    ended(store, "d0", TaskStatus.CANCELLED, T0 + 31)
    ended(store, "d1", TaskStatus.SUCCEEDED, T0 + 34.5)
    ended(store, "late", TaskStatus.SUCCEEDED, T0 + 60)  # past the last bucket: not counted
    ended(store, "other", TaskStatus.SUCCEEDED, T0 + 1, tenant="b")

    stats = store.task_stats("a", T0, 10.0, T0 + 35)

    assert stats == TaskStats(counts=stats.counts, since=T0, bucket_s=10.0,
                              finished=[2, 1, 0, 2], at=T0 + 35)
    assert stats.counts[TaskStatus.SUCCEEDED] == 5
    # Buckets reach ``now``: the last is partly over; none before ``since``, none after ``now``.
    assert store.task_stats("a", T0, 10.0, T0 + 40).finished == [2, 1, 0, 2]
    assert store.task_stats("a", T0, 10.0, T0 + 40.5).finished == [2, 1, 0, 2, 0]
    assert store.task_stats("a", T0, 10.0, T0).finished == []
    assert store.task_stats("a", T0 + 100, 10.0, T0).finished == []


def test_a_retried_task_is_not_finished_until_it_ends_again(store: AnyStore) -> None:
    ended(store, "t1", TaskStatus.FAILED, T0 + 1)
    assert store.task_stats("a", T0, 10.0, T0 + 10).finished == [1]

    store.retry("t1", T0 + 2)

    stats = store.task_stats("a", T0, 10.0, T0 + 10)
    assert stats.finished == [0] and stats.counts[TaskStatus.QUEUED] == 1


def test_too_many_buckets_or_no_width_is_refused(store: AnyStore) -> None:
    assert len(store.task_stats("a", T0, 1.0, T0 + MAX_STATS_BUCKETS).finished) == MAX_STATS_BUCKETS
    with pytest.raises(ValueError, match="the most is"):
        store.task_stats("a", T0, 1.0, T0 + MAX_STATS_BUCKETS + 0.5)
    with pytest.raises(ValueError, match="positive"):
        store.task_stats("a", T0, 0.0, T0 + 1)


def test_both_reads_are_off_an_index(backend: Backend, store: AnyStore) -> None:
    """Counts come off tasks_tenant_status (tenant, status, ...), finishes off the partial indexes
    that schema 14 adds, of ended tasks only: tasks_tenant_finished (tenant, finished_at) for a
    tenant, tasks_finished (finished_at) for every tenant. No read scans every task."""
    if backend.name == "postgres":
        indexes = {name: sql for name, sql in backend.query(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema()")}
        assert "(tenant, finished_at) WHERE (finished_at IS NOT NULL)" in indexes[
            "tasks_tenant_finished"]
        assert "(finished_at) WHERE (finished_at IS NOT NULL)" in indexes["tasks_finished"]
        return

    def plan(sql: str) -> str:
        return " ".join(str(row[-1]) for row in backend.query(f"EXPLAIN QUERY PLAN {sql}"))

    finishes = ("SELECT CAST((finished_at - 0) / 60 AS INTEGER) AS b, count(*) AS n FROM tasks "
                "WHERE {}finished_at >= 0 AND finished_at < 60 GROUP BY b")
    assert "tasks_tenant_status" in plan("SELECT status, count(*) AS n FROM tasks "
                                         "WHERE tenant = 'a' AND TRUE GROUP BY status")
    assert "tasks_tenant_finished" in plan(finishes.format("tenant = 'a' AND "))
    assert "tasks_finished" in plan(finishes.format(""))
