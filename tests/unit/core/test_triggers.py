"""Topic patterns, filters and routing (runtime/core/triggers.py, runtime/events/bus.py's ``routes``)."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from runtime import Agent, Context, on_event, workflow
from runtime.authoring.catalog import Catalog
from runtime.core.config import WebhookTarget
from runtime.core.errors import InputTooLarge, InvalidEventData, InvalidTopic
from runtime.core.models import Route, TopicEvent
from runtime.core.triggers import check_topic, topic_matches, where_matches
from runtime.events.bus import new_event, routes, wants


@pytest.mark.parametrize(("pattern", "topic", "matched"), [
    ("docs.new", "docs.new", True),
    ("docs.new", "docs.newer", False),
    ("docs.*", "docs.new", True),
    ("docs.*", "docs", False),
    ("docs.*", "docs.new.pdf", False),
    ("docs.**", "docs", True),
    ("docs.**", "docs.new.pdf", True),
    ("**", "anything.at.all", True),
    ("*.push", "repo.push", True),
    ("*.push", "repo.pushed", False),
    ("repo.**.done", "repo.done", True),
    ("repo.**.done", "repo.a.b.done", True),
    ("repo.**.done", "repo.a.b", False),
    ("a-b.c_d", "a-b.c_d", True),
])
def test_topic_patterns(pattern: str, topic: str, matched: bool) -> None:
    assert topic_matches(pattern, topic) is matched


@pytest.mark.parametrize("topic", ["", "docs.", ".docs", "docs..new", "docs new", "docs.*",
                                   "é.x", "x" * 201])
def test_bad_topics_are_refused(topic: str) -> None:
    with pytest.raises(InvalidTopic):
        check_topic(topic)


@pytest.mark.parametrize("pattern", ["docs.***", "docs.n*", "", "docs..*"])
def test_bad_patterns_are_refused_when_declared(pattern: str) -> None:
    with pytest.raises(InvalidTopic):
        on_event(pattern)


def test_where_filters() -> None:
    data = {"repo": {"branch": "main"}, "lang": "en"}
    assert where_matches(None, data)
    assert where_matches({"lang": "en", "repo.branch": "main"}, data)
    assert not where_matches({"repo.branch": "dev"}, data)
    assert not where_matches({"repo.missing": 1}, data)
    assert not where_matches({"lang": "en"}, ["not", "a", "mapping"])
    assert where_matches(lambda d: d["lang"] == "en", data)


class In(BaseModel):
    n: int = 0


@workflow(triggers=[on_event("docs.*", where={"lang": "en"}), on_event("docs.**")])
async def twice_subscribed(ctx: Context, inp: In) -> int:
    return inp.n


@workflow(triggers=[on_event("edits.made", debounce_s=2.0)])
async def debounced(ctx: Context, inp: In) -> int:
    return inp.n


@workflow(triggers=[on_event("x.y", where=lambda d: 1 / 0 > 0)])
async def broken_filter(ctx: Context, inp: In) -> int:
    return inp.n


class Watcher(Agent):
    role = "watcher"
    subscribes = ["edits.*", "docs.new"]


def catalog() -> Catalog:
    return Catalog(workflows={w.name: w for w in (twice_subscribed, debounced, broken_filter)},
                   agents={"watcher": Watcher})


def event(topic: str, data: object = None, key: str | None = None) -> TopicEvent:
    return TopicEvent(id="e", topic=topic, data=data or {}, key=key, created_at=0.0)


def test_routes_go_to_each_subscriber_once() -> None:
    assert routes(event("docs.new", {"lang": "fr"}), catalog(), 100.0) == [
        Route("workflow:twice_subscribed", "", 100.0), Route("agent:watcher", "", 100.0)]
    assert routes(event("edits.made", key="k"), catalog(), 100.0) == [
        Route("workflow:debounced", "k", 102.0, supersede=True), Route("agent:watcher", "k", 100.0)]
    assert routes(event("x.y"), catalog(), 100.0) == []  # a filter that raises matches nothing
    assert routes(event("nobody.cares"), catalog(), 100.0) == []
    assert catalog().subscribers() == ["workflow:twice_subscribed", "workflow:debounced",
                                       "workflow:broken_filter", "agent:watcher"]


def test_a_webhook_target_gets_its_own_tenants_events_or_every_tenants_if_it_says_so() -> None:
    secret = "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo="
    outbound = {"a": WebhookTarget(url="https://a.example/", topics=("task.failed",), secret=secret,
                                   tenant="tenant-a"),
                "all": WebhookTarget(url="https://all.example/", topics=("task.*",), secret=secret,
                                     tenant="*")}
    failed_b = TopicEvent(id="e", topic="task.failed", data={}, tenant="tenant-b", created_at=0.0)
    failed_a = failed_b.model_copy(update={"tenant": "tenant-a"})
    assert [r.target for r in routes(failed_b, catalog(), 0.0, outbound)] == ["webhook:all"]
    assert [r.target for r in routes(failed_a, catalog(), 0.0, outbound)] == ["webhook:a",
                                                                              "webhook:all"]
    # A task's end is announced when any tenant's target wants it, not only the default tenant's.
    assert wants("task.failed", catalog(), {"a": outbound["a"]})
    assert not wants("task.succeeded", catalog(), {"a": outbound["a"]})


def test_a_new_event_is_checked_before_it_is_kept() -> None:
    ok = new_event("docs.new", {"a": 1}, key=None, event_id=None, tenant="t", source="client",
                   max_bytes=100)
    assert ok.id and ok.topic == "docs.new" and ok.tenant == "t"
    with pytest.raises(InvalidTopic):
        new_event("docs..new", {}, key=None, event_id=None, tenant="t", source="c", max_bytes=100)
    with pytest.raises(InvalidEventData, match="JSON|NaN|Out of range"):
        new_event("d", {"a": float("inf")}, key=None, event_id=None, tenant="t", source="c",
                  max_bytes=100)
    with pytest.raises(InputTooLarge, match="event's data"):
        new_event("d", "x" * 200, key=None, event_id=None, tenant="t", source="c", max_bytes=100)
    with pytest.raises(InvalidEventData, match="id"):
        new_event("d", {}, key=None, event_id="x" * 201, tenant="t", source="c", max_bytes=100)
    for reserved in ("task.failed", "task", "sys.x"):  # the runtime's own topics
        with pytest.raises(InvalidTopic, match="runtime's own"):
            new_event(reserved, {}, key=None, event_id=None, tenant="t", source="c", max_bytes=100)
    assert new_event("task.failed", {}, key=None, event_id=None, tenant="t", source="task:x",
                     max_bytes=100, runtime=True).topic == "task.failed"
    assert new_event("tasks.new", {}, key=None, event_id=None, tenant="t", source="c",
                     max_bytes=100).topic == "tasks.new"


def test_a_workflow_trigger_must_be_on_event() -> None:
    with pytest.raises(TypeError, match="on_event"):
        workflow(triggers=["docs.new"])  # type: ignore[list-item]  # a bare topic: what this test checks
