"""The outbox (store/outbox.py) on SQLite and on PostgreSQL, both real: publish de-duplicated by id
per tenant, routing once, deliveries taken with their attempts counted and coming back when not
finished, deferral, supersede (debounce), the active tasks of a key (each per tenant), lists read
through an index, quotas and retention."""

from __future__ import annotations

import sqlite3

import pytest

from runtime.core.errors import EventQuotaExceeded
from runtime.core.models import Route, TaskStatus, TopicEvent
from runtime.store.outbox import page_sql
from tests.unit.stores import T0, AnyStore, SQLiteBackend, lease, running, submit

RETRY_S = 30.0


def event(event_id: str, topic: str = "docs.new", key: str | None = None, tenant: str = "default",
          **data: object) -> TopicEvent:
    return TopicEvent(id=event_id, topic=topic, key=key, data=data, tenant=tenant, created_at=T0)


def test_a_publish_sent_again_with_its_id_is_the_same_event(store: AnyStore) -> None:
    (first, new), = store.publish([event("e1", n=1)])
    (again, new_again), = store.publish([event("e1", n=2)])
    (other_tenant, new_other), = store.publish([event("e1", tenant="acme", n=3)])

    assert (new, new_again, new_other) == (True, False, True)
    assert again == first and again.data == {"n": 1} and first.seq > 0
    assert other_tenant.seq != first.seq and other_tenant.data == {"n": 3}
    assert [e.id for e in store.unrouted_events(10)] == ["e1", "e1"]


def test_an_event_is_routed_once_and_its_deliveries_come_due(store: AnyStore) -> None:
    (e, _), = store.publish([event("e1")])
    routes = [Route("workflow:index", "", T0), Route("agent:indexer", "", T0 + 5)]

    store.route_event(e.seq, routes, T0)
    store.route_event(e.seq, routes + [Route("workflow:other", "", T0)], T0)  # again: nothing

    assert store.unrouted_events(10) == []
    due = store.take_deliveries(T0, 10, RETRY_S)
    assert [(d.target, d.attempt, d.event.id) for d in due] == [("workflow:index", 1, "e1")]
    assert [d.target for d in store.take_deliveries(T0 + 5, 10, RETRY_S)] == ["agent:indexer"]


def test_a_delivery_not_finished_comes_back_as_a_redelivery(store: AnyStore) -> None:
    (e, _), = store.publish([event("e1")])
    store.route_event(e.seq, [Route("agent:indexer", "", T0)], T0)

    assert [d.attempt for d in store.take_deliveries(T0, 10, RETRY_S)] == [1]
    assert store.take_deliveries(T0 + 1, 10, RETRY_S) == []  # taken: not due again yet
    (again,) = store.take_deliveries(T0 + RETRY_S, 10, RETRY_S)
    assert again.attempt == 2

    assert store.finish_delivery(e.seq, "agent:indexer", T0 + 31, "handled")
    assert not store.finish_delivery(e.seq, "agent:indexer", T0 + 32, "handled")
    assert store.take_deliveries(T0 + 1000, 10, RETRY_S) == []
    report = store.event_deliveries("default", "e1")
    assert report is not None
    _, deliveries = report
    assert [(d["target"], d["attempts"], d["outcome"]) for d in deliveries] == [
        ("agent:indexer", 2, "handled")]


def test_a_deferred_delivery_waits_without_counting_an_attempt(store: AnyStore) -> None:
    (e, _), = store.publish([event("e1")])
    store.route_event(e.seq, [Route("workflow:index", "k", T0)], T0)
    store.take_deliveries(T0, 10, RETRY_S)

    store.defer_delivery(e.seq, "workflow:index", T0 + 2)

    assert store.take_deliveries(T0 + 1, 10, RETRY_S) == []
    assert [d.attempt for d in store.take_deliveries(T0 + 2, 10, RETRY_S)] == [1]


def test_a_superseding_route_ends_the_pending_deliveries_of_its_key(store: AnyStore) -> None:
    (e1, _), (e2, _), (e3, _) = store.publish([event("e1", key="a"), event("e2", key="a"),
                                                event("e3", key="b")])
    store.route_event(e1.seq, [Route("workflow:w", "a", T0 + 5, supersede=True)], T0)
    store.route_event(e3.seq, [Route("workflow:w", "b", T0 + 5, supersede=True)], T0)
    store.route_event(e2.seq, [Route("workflow:w", "a", T0 + 6, supersede=True)], T0 + 1)

    due = store.take_deliveries(T0 + 10, 10, RETRY_S)
    assert sorted(d.event.id for d in due) == ["e2", "e3"]
    report = store.event_deliveries("default", "e1")
    assert report is not None
    _, deliveries = report
    assert deliveries[0]["outcome"] == "superseded"


def test_the_active_tasks_of_a_key_are_those_not_ended(store: AnyStore) -> None:
    (e1, _), (e2, _) = store.publish([event("e1", key="a"), event("e2", key="a")])
    for e in (e1, e2):
        store.route_event(e.seq, [Route("workflow:w", "a", T0)], T0)
    submit(store, "t1")
    running(store, "t2")
    store.finish_delivery(e1.seq, "workflow:w", T0, "started", task_id="t1")
    store.finish_delivery(e2.seq, "workflow:w", T0, "started", task_id="t2")

    assert store.active_key_tasks("workflow:w", "default", "a") == ["t1", "t2"]
    store.finish(lease(store, "t2", "w1"), TaskStatus.SUCCEEDED, None, None, T0 + 1)
    assert store.active_key_tasks("workflow:w", "default", "a") == ["t1"]
    assert store.active_key_tasks("workflow:w", "default", "b") == []


