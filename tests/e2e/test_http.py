"""The HTTP API over real HTTP, against a `raysquad up` process started once for this module.

Every request goes through clients whose response hook fails the test on any 5xx: a client's
mistake is a 4xx with a message that names the problem, never a 500.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import httpx
import psutil

from tests.conftest import count_lines, wait_for
from tests.e2e.live import (
    MAX_BODY_BYTES,
    SERVER_PIDS,
    STREAM_MAX_S,
    TASK_TIMEOUT_S,
    Api,
)

# -- helpers ----------------------------------------------------------------------------------------

def assert_client_error(response: httpx.Response, status: int, *words: str) -> dict[str, Any]:
    """A 4xx (never a 5xx) with the JSON error body; its message names the problem (``words``)."""
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json"), response.headers
    error = response.json()["error"]
    assert isinstance(error["type"], str) and error["type"]
    for word in words:
        assert word in error["message"], (word, error)
    return error


def submit(client: httpx.Client, workflow: str, input: dict[str, Any] | None = None,
           **more: Any) -> dict[str, Any]:
    r = client.post("/v1/tasks", json={"workflow": workflow, "input": input or {}, **more})
    assert r.status_code == 202, r.text
    return r.json()


def get_task(client: httpx.Client, task_id: str) -> dict[str, Any]:
    r = client.get(f"/v1/tasks/{task_id}")
    assert r.status_code == 200, r.text
    return r.json()


def wait_status(client: httpx.Client, task_id: str, *statuses: str,
                timeout_s: float = TASK_TIMEOUT_S) -> dict[str, Any]:
    last: dict[str, Any] = {}

    def reached() -> bool:
        nonlocal last
        last = get_task(client, task_id)
        return last["status"] in statuses

    wait_for(reached, timeout_s=timeout_s, interval_s=0.1,
             what=f"task {task_id} to be {' or '.join(statuses)} (last: {last.get('status')})")
    return last


def at_gate(api: Api, task_id: str) -> None:
    wait_for(lambda: (api.dir / f"{task_id}.at_gate").exists(), timeout_s=TASK_TIMEOUT_S,
             what=f"task {task_id} to reach its gate")


def open_gate(api: Api, task_id: str) -> None:
    (api.dir / f"{task_id}.open").touch()


@dataclass
class Sse:
    id: str | None
    event: str
    data: dict[str, Any]


def read_sse(response: httpx.Response) -> Iterator[Sse]:
    """Parse text/event-stream: ``field: value`` lines, a blank line ends an event, ``:`` a comment."""
    fields: dict[str, str] = {}
    data: list[str] = []
    for line in response.iter_lines():
        if not line:
            if data:
                event = Sse(fields.get("id"), fields.get("event", "message"), json.loads("\n".join(data)))
                if event.event != "ping":
                    yield event
            fields, data = {}, []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            data.append(value)
        else:
            fields[name] = value


def stream_events(client: httpx.Client, task_id: str, headers: dict[str, str] | None = None,
                  params: dict[str, Any] | None = None) -> list[Sse]:
    """Every event of one events request, until the server closes the stream."""
    with client.stream("GET", f"/v1/tasks/{task_id}/events", headers=headers, params=params) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        return list(read_sse(r))


def list_all(client: httpx.Client, limit: int, **filters: str) -> list[dict[str, Any]]:
    """Follow ``next_cursor`` through every page; checks each page's size on the way."""
    items: list[dict[str, Any]] = []
    params: dict[str, Any] = {**filters, "limit": limit}
    while True:
        r = client.get("/v1/tasks", params=params)
        assert r.status_code == 200, r.text
        page = r.json()
        assert len(page["items"]) <= limit
        items += page["items"]
        if page["next_cursor"] is None:
            return items
        assert len(page["items"]) == limit, page
        params["cursor"] = page["next_cursor"]


# -- the lifecycle ----------------------------------------------------------------------------------

def test_submit_get_and_result_while_running_then_done(api: Api, a: httpx.Client) -> None:
    r = a.post("/v1/tasks", json={"workflow": "five_steps", "input": {"dir": str(api.dir), "gate_at": 2},
                                  "priority": 7})
    assert r.status_code == 202, r.text
    task = r.json()
    task_id = task["id"]
    assert len(task_id) == 32 and task["status"] == "queued" and task["priority"] == 7
    assert task["workflow"] == "five_steps" and task["input"]["gate_at"] == 2
    base = f"/v1/tasks/{task_id}"
    assert r.headers["location"] == base
    assert task["links"] == {"self": base, "result": f"{base}/result", "events": f"{base}/events",
                             "cancel": f"{base}/cancel", "retry": f"{base}/retry"}

    at_gate(api, task_id)
    running = get_task(a, task_id)
    assert running["status"] == "running" and running["runs"] == 1 and running["started_at"]
    r = a.get(f"{base}/result")
    assert r.status_code == 202, r.text
    assert r.json() == {"id": task_id, "status": "running", "output": None, "error": None}

    open_gate(api, task_id)
    wait_for(lambda: a.get(f"{base}/result").status_code == 200, timeout_s=TASK_TIMEOUT_S,
             what="the result to be ready")
    assert a.get(f"{base}/result").json() == {"id": task_id, "status": "succeeded",
                                              "output": {"done": 5}, "error": None}
    done = get_task(a, task_id)
    assert done["status"] == "succeeded" and done["output"] == {"done": 5}
    assert done["finished_at"] >= done["started_at"] >= done["created_at"]
    assert count_lines(api.dir / f"{task_id}.step1") == 1  # steps ran once each


