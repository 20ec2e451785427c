"""Traces: a submit makes one trace from the submit through the task's run and every one of its
steps, a new one whatever the caller sends: a valid ``traceparent`` of the caller's is a link of
the submit span, never its parent (the shared server exports spans to a JSON-lines file)."""

from __future__ import annotations

import json
import secrets
from typing import Any

from tests.conftest import wait_for
from tests.e2e.live import Api, SharedServer


def all_spans(server: SharedServer) -> list[dict[str, Any]]:
    if not server.spans.exists():
        return []
    return [json.loads(line) for line in server.spans.read_text().splitlines() if line.strip()]


def spans_of(server: SharedServer, trace_id: str) -> list[dict[str, Any]]:
    return [s for s in all_spans(server) if s["trace_id"] == trace_id]


def submit_span(server: SharedServer, task_id: str) -> dict[str, Any] | None:
    """The submit span of ``task_id``'s trace (found through its task span)."""
    spans = all_spans(server)
    task = next((s for s in spans if s["name"].startswith("task ")
                 and s["attributes"].get("raysquad.task_id") == task_id), None)
    return None if task is None else next(
        (s for s in spans if s["span_id"] == task["parent_id"]), None)


def test_one_trace_from_the_submit_through_every_step(api: Api,
                                                      shared_server: SharedServer) -> None:
    trace_id, caller_span = secrets.token_hex(16), secrets.token_hex(8)
    client = api.client("key-a")
    r = client.post("/v1/tasks", json={"workflow": "five_steps",
                                       "input": {"dir": str(api.dir), "steps": 3}},
                    headers={"traceparent": f"00-{trace_id}-{caller_span}-01"})
    assert r.status_code == 202
    task_id = r.json()["id"]
    wait_for(lambda: client.get(f"/v1/tasks/{task_id}").json()["status"] == "succeeded",
             timeout_s=90, what="the task")

    submit = wait_for(lambda: submit_span(shared_server, task_id), timeout_s=30,
                      what="the task's submit span")
    assert submit["trace_id"] != trace_id and submit["parent_id"] is None  # a trace of its own
    assert submit["links"] == [{"trace_id": trace_id, "span_id": caller_span}]  # the caller's
    spans = wait_for(lambda: (s := spans_of(shared_server, submit["trace_id"])) and
                     len([x for x in s if x["name"].startswith("step ")]) == 3 and s,
                     timeout_s=30, what="the task's spans")
    assert not spans_of(shared_server, trace_id)  # nothing joined the caller's trace
    task = next(s for s in spans if s["name"] == "task five_steps")
    assert task["parent_id"] == submit["span_id"]
    assert task["attributes"]["raysquad.task_id"] == task_id
    assert task["attributes"]["raysquad.status"] == "succeeded"
    steps = sorted((s for s in spans if s["name"].startswith("step ")), key=lambda s: s["start"])
    assert [s["name"] for s in steps] == ["step s1", "step s2", "step s3"]
    assert all(s["parent_id"] == task["span_id"] for s in steps)
    assert all(task["start"] <= s["start"] and s["end"] <= task["end"] for s in steps)


def test_a_malformed_traceparent_is_ignored(api: Api, shared_server: SharedServer) -> None:
    client = api.client("key-a")
    for bad in (f"00-{'0' * 32}-{secrets.token_hex(8)}-01", "00-XYZ-1-01",
                f"ff-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01", "x" * 200):
        r = client.post("/v1/tasks", json={"workflow": "echo", "input": {"text": "t"}},
                        headers={"traceparent": bad})
        assert r.status_code == 202, r.text
        submit = wait_for(lambda r=r: submit_span(shared_server, r.json()["id"]), timeout_s=60,
                          what="the task's submit span")
        assert submit["parent_id"] is None and submit["links"] == [], (bad, submit)