def test_a_key_is_its_tenants_own(store: AnyStore) -> None:
    """Two tenants' events with one key (or none): neither supersedes the other's delivery, nor
    sees the other's task as active for the key."""
    (a1, _), (b1, _), (b2, _), (a_keyless, _), (b_keyless, _) = store.publish([
        event("a1", key="AAPL", tenant="a"), event("b1", key="AAPL", tenant="b"),
        event("b2", key="AAPL", tenant="b"), event("ak", tenant="a"), event("bk", tenant="b")])
    store.route_event(a1.seq, [Route("workflow:w", "AAPL", T0 + 5, supersede=True)], T0)
    store.route_event(a_keyless.seq, [Route("workflow:w", "", T0 + 5, supersede=True)], T0)
    store.route_event(b1.seq, [Route("workflow:w", "AAPL", T0 + 5, supersede=True)], T0)
    store.route_event(b_keyless.seq, [Route("workflow:w", "", T0 + 5, supersede=True)], T0)
    store.route_event(b2.seq, [Route("workflow:w", "AAPL", T0 + 6, supersede=True)], T0 + 1)

    due = store.take_deliveries(T0 + 10, 10, RETRY_S)
    assert sorted(d.event.id for d in due) == ["a1", "ak", "b2", "bk"]  # b1 alone superseded
    submit(store, "ta", tenant="a")
    store.finish_delivery(a1.seq, "workflow:w", T0, "started", task_id="ta")
    assert store.active_key_tasks("workflow:w", "a", "AAPL") == ["ta"]
    assert store.active_key_tasks("workflow:w", "b", "AAPL") == []


def test_events_are_listed_newest_first_by_topic_and_tenant(store: AnyStore) -> None:
    store.publish([event("e1"), event("e2", topic="repo.push"), event("e3"),
                   event("e4", tenant="acme")])

    assert [e.id for e in store.topic_events()] == ["e4", "e3", "e2", "e1"]
    assert [e.id for e in store.topic_events(topic="docs.new", tenant="default")] == ["e3", "e1"]
    first_page = store.topic_events(limit=2)
    assert [e.id for e in store.topic_events(before=first_page[-1].seq)] == ["e2", "e1"]
    assert store.event_deliveries("default", "missing") is None
    page = store.topic_events(tenant="default", limit=1)
    assert [e.id for e in page] == ["e3"]
    assert [e.id for e in store.topic_events(tenant="default", before=page[-1].seq)] == ["e2", "e1"]
    assert [e.id for e in store.topic_events(topic="repo.push", tenant="acme")] == []


@pytest.mark.parametrize(("topic", "before"), [(None, None), ("docs.new", None), (None, 99),
                                               ("docs.new", 99)])
def test_a_tenants_page_is_read_off_an_index_not_sorted(sqlite_backend: SQLiteBackend, topic: str | None,
                                                        before: int | None) -> None:
    sqlite_backend.open()
    sql, args = page_sql(topic, "acme", before)
    conn = sqlite3.connect(sqlite_backend.path)
    try:
        plan = " / ".join(r[-1] for r in conn.execute("EXPLAIN QUERY PLAN " + sql, (*args, 50)))
    finally:
        conn.close()
    assert "TEMP B-TREE" not in plan and "topic_events_tenant" in plan, plan


def test_a_tenant_keeps_events_up_to_its_quota(store: AnyStore) -> None:
    quota = (3, 10_000)
    store.publish([event("e1", tenant="a"), event("e2", tenant="a")], quota)
    store.publish([event("e2", tenant="a")], quota)  # kept before: not counted again
    store.publish([event("e3", tenant="a")], quota)
    with pytest.raises(EventQuotaExceeded, match="keeps 3 events"):
        store.publish([event("e4", tenant="a")], quota)
    store.publish([event("e4", tenant="b")], quota)  # another tenant's own quota
    with pytest.raises(EventQuotaExceeded, match="bytes"):
        store.publish([event("big", tenant="b", text="x" * 10_000)], quota)
    assert [e.id for e in store.topic_events(tenant="a")] == ["e3", "e2", "e1"]
    assert [e.id for e in store.topic_events(tenant="b")] == ["e4"]


def test_old_events_whose_deliveries_ended_are_forgotten(store: AnyStore) -> None:
    quota = (2, 10_000)
    (old, _), (pending, _) = store.publish([event("old", tenant="a"), event("pending", tenant="a")],
                                           quota)
    store.route_event(old.seq, [Route("workflow:w", "", T0)], T0)
    store.route_event(pending.seq, [Route("workflow:w", "", T0)], T0)
    store.finish_delivery(old.seq, "workflow:w", T0, "started")
    (new, _), = store.publish([TopicEvent(id="new", topic="docs.new", tenant="a", data={},
                                          created_at=T0 + 100)], (3, 10_000))

    assert store.prune_events(T0 + 50, 10) == 1  # not the one still pending, nor the new one
    assert [e.id for e in store.topic_events(tenant="a")] == ["new", "pending"]
    assert store.event_deliveries("a", "old") is None
    store.publish([event("again", tenant="a")], (3, 10_000))  # the forgotten one's room is free
    assert store.prune_events(T0 + 50, 10) == 0