def test_a_failed_tasks_result_is_409_with_its_error(api: Api, a: httpx.Client) -> None:
    task = submit(a, "flaky", {"dir": str(api.dir), "fail_times": 5, "attempts": 1})
    failed = wait_status(a, task["id"], "failed", "succeeded")
    assert failed["status"] == "failed"
    r = a.get(f"/v1/tasks/{task['id']}/result")
    assert r.status_code == 409, r.text
    body = r.json()
    assert body["status"] == "failed" and body["output"] is None
    assert "upstream down" in body["error"] and body["error"] == failed["error"]


def test_list_filters_by_status_and_workflow_with_pagination(api: Api, a: httpx.Client) -> None:
    ids = [submit(a, "echo", {"text": f"page {i}"})["id"] for i in range(5)]
    for task_id in ids:
        wait_status(a, task_id, "succeeded")
    gated = submit(a, "five_steps", {"dir": str(api.dir), "gate_at": 1})["id"]
    at_gate(api, gated)

    echoes = list_all(a, 2, workflow="echo", status="succeeded")
    assert all(t["workflow"] == "echo" and t["status"] == "succeeded" for t in echoes)
    assert len({t["id"] for t in echoes}) == len(echoes)  # no task on two pages
    assert [t["id"] for t in echoes[:5]] == ids[::-1]  # newest first
    assert [t["created_at"] for t in echoes] == sorted((t["created_at"] for t in echoes), reverse=True)

    running = {t["id"] for t in list_all(a, 500, status="running", workflow="five_steps")}
    assert gated in running
    assert gated not in {t["id"] for t in list_all(a, 500, status="succeeded")}
    assert not set(ids) & {t["id"] for t in list_all(a, 50, workflow="five_steps")}

    open_gate(api, gated)
    wait_status(a, gated, "succeeded")
    assert gated in {t["id"] for t in list_all(a, 500, status="succeeded", workflow="five_steps")}

    assert_client_error(a.get("/v1/tasks", params={"status": "sleeping"}), 422, "status")
    assert_client_error(a.get("/v1/tasks", params={"limit": 0}), 422, "limit")
    assert_client_error(a.get("/v1/tasks", params={"limit": 501}), 422, "limit")
    assert_client_error(a.get("/v1/tasks", params={"cursor": "not a cursor!"}), 422, "cursor")
    assert_client_error(a.get("/v1/tasks", params={"cursor": "bm90LWEtY3Vyc29y"}), 422, "cursor")


# -- events -------------------------------------------------------------------------------------------

def test_events_stream_live_until_the_task_ends_and_resume_after_last_event_id(
        api: Api, a: httpx.Client) -> None:
    task_id = submit(a, "five_steps", {"dir": str(api.dir), "gate_at": 3})["id"]
    events: list[Sse] = []
    with a.stream("GET", f"/v1/tasks/{task_id}/events") as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        for event in read_sse(r):  # ends when the server closes the stream
            events.append(event)
            if event.event == "step" and event.data["key"] == "s2":
                # The task is still running (parked at step 3): the stream is live, not a replay.
                assert get_task(a, task_id)["status"] == "running"
                open_gate(api, task_id)
    assert get_task(a, task_id)["status"] == "succeeded"

    kinds = [e.event for e in events]
    assert kinds[0] == "submitted" and kinds[-1] == "succeeded" and "started" in kinds
    assert [e.data["key"] for e in events if e.event == "step"] == ["s1", "s2", "s3", "s4", "s5"]
    assert [e.id for e in events] == [str(n) for n in range(1, len(events) + 1)]
    for e in events:
        assert e.data["seq"] == int(e.id or 0) and e.data["kind"] == e.event

    def after(n: int) -> list[tuple[str | None, str]]:
        return [(e.id, e.event) for e in events if int(e.id or 0) > n]

    middle = len(events) // 2
    resumed = stream_events(a, task_id, headers={"Last-Event-ID": str(middle)})
    assert [(e.id, e.event) for e in resumed] == after(middle)
    by_query = stream_events(a, task_id, params={"after": middle})
    assert [(e.id, e.event) for e in by_query] == after(middle)


def test_a_stream_resumed_after_an_ended_tasks_last_event_closes_at_once(a: httpx.Client) -> None:
    task_id = submit(a, "echo", {"text": "short"})["id"]
    wait_status(a, task_id, "succeeded")
    last = stream_events(a, task_id)[-1]
    assert last.event == "succeeded"
    started = time.monotonic()
    assert stream_events(a, task_id, headers={"Last-Event-ID": str(last.id)}) == []
    assert time.monotonic() - started < 5  # not a 10 s long poll for events that cannot come


# -- signals, cancel, retry, idempotency ---------------------------------------------------------

