"""Traces: a submit with a caller's ``traceparent`` makes one trace from the submit through the
task's run and every one of its steps (the shared server exports spans to a JSON-lines file)."""

from __future__ import annotations

import json
import secrets
from typing import Any

from tests.conftest import wait_for
from tests.e2e.live import Api, SharedServer


def spans_of(server: SharedServer, trace_id: str) -> list[dict[str, Any]]:
    if not server.spans.exists():
        return []
    spans = [json.loads(line) for line in server.spans.read_text().splitlines() if line.strip()]
    return [s for s in spans if s["trace_id"] == trace_id]


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

    spans = wait_for(lambda: (s := spans_of(shared_server, trace_id)) and
                     any(x["name"] == "task five_steps" for x in s) and
                     len([x for x in s if x["name"].startswith("step ")]) == 3 and s,
                     timeout_s=30, what="the task's spans")
    by_name = {s["name"]: s for s in spans}
    submit, task = by_name["submit five_steps"], by_name["task five_steps"]
    assert submit["parent_id"] == caller_span  # the caller's span is the trace's root here
    assert task["parent_id"] == submit["span_id"]
    assert task["attributes"]["raysquad.task_id"] == task_id
    assert task["attributes"]["raysquad.status"] == "succeeded"
    steps = sorted((s for s in spans if s["name"].startswith("step ")), key=lambda s: s["start"])
    assert [s["name"] for s in steps] == ["step s1", "step s2", "step s3"]
    assert all(s["parent_id"] == task["span_id"] for s in steps)
    assert all(task["start"] <= s["start"] and s["end"] <= task["end"] for s in steps)
