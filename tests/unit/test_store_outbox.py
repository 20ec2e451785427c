"""The outbox (store/outbox.py) on SQLite and on PostgreSQL, both real: publish de-duplicated by id
per tenant, routing once, deliveries taken with their attempts counted and coming back when not
finished, deferral, supersede (debounce), the active tasks of a key, lists."""

from __future__ import annotations

from runtime.models import Route, TaskStatus, TopicEvent
from tests.unit.stores import T0, AnyStore, lease, running, submit

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
    _, deliveries = store.event_deliveries("default", "e1")  # type: ignore[misc]
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
    _, deliveries = store.event_deliveries("default", "e1")  # type: ignore[misc]
    assert deliveries[0]["outcome"] == "superseded"


def test_the_active_tasks_of_a_key_are_those_not_ended(store: AnyStore) -> None:
    (e1, _), (e2, _) = store.publish([event("e1", key="a"), event("e2", key="a")])
    for e in (e1, e2):
        store.route_event(e.seq, [Route("workflow:w", "a", T0)], T0)
    submit(store, "t1")
    running(store, "t2")
    store.finish_delivery(e1.seq, "workflow:w", T0, "started", task_id="t1")
    store.finish_delivery(e2.seq, "workflow:w", T0, "started", task_id="t2")

    assert store.active_key_tasks("workflow:w", "a") == ["t1", "t2"]
    store.finish(lease(store, "t2", "w1"), TaskStatus.SUCCEEDED, None, None, T0 + 1)
    assert store.active_key_tasks("workflow:w", "a") == ["t1"]
    assert store.active_key_tasks("workflow:w", "b") == []


def test_events_are_listed_newest_first_by_topic_and_tenant(store: AnyStore) -> None:
    store.publish([event("e1"), event("e2", topic="repo.push"), event("e3"),
                   event("e4", tenant="acme")])

    assert [e.id for e in store.topic_events()] == ["e4", "e3", "e2", "e1"]
    assert [e.id for e in store.topic_events(topic="docs.new", tenant="default")] == ["e3", "e1"]
    first_page = store.topic_events(limit=2)
    assert [e.id for e in store.topic_events(before=first_page[-1].seq)] == ["e2", "e1"]
    assert store.event_deliveries("default", "missing") is None