def test_a_signal_resumes_a_waiting_task(api: Api, a: httpx.Client) -> None:
    task_id = submit(a, "approval", {"dir": str(api.dir)})["id"]
    waiting = wait_status(a, task_id, "waiting")
    assert waiting["waiting_for"] == "approve"
    assert count_lines(api.dir / f"{task_id}.publish") == 0

    r = a.post(f"/v1/tasks/{task_id}/signals/approve", json={"by": "alice", "note": "ship it"})
    assert r.status_code == 202, r.text
    assert r.json()["id"] == task_id and r.json()["status"] in ("queued", "running", "succeeded")

    wait_status(a, task_id, "succeeded")
    result = a.get(f"/v1/tasks/{task_id}/result")
    assert result.status_code == 200
    assert result.json()["output"] == {"approved": True, "decision": {"by": "alice", "note": "ship it"}}
    assert count_lines(api.dir / f"{task_id}.draft") == 1
    assert count_lines(api.dir / f"{task_id}.publish") == 1
    assert_client_error(a.post(f"/v1/tasks/{task_id}/signals/approve", json=True), 409, "succeeded")


def test_signals_a_task_does_not_take_are_bounded_but_not_the_one_it_waits_for(
        api: Api, a: httpx.Client) -> None:
    task_id = submit(a, "approval", {"dir": str(api.dir)})["id"]
    wait_status(a, task_id, "waiting")
    for i in range(100):  # kept, though the task does not wait for them (the default bound)
        r = a.post(f"/v1/tasks/{task_id}/signals/other", json={"i": i})
        assert r.status_code == 202, r.text
    over = a.post(f"/v1/tasks/{task_id}/signals/other", json={"i": 100})
    assert_client_error(over, 429, "100 signals not yet taken", "task_pending_signals")
    assert int(over.headers["retry-after"]) >= 1
    r = a.post(f"/v1/tasks/{task_id}/signals/approve", json={"by": "bob", "note": "ok"})
    assert r.status_code == 202, r.text
    wait_status(a, task_id, "succeeded")


def test_cancel_a_running_task_stops_it_at_the_next_step(api: Api, a: httpx.Client) -> None:
    task_id = submit(a, "five_steps", {"dir": str(api.dir), "gate_at": 2})["id"]
    at_gate(api, task_id)
    r = a.post(f"/v1/tasks/{task_id}/cancel")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "running" and r.json()["cancel_requested"] is True

    open_gate(api, task_id)
    cancelled = wait_status(a, task_id, "cancelled", "succeeded")
    assert cancelled["status"] == "cancelled"
    assert count_lines(api.dir / f"{task_id}.step3") == 0  # stopped at the step boundary
    result = a.get(f"/v1/tasks/{task_id}/result")
    assert result.status_code == 409 and result.json()["status"] == "cancelled"
    assert_client_error(a.post(f"/v1/tasks/{task_id}/cancel"), 409, "cancel", "cancelled")


