"""Topic events end to end on a real runtime: publish (from a client, from a workflow, from an
agent), routing by pattern and filter, one task per event and workflow however often it is
delivered, agent subscriptions that learn of redeliveries, scale to zero, delegation between
roles, and the three kinds of flow control (with the timings they show)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from runtime import Runtime, TaskStatus
from tests.conftest import wait_for
from tests.faults import Database, query

APPS = ["tests.apps.events"]
FAST = {"event_poll_s": 0.1, "event_retry_s": 1.0}


def notes(directory: Path, name: str) -> list[dict[str, Any]]:
    path = directory / name
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def lines(directory: Path, name: str) -> int:
    path = directory / name
    return len(path.read_text().splitlines()) if path.exists() else 0


def started(rt: Runtime, event_id: str, target: str) -> str | None:
    """The task a delivery of the event started, once it has."""
    _, deliveries = rt.client().event_report(event_id)
    return next((d["task_id"] for d in deliveries if d["target"] == target and d["task_id"]), None)


def test_one_event_delivered_twice_starts_each_workflow_once(make_runtime, side_dir: Path) -> None:
    rt = make_runtime(APPS, **FAST)
    client = rt.client()
    data = {"dir": str(side_dir), "url": "a.html", "lang": "en"}

    first = client.publish("docs.new", data, id="evt-1")
    again = client.publish("docs.new", {**data, "url": "changed"}, id="evt-1")  # a retried publish
    client.publish("docs.new", {"dir": str(side_dir), "url": "b.html", "lang": "fr"}, id="evt-2")

    assert again == first  # the same event, as first kept
    task_id = wait_for(lambda: started(rt, "evt-1", "workflow:index_doc"), timeout_s=60,
                       what="the event to start index_doc")
    assert client.wait(task_id, timeout_s=60).status is TaskStatus.SUCCEEDED
    wait_for(lambda: lines(side_dir, "indexer") >= 2, timeout_s=60,
             what="the indexer to get both events")
    # The handler's side effect comes before its reply, and the delivery is marked handled once
    # the reply is in: wait for the report to say so.
    wanted = {"workflow:index_doc": "started", "agent:indexer": "handled"}
    wait_for(lambda: {d["target"]: d["outcome"] for d in client.event_report("evt-1")[1]} == wanted,
             timeout_s=30, what="the event's report to show both deliveries done")
    assert lines(side_dir, "index_doc.a.html") == 1
    assert not (side_dir / "index_doc.b.html").exists()  # where={"lang": "en"} left it out
    tasks = client.list(workflow="index_doc")
    assert [t.idempotency_key for t in tasks] == ["event:evt-1:index_doc"]


def database(rt: Runtime) -> Database:
    if rt.settings.store == "postgres" and rt.settings.postgres_url is not None:
        return rt.settings.postgres_url
    return rt.settings.database_path


def test_a_redelivered_event_starts_nothing_new(make_runtime, side_dir: Path) -> None:
    """The delivery of an event whose task started comes due again, as when the bus dies between
    the submit and finishing the delivery: the bus delivers it again and finds the task by its
    idempotency key."""
    rt = make_runtime(APPS, **FAST)
    client = rt.client()
    client.publish("digest.daily", {"dir": str(side_dir), "url": "d"}, id="evt-d")
    task_id = wait_for(lambda: started(rt, "evt-d", "workflow:digest"), timeout_s=60,
                       what="the digest task")
    assert client.wait(task_id, timeout_s=60).status is TaskStatus.SUCCEEDED

    query(database(rt), "UPDATE deliveries SET done_at = NULL, outcome = NULL, task_id = NULL, "
                        "due_at = 0 WHERE target = 'workflow:digest'")

    wait_for(lambda: client.event_report("evt-d")[1][0]["outcome"] == "started before",
             timeout_s=30, what="the delivery to go out again")
    (delivery,) = client.event_report("evt-d")[1]
    assert (delivery["attempts"], delivery["task_id"]) == (2, task_id)
    assert [t.id for t in client.list(workflow="digest")] == [task_id]
    assert lines(side_dir, "digest.d") == 1


def test_an_agent_subscription_is_told_of_a_redelivery(make_runtime, side_dir: Path) -> None:
    rt = make_runtime(APPS, **FAST)
    rt.client().publish("docs.updated", {"dir": str(side_dir), "url": "fail-first.html"},
                        id="evt-f")

    wait_for(lambda: len(notes(side_dir, "indexer")) >= 2, timeout_s=60,
             what="the failed delivery to come again")
    seen = notes(side_dir, "indexer")
    assert [(n["attempt"], n["redelivered"]) for n in seen] == [(1, False), (2, True)]
    wait_for(lambda: rt.client().event_report("evt-f")[1][0]["outcome"] == "handled",
             timeout_s=30, what="the second delivery to be handled")
    # Scale to zero: the role had no replica until its first event came.
    assert rt.catalog.agents["indexer"].min_replicas == 0


def test_events_published_by_a_workflow_and_an_agent_start_work(make_runtime,
                                                                side_dir: Path) -> None:
    rt = make_runtime(APPS, **FAST)
    client = rt.client()
    task = client.submit("announce", {"dir": str(side_dir), "url": "publish.html"})
    event_id = client.wait(task.id, timeout_s=60).output
    assert event_id == f"{task.id}/publish:docs.new"

    # announce -> docs.new -> index_doc, and the indexer agent -> digest.indexed -> digest
    wait_for(lambda: lines(side_dir, "index_doc.publish.html") == 1
             and lines(side_dir, "digest.publish.html") == 1, timeout_s=90,
             what="both published events to start their workflows")
    sources = {e.topic: e.source for e in client.topic_events()}
    assert sources == {"docs.new": f"task:{task.id}", "digest.indexed": "agent:indexer"}


def test_an_agent_delegates_to_another_role(make_runtime) -> None:
    rt = make_runtime(APPS, **FAST)
    assert rt.client().result(rt.client().submit("ask_chief", {"word": "hi"}).id,
                              timeout_s=90) == "chief heard: HI"


def test_debounce_starts_one_run_after_the_key_goes_quiet(make_runtime, side_dir: Path) -> None:
    """Three edits of one key 0.2 s apart, debounce 1 s: one run, with the last edit's data, about
    1 s after the last edit (event_poll_s 0.1 s). Another key runs on its own."""
    rt = make_runtime(APPS, **FAST)
    client = rt.client()
    for n in range(1, 4):
        client.publish("edits.made", {"dir": str(side_dir), "url": "page", "n": n}, key="page")
        last = time.time()
        time.sleep(0.2)  # the events' own spacing, not a wait for the system
    client.publish("edits.made", {"dir": str(side_dir), "url": "other", "n": 9}, key="other")

    wait_for(lambda: len(notes(side_dir, "debounced")) == 2, timeout_s=60,
             what="one run per key")
    runs = {r["url"]: r for r in notes(side_dir, "debounced")}
    assert runs["page"]["n"] == 3
    delay = runs["page"]["at"] - last
    assert 0.9 <= delay < 10, delay  # not before the debounce; the upper bound is only a sanity check
    assert len(client.list(workflow="debounced")) == 2


def test_one_per_key_holds_an_event_while_the_key_has_a_task(make_runtime, side_dir: Path) -> None:
    rt = make_runtime(APPS, **FAST)
    client = rt.client()
    client.publish("jobs.queued", {"dir": str(side_dir), "url": "j", "n": 1, "gate": "g1"}, key="j")
    wait_for(lambda: len(notes(side_dir, "one_at_a_time")) == 1, timeout_s=60,
             what="the first job to start")
    client.publish("jobs.queued", {"dir": str(side_dir), "url": "j", "n": 2}, key="j")
    client.publish("jobs.queued", {"dir": str(side_dir), "url": "k", "n": 3}, key="k")

    wait_for(lambda: any(n["n"] == 3 and n["phase"] == "end"
                         for n in notes(side_dir, "one_at_a_time")),
             timeout_s=60, what="the other key's job to run meanwhile")
    assert not any(n["n"] == 2 for n in notes(side_dir, "one_at_a_time"))  # held behind job 1
    (side_dir / "g1").touch()
    wait_for(lambda: any(n["n"] == 2 and n["phase"] == "end"
                         for n in notes(side_dir, "one_at_a_time")),
             timeout_s=60, what="the held job to run after the first")
    order = [(n["n"], n["phase"]) for n in notes(side_dir, "one_at_a_time") if n["n"] != 3]
    assert order == [(1, "start"), (1, "end"), (2, "start"), (2, "end")]


def test_cancel_running_cancels_the_key_task_for_a_newer_event(make_runtime,
                                                                side_dir: Path) -> None:
    rt = make_runtime(APPS, **FAST)
    client = rt.client()
    client.publish("prices.changed", {"dir": str(side_dir), "url": "p", "n": 1, "gate": "g1"},
                   key="p", id="price-1")
    first = wait_for(lambda: started(rt, "price-1", "workflow:latest_only"), timeout_s=60,
                     what="the first run to start")
    wait_for(lambda: len(notes(side_dir, "latest_only")) == 1, timeout_s=60,
             what="the first run to reach its gate")

    client.publish("prices.changed", {"dir": str(side_dir), "url": "p", "n": 2}, key="p",
                   id="price-2")
    second = wait_for(lambda: started(rt, "price-2", "workflow:latest_only"), timeout_s=60,
                      what="the second run to start")
    assert client.wait(second, timeout_s=60).output == 2
    (side_dir / "g1").touch()  # the first run reaches its next step boundary and stops there
    assert client.wait(first, timeout_s=60).status is TaskStatus.CANCELLED
    assert not any(n["n"] == 1 and n["phase"] == "end" for n in notes(side_dir, "latest_only"))


def test_a_bad_event_is_refused_before_anything_is_kept(make_runtime) -> None:
    import pytest

    from runtime.core.errors import InputTooLarge, InvalidEventData, InvalidTopic

    rt = make_runtime(APPS, max_input_bytes=1000)
    client = rt.client()
    with pytest.raises(InvalidTopic):
        client.publish("docs..new", {})
    with pytest.raises(InvalidEventData):
        client.publish("docs.new", {"x": float("nan")})
    with pytest.raises(InputTooLarge):
        client.publish("docs.new", {"x": "y" * 2000})
    assert client.topic_events() == []


def _delivery(rt: Runtime, event_id: str, target: str) -> dict[str, Any]:
    _, deliveries = rt.client().event_report(event_id)
    return next((d for d in deliveries if d["target"] == target), {})


def _looked_at_again(rt: Runtime, event_id: str, target: str, since: float, times: int) -> bool:
    """The bus has taken the delivery up again ``times`` times since ``since`` (each look pushes
    its due time ``event_retry_s`` out)."""
    due = _delivery(rt, event_id, target).get("due_at") or 0.0
    return bool(due > since + times * FAST["event_retry_s"])


def test_an_agent_delivery_is_not_copied_while_its_message_waits_or_runs(make_runtime,
                                                                         side_dir: Path) -> None:
    """A handler slower than event_retry_s, and a second event its full mailbox cannot take: the
    bus puts both off, neither copied nor counted, and neither gives up (2 attempts allowed)."""
    rt = make_runtime(APPS, **FAST, event_max_attempts=2, mailbox_capacity_bytes=12_000)
    client = rt.client()
    pad = "p" * 3000  # two of these messages do not fit the mailbox's bytes
    client.publish("docs.slow", {"dir": str(side_dir), "url": "slow", "gate": "g1", "pad": pad},
                   id="slow")
    wait_for(lambda: notes(side_dir, "indexer"), timeout_s=90, what="the slow handler to start")
    client.publish("docs.held", {"dir": str(side_dir), "url": "held", "pad": pad}, id="held")
    since = time.time()

    wait_for(lambda: _looked_at_again(rt, "slow", "agent:indexer", since, 3)
             and _looked_at_again(rt, "held", "agent:indexer", since, 3),
             timeout_s=60, what="the bus to look at both deliveries again, three times")
    assert [n["event"] for n in notes(side_dir, "indexer")] == ["slow"]  # no copy
    assert _delivery(rt, "slow", "agent:indexer")["outcome"] is None  # not given up
    assert _delivery(rt, "held", "agent:indexer")["outcome"] is None

    (side_dir / "g1").touch()
    for event_id in ("slow", "held"):
        def handled_now(e: str = event_id) -> bool:
            return _delivery(rt, e, "agent:indexer")["outcome"] == "handled"
        wait_for(handled_now, timeout_s=60, what=f"{event_id} to be handled")
    handled = notes(side_dir, "indexer")
    assert sorted(n["event"] for n in handled) == ["held", "slow"]
    assert [n["attempt"] for n in handled] == [1, 1]


def test_a_database_error_leaves_a_delivery_due_never_refused(make_runtime, side_dir: Path) -> None:
    """PostgreSQL refuses every new task for a while (a real error of the database, as in an
    outage): the event's delivery is tried again, not finished as refused, and starts its task
    once the database takes writes again."""
    import psycopg

    rt = make_runtime(APPS, store="postgres", **FAST)
    db = database(rt)
    assert isinstance(db, str)

    def execute(sql: str) -> None:
        with psycopg.connect(db, autocommit=True) as conn:
            conn.execute(sql)

    execute("CREATE TABLE outage (since DOUBLE PRECISION); CREATE SEQUENCE outage_hits; "
            "CREATE FUNCTION refuse_tasks() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "IF EXISTS (SELECT 1 FROM outage) THEN PERFORM nextval('outage_hits'); "
            "RAISE EXCEPTION 'injected outage'; END IF; RETURN NEW; END $$; "
            "CREATE TRIGGER tasks_outage BEFORE INSERT ON tasks FOR EACH ROW "
            "EXECUTE FUNCTION refuse_tasks(); INSERT INTO outage VALUES (0)")
    client = rt.client()
    client.publish("digest.outage", {"dir": str(side_dir), "url": "o"}, id="evt-outage")

    hits = "SELECT last_value, is_called FROM outage_hits"
    wait_for(lambda: query(db, hits)[0] >= (2, True), timeout_s=60,
             what="the bus to try the submit twice")
    assert _delivery(rt, "evt-outage", "workflow:digest")["outcome"] is None

    execute("DELETE FROM outage")
    task_id = wait_for(lambda: started(rt, "evt-outage", "workflow:digest"), timeout_s=60,
                       what="the task, once the database is back")
    assert client.wait(task_id, timeout_s=60).status is TaskStatus.SUCCEEDED
    assert _delivery(rt, "evt-outage", "workflow:digest")["outcome"] == "started"


def test_events_past_their_retention_are_forgotten_once_delivered(make_runtime,
                                                                  side_dir: Path) -> None:
    rt = make_runtime(APPS, **FAST, event_retention_s=2.0)
    client = rt.client()
    client.publish("notes.nobody", {"n": 1}, id="unheard")
    client.publish("docs.slow", {"dir": str(side_dir), "url": "slow", "gate": "g1"}, id="held")

    def kept() -> set[str]:
        return {e.id for e in client.topic_events(tenant="default", limit=100)}

    wait_for(lambda: "unheard" not in kept(), timeout_s=60, what="the old event to be forgotten")
    assert "held" in kept()  # its delivery has not ended: kept past its retention
    (side_dir / "g1").touch()
    wait_for(lambda: "held" not in kept(), timeout_s=60, what="the delivered event to be forgotten")