def test_cancel_a_waiting_task_ends_it_at_once(api: Api, a: httpx.Client) -> None:
    task_id = submit(a, "approval", {"dir": str(api.dir)})["id"]
    wait_status(a, task_id, "waiting")
    r = a.post(f"/v1/tasks/{task_id}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"


def test_retry_a_failed_task_from_its_checkpoint(api: Api, a: httpx.Client) -> None:
    task_id = submit(a, "flaky", {"dir": str(api.dir), "fail_times": 5, "attempts": 1})["id"]
    assert wait_status(a, task_id, "failed", "succeeded")["status"] == "failed"
    assert_client_error(a.post(f"/v1/tasks/{task_id}/cancel"), 409, "failed")

    (api.dir / f"{task_id}.heal").touch()
    r = a.post(f"/v1/tasks/{task_id}/retry")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "queued" and r.json()["error"] is None

    done = wait_status(a, task_id, "succeeded", "failed")
    assert done["status"] == "succeeded" and done["runs"] == 2
    assert a.get(f"/v1/tasks/{task_id}/result").json()["output"] == 2  # the flaky step's 2nd attempt
    assert count_lines(api.dir / f"{task_id}.before") == 1  # the recorded step did not run again
    assert_client_error(a.post(f"/v1/tasks/{task_id}/retry"), 409, "retry", "succeeded")


def test_the_same_idempotency_key_returns_the_first_task(a: httpx.Client, b: httpx.Client) -> None:
    key = f"order-{uuid.uuid4().hex}"
    body = {"workflow": "echo", "input": {"text": "once"}, "idempotency_key": key}
    first = a.post("/v1/tasks", json=body)
    assert first.status_code == 202, first.text
    again = a.post("/v1/tasks", json={**body, "input": {"text": "twice"}})
    assert again.status_code == 200, again.text
    assert again.json()["id"] == first.json()["id"] and again.json()["input"] == {"text": "once"}
    assert again.headers["location"] == first.headers["location"]
    # Keys are per tenant: the same key from another tenant is another task.
    other = b.post("/v1/tasks", json=body)
    assert other.status_code == 202 and other.json()["id"] != first.json()["id"]
    # The submit route renders its JSON itself: it must read exactly as TaskView on the task routes.
    done = wait_status(a, first.json()["id"], "succeeded")
    replay = a.post("/v1/tasks", json=body)
    assert replay.status_code == 200 and replay.json() == done
    assert list(first.json()) == list(done) and first.headers["content-type"] == "application/json"


# -- tenants and authentication -------------------------------------------------------------------

def test_another_tenants_task_does_not_exist(api: Api, a: httpx.Client, b: httpx.Client) -> None:
    task_id = submit(a, "approval", {"dir": str(api.dir)})["id"]
    wait_status(a, task_id, "waiting")
    unknown = assert_client_error(b.get(f"/v1/tasks/{'0' * 32}"), 404)
    base = f"/v1/tasks/{task_id}"
    for response in (b.get(base), b.get(f"{base}/result"), b.get(f"{base}/events"),
                     b.post(f"{base}/cancel"), b.post(f"{base}/retry"),
                     b.post(f"{base}/signals/approve", json={"by": "mallory"})):
        error = assert_client_error(response, 404, task_id)
        assert error["type"] == unknown["type"]  # the same answer as for a task that never existed
    assert task_id not in {t["id"] for t in list_all(b, 500)}
    assert task_id in {t["id"] for t in list_all(a, 500, status="waiting")}

    still = get_task(a, task_id)  # neither cancelled nor signalled by tenant-b
    assert still["status"] == "waiting" and not still["cancel_requested"]
    assert a.post(f"{base}/cancel").json()["status"] == "cancelled"
    kinds = [e.event for e in stream_events(a, task_id)]  # ends at once: the task has ended
    assert kinds[-1] == "cancelled" and "signal" not in kinds


def test_missing_or_wrong_api_key_is_401(api: Api) -> None:
    anonymous, wrong = api.client(), api.client("key-z")
    for client in (anonymous, wrong):
        for response in (client.get("/v1/tasks"), client.get("/v1/workflows"),
                         client.get(f"/v1/tasks/{'0' * 32}"),
                         client.post("/v1/tasks", json={"workflow": "echo"})):
            assert_client_error(response, 401, "API key", "Authorization: Bearer")
            assert response.headers["www-authenticate"] == "Bearer"
    basic = api.client()
    r = basic.get("/v1/tasks", headers={"Authorization": "Basic a2V5LWE6"})
    assert_client_error(r, 401, "API key")


# -- workflows, docs ------------------------------------------------------------------------------

def test_workflows_list_their_input_and_output_schemas(a: httpx.Client) -> None:
    r = a.get("/v1/workflows")
    assert r.status_code == 200
    workflows = {w["name"]: w for w in r.json()}
    assert {"echo", "five_steps", "flaky", "approval", "agent_once"} <= set(workflows)
    steps = workflows["five_steps"]
    assert steps["input_schema"]["type"] == "object" and steps["input_schema"]["required"] == ["dir"]
    assert set(steps["input_schema"]["properties"]) == {"dir", "steps", "gate_at", "sleep_s"}
    assert steps["output_schema"]["properties"]["done"]["type"] == "integer"
    assert workflows["echo"]["output_schema"] == {"type": "string"}
    assert all(isinstance(w["description"], str) for w in workflows.values())


def test_openapi_and_health_answer(api: Api) -> None:
    anonymous = api.client()
    spec = anonymous.get("/openapi.json")
    assert spec.status_code == 200
    paths = spec.json()["paths"]
    assert {"/v1/tasks", "/v1/tasks/{task_id}", "/v1/tasks/{task_id}/result",
            "/v1/tasks/{task_id}/events", "/v1/tasks/{task_id}/cancel", "/v1/tasks/{task_id}/retry",
            "/v1/tasks/{task_id}/signals/{name}", "/v1/workflows"} <= set(paths)
    assert "202" in paths["/v1/tasks"]["post"]["responses"]
    assert anonymous.get("/healthz").json() == {"status": "ok"}
    ready = anonymous.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"



def test_the_served_openapi_examples_fit_their_schemas(api: Api) -> None:
    import jsonschema

    doc = api.client().get("/openapi.json").json()
    wrong = []
    for path, operations in doc["paths"].items():
        for method, op in operations.items():
            places = [(p["name"], p["schema"], p) for p in op.get("parameters", [])]
            places += [("body", m.get("schema", {}), m)
                       for m in op.get("requestBody", {}).get("content", {}).values()]
            for name, schema, holder in places:
                if "example" in holder and not jsonschema.Draft202012Validator(
                        {**schema, "components": doc["components"]}).is_valid(holder["example"]):
                    wrong.append(f"{method.upper()} {path} {name}: {holder['example']!r}")
    assert not wrong, wrong


def test_a_405_lists_every_method_of_the_resource(a: httpx.Client) -> None:
    r = a.request("DELETE", "/v1/tasks")
    assert_client_error(r, 405)
    assert {m.strip() for m in r.headers["allow"].split(",")} == {"GET", "POST"}

# -- bad input ----------------------------------------------------------------------------------------

def test_malformed_json_is_400(a: httpx.Client) -> None:
    r = a.post("/v1/tasks", content=b'{"workflow": "echo", "input": ',
               headers={"Content-Type": "application/json"})
    assert_client_error(r, 400, "not valid JSON")
    r = a.post(f"/v1/tasks/{'0' * 32}/signals/approve", content=b"{nope",
               headers={"Content-Type": "application/json"})
    assert_client_error(r, 400, "not valid JSON")


def test_a_body_that_is_not_json_is_415(a: httpx.Client) -> None:
    r = a.post("/v1/tasks", content=b"workflow=echo",
               headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert_client_error(r, 415, "application/json", "application/x-www-form-urlencoded")
    r = a.post("/v1/tasks", content=b'{"workflow": "echo"}', headers={"Content-Type": "text/plain"})
    assert_client_error(r, 415, "text/plain")
    r = a.post("/v1/tasks", content=b'{"workflow": "echo"}')  # no content type at all
    assert_client_error(r, 415, "no content type")


def _too_big() -> bytes:
    return json.dumps({"workflow": "echo", "input": {"text": "x" * (MAX_BODY_BYTES + 1)}}).encode()


def test_a_body_over_the_limit_is_413(a: httpx.Client) -> None:
    r = a.post("/v1/tasks", content=_too_big(), headers={"Content-Type": "application/json"})
    assert_client_error(r, 413, str(MAX_BODY_BYTES))
    # The same body as a chunked upload that just fits is accepted: the limit counts bytes, not chunks.
    fits = json.dumps({"workflow": "echo", "input": {"text": "y" * (MAX_BODY_BYTES - 100)}}).encode()
    r = a.post("/v1/tasks", content=iter([fits[:30_000], fits[30_000:]]),
               headers={"Content-Type": "application/json"})
    assert r.status_code == 202, r.text


def test_a_chunked_body_over_the_limit_is_413(a: httpx.Client) -> None:
    body = _too_big()
    chunks = iter([body[i:i + 8192] for i in range(0, len(body), 8192)])  # no Content-Length
    r = a.post("/v1/tasks", content=chunks, headers={"Content-Type": "application/json"})
    assert "content-length" not in r.request.headers
    assert_client_error(r, 413, str(MAX_BODY_BYTES))


def test_schema_violations_are_422_with_field_paths(api: Api, a: httpx.Client) -> None:
    def problems(body: Any) -> tuple[str, list[Any]]:
        error = assert_client_error(a.post("/v1/tasks", json=body), 422)
        return error["message"], error["problems"]

    message, found = problems({"workflow": "echo", "priority": "high"})
    assert "body.priority" in message and found[0]["loc"] == ["body", "priority"]
    message, found = problems({"input": {}})
    assert "body.workflow: Field required" in message and found[0]["loc"] == ["body", "workflow"]
    message, found = problems({"workflow": "echo", "colour": "blue"})
    assert "body.colour: Extra inputs are not permitted" in message
    message, _ = problems({"workflow": "echo", "priority": 1001})
    assert "body.priority" in message and "1000" in message
    message, _ = problems({"workflow": "echo", "input": ["not", "an", "object"]})
    assert "body.input" in message
    message, _ = problems([{"workflow": "echo"}])
    assert message.startswith("body:")
    # The workflow's own input model: five_steps needs a dir, and steps is an int.
    message, found = problems({"workflow": "five_steps", "input": {"steps": "many"}})
    assert "invalid input for workflow 'five_steps'" in message
    assert "dir: Field required" in message
    # One shape for problems in every 422: the input's, as the body's.
    assert {"loc": ["input", "dir"], "msg": "Field required", "type": "missing"} in found
    assert any(p["loc"] == ["input", "steps"] and p["type"] == "int_parsing" for p in found)
    assert_client_error(a.post("/v1/tasks/x/signals/" + "n" * 201, json={}), 422, "path.name")


def test_control_characters_in_keys_and_names_are_422_and_commit_nothing(
        a: httpx.Client) -> None:
    """NUL (PostgreSQL cannot keep it in text; SQLite would) and the other control characters,
    in an idempotency key, a workflow name, a signal name: 422 naming the field, on either store."""
    before = len(list_all(a, 500))
    for key in ("a\u0000", "line\nbreak", "del\u007f"):
        r = a.post("/v1/tasks", json={"workflow": "echo", "idempotency_key": key})
        assert_client_error(r, 422, "body.idempotency_key", "control character")
    r = a.post("/v1/tasks", json={"workflow": "echo\u0000"})
    assert_client_error(r, 422, "body.workflow", "control character")
    # In a batch it is the batch's schema, like a key too long: the whole batch is 422.
    r = a.post("/v1/tasks:batch", json={"tasks": [{"workflow": "echo"},
                                                  {"workflow": "echo", "idempotency_key": "k\u0000"}]})
    assert_client_error(r, 422, "idempotency_key", "control character")
    assert len(list_all(a, 500)) == before
    task_id = submit(a, "echo", {"text": "signalled"})["id"]
    assert_client_error(a.post(f"/v1/tasks/{task_id}/signals/ok%00", json={}), 422,
                        "path.name", "control character")


def test_unknown_workflow_and_unknown_task_are_404(a: httpx.Client) -> None:
    assert_client_error(a.post("/v1/tasks", json={"workflow": "nope"}), 404,
                        "unknown workflow 'nope'", "echo", "five_steps")
    missing = "f" * 32
    for response in (a.get(f"/v1/tasks/{missing}"), a.get(f"/v1/tasks/{missing}/result"),
                     a.get(f"/v1/tasks/{missing}/events"), a.post(f"/v1/tasks/{missing}/cancel"),
                     a.post(f"/v1/tasks/{missing}/retry"),
                     a.post(f"/v1/tasks/{missing}/signals/approve", json={})):
        assert_client_error(response, 404, f"no task with id '{missing}'")


def test_a_bad_last_event_id_is_400(a: httpx.Client) -> None:
    # '²' passes str.isdigit() but not int(); it arrives as the latin-1 byte 0xb2.
    task_id = submit(a, "echo", {"text": "digits"})["id"]
    wait_status(a, task_id, "succeeded")
    for bad in (b"\xb2", b"seven", b"-1", str(2**63).encode()):
        r = a.get(f"/v1/tasks/{task_id}/events", headers={b"Last-Event-ID": bad})
        assert_client_error(r, 400, "Last-Event-ID")


def test_an_after_too_large_for_the_store_is_422(a: httpx.Client) -> None:
    # Past 2**63-1 SQLite overflowed inside the stream, after the 200: a broken chunked response.
    task_id = submit(a, "echo", {"text": "big"})["id"]
    wait_status(a, task_id, "succeeded")
    assert_client_error(a.get(f"/v1/tasks/{task_id}/events", params={"after": 2**63}), 422,
                        "query.after")


def test_nan_and_infinity_are_malformed_json(a: httpx.Client) -> None:
    # Python's json module accepts them; JSON (RFC 8259) does not, and they read back as null.
    for constant in (b"NaN", b"Infinity", b"-Infinity"):
        r = a.post("/v1/tasks", content=b'{"workflow": "echo", "input": {"n": %s}}' % constant,
                   headers={"Content-Type": "application/json"})
        assert_client_error(r, 400, "not valid JSON", constant.decode().lstrip("-"))


def test_a_lone_surrogate_is_422_and_stores_nothing(a: httpx.Client, b: httpx.Client) -> None:
    # Once stored, such a task could never be serialized back: every read of it, and every listing
    # that included it, was a 500.
    before = len(list_all(b, 500))
    r = b.post("/v1/tasks", content=b'{"workflow": "echo", "input": {"text": "\\ud800"}}',
               headers={"Content-Type": "application/json"})
    assert_client_error(r, 422, "body.input.text", "Unicode")
    r = a.post(f"/v1/tasks/{'0' * 32}/signals/approve", content=b'{"why": ["\\udfff"]}',
               headers={"Content-Type": "application/json"})
    assert_client_error(r, 422, "body.why.0")
    assert len(list_all(b, 500)) == before


def actor_process(api: Api, class_name: str) -> psutil.Process:
    """The process of the server's actor of this class (Ray titles it ``ray::<Class>``)."""
    tree = psutil.Process(SERVER_PIDS[api.url]).children(recursive=True)
    (proc,) = [p for p in tree if p.cmdline() and p.cmdline()[0].startswith(f"ray::{class_name}")]
    return proc


def test_readyz_names_what_is_down_and_submits_survive_a_restart(api: Api, a: httpx.Client) -> None:
    probe = httpx.Client(base_url=api.url, timeout=30)  # no 5xx hook: a 503 is what is expected
    host = actor_process(api, "ControlHost")  # the dispatcher, event bus, gates, pools, mailboxes
    host.suspend()  # SIGSTOP: alive to Ray, but it answers nothing
    try:
        down = wait_for(lambda: (r := probe.get("/readyz")).status_code == 503 and r, timeout_s=30,
                        what="/readyz to answer 503")
        assert {"dispatcher", "events", "gates"} <= set(down.json()["down"])
        assert down.headers["Retry-After"] and down.json()["parts"]["store"] == "ok"
        # Submits go to the Store: accepted while the control host is down, run once it is back.
        waiting = submit(a, "echo", {"text": "during"})
    finally:
        host.resume()
    wait_for(lambda: probe.get("/readyz").status_code == 200, timeout_s=30, what="ready again")

    store = actor_process(api, "StoreActor")
    store.kill()  # SIGKILL: Ray restarts it
    during = probe.post("/v1/tasks", json={"workflow": "echo", "input": {"text": "kill"}},
                        headers={"Authorization": a.headers["Authorization"]})
    assert during.status_code in (202, 503), during.text
    if during.status_code == 503:
        assert during.headers["Retry-After"]
    wait_for(lambda: probe.get("/readyz").status_code == 200, timeout_s=60, what="ready again")
    ids = [waiting["id"]] + ([during.json()["id"]] if during.status_code == 202 else [])
    for task_id in ids:
        assert wait_status(a, task_id, "succeeded")["status"] == "succeeded"



# -- hostile input ------------------------------------------------------------------------------------

def _tasks_of(client: httpx.Client) -> set[str]:
    return {t["id"] for t in list_all(client, 500)}


def test_a_number_beyond_a_double_is_422_and_commits_nothing(a: httpx.Client) -> None:
    before = _tasks_of(a)
    for number in (b"1e999", b"-1e400", b"[1, 2, 1E+999]"):
        r = a.post("/v1/tasks", content=b'{"workflow": "echo", "input": {"text": "x", "n": %s}}'
                   % number, headers={"Content-Type": "application/json"})
        assert_client_error(r, 422, "body.input.n", "out of range")
    assert _tasks_of(a) == before


def test_deep_nesting_is_422_with_json_and_commits_nothing(a: httpx.Client) -> None:
    before = _tasks_of(a)
    for depth in (70, 5_000, 100_000):  # past the limit of 64; past Python's recursion limit
        deep = b"[" * depth + b"]" * depth
        if len(deep) >= MAX_BODY_BYTES:
            r = a.post("/v1/tasks", content=deep, headers={"Content-Type": "application/json"})
            assert_client_error(r, 413)
            continue
        r = a.post("/v1/tasks", content=b'{"workflow": "echo", "input": {"text": "x", "n": %s}}'
                   % deep, headers={"Content-Type": "application/json"})
        assert_client_error(r, 422, "nested")
    assert _tasks_of(a) == before


def test_each_tenant_submits_only_within_its_priority_range(a: httpx.Client, b: httpx.Client) -> None:
    before = _tasks_of(a) | _tasks_of(b)
    for priority in (11, -1, 1000):
        r = a.post("/v1/tasks", json={"workflow": "echo", "input": {"text": "p"}, "priority": priority})
        assert_client_error(r, 422, f"priority {priority}", "tenant-a", "0 to 10")
    assert_client_error(b.post("/v1/tasks", json={"workflow": "echo", "input": {"text": "p"},
                                                   "priority": 101}), 422, "-5 to 100")
    assert _tasks_of(a) | _tasks_of(b) == before
    assert submit(a, "echo", {"text": "p"}, priority=10)["priority"] == 10
    assert submit(b, "echo", {"text": "p"}, priority=100)["priority"] == 100
    assert submit(b, "echo", {"text": "p"}, priority=-5)["priority"] == -5


def test_a_tenant_holding_300_streams_starves_no_one(api: Api, a: httpx.Client,
                                                    b: httpx.Client) -> None:
    """Tenant a asks for 300 event streams on a parked task: it gets its limit and 429s for the
    rest; meanwhile tenant b's submit and /healthz answer within 1 s."""
    import asyncio

    parked = submit(a, "approval", {"dir": str(api.dir)})["id"]
    wait_status(a, parked, "waiting")
    held: list[httpx.Response] = []

    async def hold_streams() -> tuple[int, int, list[float]]:
        async with httpx.AsyncClient(base_url=api.url, headers=dict(a.headers),
                                     timeout=httpx.Timeout(30.0, read=None),
                                     limits=httpx.Limits(max_connections=400)) as aio:
            async def one() -> int:
                request = aio.build_request("GET", f"/v1/tasks/{parked}/events")
                response = await aio.send(request, stream=True)
                if response.status_code == 200:
                    held.append(response)
                else:
                    await response.aread()
                    await response.aclose()
                return response.status_code

            statuses = await asyncio.gather(*(one() for _ in range(300)))
            # With every stream a holds open: b and /healthz must not wait behind them.
            timings = []
            for _ in range(3):
                started = time.monotonic()
                healthz = await aio.get("/healthz")
                assert healthz.status_code == 200
                r = await aio.post("/v1/tasks", json={"workflow": "echo", "input": {"text": "b"}},
                                   headers={"Authorization": "Bearer key-b"})
                assert r.status_code == 202, r.text
                timings.append(time.monotonic() - started)
            for response in held:
                await response.aclose()
            return statuses.count(200), statuses.count(429), timings

    ok, refused, timings = asyncio.run(hold_streams())
    assert ok == 32 and refused == 268, (ok, refused)
    assert max(timings) < 1.0, timings
    # Closed streams give their slots back.
    wait_for(lambda: _can_stream(a, parked), timeout_s=20, what="stream slots to come back")
    a.post(f"/v1/tasks/{parked}/signals/approve", json={"by": "t"})


def _can_stream(client: httpx.Client, task_id: str) -> bool:
    with client.stream("GET", f"/v1/tasks/{task_id}/events") as r:
        return r.status_code == 200


def test_a_stream_ends_at_its_maximum_length_and_resumes_with_last_event_id(
        api: Api, a: httpx.Client) -> None:
    parked = submit(a, "approval", {"dir": str(api.dir)})["id"]
    wait_status(a, parked, "waiting")
    started = time.monotonic()
    first = stream_events(a, parked)  # ends by itself: the task stays parked
    took = time.monotonic() - started
    assert STREAM_MAX_S - 1 <= took < STREAM_MAX_S + 10, took
    assert first and first[-1].event != "succeeded"
    last = first[-1].id
    a.post(f"/v1/tasks/{parked}/signals/approve", json={"by": "t"})
    rest = stream_events(a, parked, headers={"Last-Event-ID": str(last)})
    assert rest and int(rest[0].id or 0) == int(last or 0) + 1 and rest[-1].event == "succeeded"


def test_the_openapi_document_says_what_the_server_enforces(api: Api) -> None:
    doc = httpx.get(f"{api.url}/openapi.json").json()
    submit_op = doc["paths"]["/v1/tasks"]["post"]
    links = submit_op["responses"]["202"]["links"]
    operation_ids = {op["operationId"] for ops in doc["paths"].values() for op in ops.values()}
    assert {"get", "result", "events", "cancel", "retry"} <= set(links)
    for link in links.values():
        assert link["operationId"] in operation_ids
        assert link["parameters"] == {"task_id": "$response.body#/id"}
    (key,) = [p for p in doc["paths"]["/v1/gates/{key}"]["put"]["parameters"] if p["name"] == "key"]
    assert key["schema"]["pattern"] == r"^[A-Za-z0-9_.:@/*-]+$"  # \w would differ from JSON Schema's



# -- the front door under a hostile body (audit H1), and what the status page sends (L8) ---------

def wide_and_deep_body() -> bytes:
    """2 MB: an array of a million zeros nested 62 deep."""
    return ('{"a":' * 62 + "[" + ",".join(["0"] * 1_000_000) + "]" + "}" * 62).encode()


def post_raw(url: str, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, float]:
    """POST over a plain socket: the body goes out from a thread while the answer is read, as a
    server may answer (and close) before reading it all. Returns the status and the seconds from
    the end of the headers to the answer's status line."""
    parsed = urlparse(url)
    head = "".join(f"{k}: {v}\r\n" for k, v in {
        "Host": parsed.netloc, "Content-Length": str(len(body)), "Connection": "close",
        **headers}.items())
    with socket.create_connection((parsed.hostname, parsed.port), timeout=30) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\n{head}\r\n".encode())
        sent = time.monotonic()

        def send_body() -> None:
            with contextlib.suppress(OSError):  # the server may close once it has answered
                sock.sendall(body)

        sender = threading.Thread(target=send_body, daemon=True)
        sender.start()
        reply = b""
        while b"\r\n" not in reply:
            chunk = sock.recv(4096)
            assert chunk, f"the server closed without answering POST {path}"
            reply += chunk
        took = time.monotonic() - sent
    return int(reply.split(b" ", 2)[1]), took


def test_a_wide_deep_body_without_a_key_is_refused_at_once_while_healthz_answers(api: Api) -> None:
    body = wide_and_deep_body()
    assert len(body) > 2_000_000
    stop = threading.Event()
    polls: list[tuple[int, float]] = []

    def poll_healthz() -> None:
        with httpx.Client(base_url=api.url, timeout=10) as other:  # a connection of its own
            while not stop.is_set():
                started = time.monotonic()
                status = other.get("/healthz").status_code
                polls.append((status, time.monotonic() - started))

    poller = threading.Thread(target=poll_healthz, daemon=True)
    poller.start()
    try:
        wait_for(lambda: polls, timeout_s=30, what="the first /healthz")
        answers = {path: post_raw(api.url, path, body, {"Content-Type": "application/json"})
                   for path in ("/nothing:batch", "/v1/tasks:batch", "/v1/tasks")}
        after = len(polls)
        wait_for(lambda: len(polls) > after, timeout_s=30, what="a /healthz after the bodies")
    finally:
        stop.set()
        poller.join(timeout=30)

    # Generous bounds (a correctness check on a loaded machine; benchmarks/body_guard.py times it).
    for path, (status, took) in answers.items():
        assert 400 <= status < 500, (path, status)
        assert took < 5.0, (path, took)
    assert polls and all(status == 200 for status, _ in polls), polls
    assert max(took for _, took in polls) < 1.0, polls


def test_the_status_page_forbids_framing_and_foreign_scripts_and_there_is_no_cdn_docs_page(
        api: Api) -> None:
    anonymous = api.client()
    for path in ("/", "/static/app.js", "/static/style.css"):
        r = anonymous.get(path)
        assert r.status_code == 200, path
        csp = r.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp, (path, csp)
        assert r.headers["x-frame-options"] == "DENY", path
    assert anonymous.get("/docs").status_code == 404
    assert anonymous.get("/redoc").status_code == 404
    assert anonymous.get("/openapi.json").status_code == 200


def test_an_empty_bearer_key_is_401(api: Api) -> None:
    # "Bearer " arrives as "Bearer" (a header value's trailing space is not part of it).
    for authorization in ("Bearer", "bearer"):
        r = api.client().get("/v1/tasks", headers={"Authorization": authorization})
        assert_client_error(r, 401)


def test_gate_limits_refuse_booleans_and_values_past_their_bounds(a: httpx.Client) -> None:
    key = f"test:{uuid.uuid4().hex[:8]}"
    for limits in ({"requests": True, "max_hold_s": 2.8e16}, {"requests": True},
                   {"concurrency": 10**7}, {"max_hold_s": 2.8e16}, {"interval_s": "1"}):
        r = a.put(f"/v1/gates/{key}", json=limits)
        assert_client_error(r, 422, "body.")
    assert key not in a.get("/v1/gates").json()
    r = a.put(f"/v1/gates/{key}", json={"requests": 5, "max_hold_s": 60})
    assert r.status_code == 200 and r.json()["limits"]["requests"] == 5, r.text
    assert a.delete(f"/v1/gates/{key}").status_code == 204
