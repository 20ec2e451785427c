"""Bulk submits over real HTTP on the shared server: ``POST /v1/tasks:batch`` answers each task on
its own (202, 200 for an idempotency key's first task, or the 4xx it earned, with nothing written
for it), refuses a body that breaks the schema as a whole, and the tasks it queued run; the HTTP
client's ``submit_many`` and ``raysquad submit-many`` (JSON lines from standard input) ride on it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from typing import Any

import httpx

from runtime.core.errors import RemoteError
from runtime.core.models import TaskRecord, TaskStatus
from serve.http_client import HttpClient
from tests.conftest import ROOT, wait_for
from tests.e2e.live import TASK_TIMEOUT_S, Api


def keyed(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def by_key(client: httpx.Client, key_prefix: str) -> list[dict[str, Any]]:
    """The caller's echo tasks whose idempotency key starts with ``key_prefix`` (read one by one)."""
    page = client.get("/v1/tasks", params={"workflow": "echo", "limit": 500}).json()["items"]
    tasks = [client.get(t["links"]["self"]).json() for t in page]
    return [t for t in tasks if (t.get("input") or {}).get("text", "").startswith(key_prefix)]


def succeeded(client: httpx.Client, task_id: str) -> bool:
    return client.get(f"/v1/tasks/{task_id}").json()["status"] == "succeeded"


def test_each_task_of_a_batch_gets_its_own_answer_and_the_accepted_run(a: httpx.Client) -> None:
    tag = keyed("batch")
    tasks = [
        {"workflow": "echo", "input": {"text": f"{tag}-0"}, "idempotency_key": f"{tag}-k"},
        {"workflow": "echo", "input": {"text": f"{tag}-1"}, "priority": 5},
        {"workflow": "echo", "input": {"text": f"{tag}-2"}, "idempotency_key": f"{tag}-k"},
        {"workflow": "no_such_workflow", "input": {}},
        {"workflow": "echo", "input": {"text": 42}},
        {"workflow": "echo", "input": {"text": f"{tag}-5"}, "priority": 11},  # tenant-a: 0..10
        {"workflow": "echo", "input": {"text": f"{tag}-6"}, "priority": 3.0},  # an integer in JSON
    ]

    r = a.post("/v1/tasks:batch", json={"tasks": tasks})

    assert r.status_code == 200, r.text
    reply = r.json()
    statuses = [item["status"] for item in reply["items"]]
    assert statuses == [202, 202, 200, 404, 422, 422, 202]
    assert (reply["accepted"], reply["refused"]) == (4, 3)
    items = reply["items"]
    # The repeated idempotency key answers with the first task of the batch.
    assert items[2]["id"] == items[0]["id"]
    assert items[3]["error"]["type"] == "WorkflowNotFound"
    assert items[4]["error"]["type"] == "InvalidInput" and items[4]["error"]["problems"]
    assert "priority 11" in items[5]["error"]["message"]
    assert all("id" not in item or item["id"] is None for item in items[3:6])

    for i in (0, 1, 6):
        wait_for(lambda i=i: succeeded(a, items[i]["id"]), timeout_s=TASK_TIMEOUT_S,
                 what=f"batch item {i} to run")
    assert a.get(f"/v1/tasks/{items[1]['id']}").json()["priority"] == 5
    assert a.get(f"/v1/tasks/{items[6]['id']}/result").json()["output"] == f"{tag}-6"
    # Nothing was written for the refused items.
    texts = {t["input"]["text"] for t in by_key(a, tag)}
    assert texts == {f"{tag}-0", f"{tag}-1", f"{tag}-6"}


def test_a_batch_that_breaks_the_schema_is_refused_whole(a: httpx.Client) -> None:
    tag = keyed("whole")
    good = {"workflow": "echo", "input": {"text": f"{tag}-ok"}}
    bad_bodies = [
        {"tasks": []},
        {"tasks": [good] * 1001},
        {"tasks": [good, {**good, "extra": 1}]},
        {"tasks": [good, {**good, "priority": "5"}]},
        {"tasks": [good, {**good, "priority": True}]},
        {"tasks": [good, {**good, "priority": 1.5}]},
        {"tasks": [good, {"input": {}}]},
        [good],
    ]
    for body in bad_bodies:
        r = a.post("/v1/tasks:batch", json=body)
        assert r.status_code == 422, (body if len(str(body)) < 300 else "1001 tasks", r.text)
        assert r.json()["error"]["type"] == "ValidationError"
    assert by_key(a, tag) == []


def test_the_http_clients_submit_many_returns_records_and_errors(api: Api) -> None:
    tag = keyed("client")
    client = HttpClient(api.url, "key-b")  # tenant-b: priorities -5 to 100
    outcomes = client.submit_many([
        {"workflow": "echo", "input": {"text": f"{tag}-a"}, "priority": 100},
        {"workflow": "echo", "input": {"text": 1}},
        {"workflow": "echo", "input": {"text": f"{tag}-b"}, "idempotency_key": f"{tag}-k"},
        {"workflow": "echo", "input": {"text": f"{tag}-c"}, "idempotency_key": f"{tag}-k"},
    ])

    first, refused, keyed_task, again = outcomes
    assert isinstance(first, TaskRecord) and first.priority == 100
    assert first.status is TaskStatus.QUEUED and first.created_at > 0
    assert isinstance(refused, RemoteError) and refused.status == 422
    assert isinstance(keyed_task, TaskRecord) and isinstance(again, TaskRecord)
    assert again.id == keyed_task.id and again.input == {"text": f"{tag}-b"}
    for record in (first, keyed_task):
        assert client.result(record.id, timeout_s=TASK_TIMEOUT_S) == record.input["text"]


def run_cli(*args: str, stdin: str, key: str = "key-a") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_ADDRESS": "", "RAYSQUAD_API_KEY": key}
    return subprocess.run([sys.executable, "-m", "serve.cli", *args], input=stdin, env=env,
                          capture_output=True, text=True, timeout=120)


def test_submit_many_reads_json_lines_from_standard_input(api: Api, a: httpx.Client) -> None:
    tag = keyed("cli")
    lines = [json.dumps({"input": {"text": f"{tag}-{i}"}, "priority": i}) for i in range(3)]
    lines.insert(1, "")  # blank lines are skipped
    lines.append(json.dumps({"workflow": "no_such_workflow"}))

    done = run_cli("submit-many", "-", "--workflow", "echo", "--url", api.url,
                   stdin="\n".join(lines) + "\n")

    assert done.returncode == 1, done.stderr  # one task was refused
    printed = done.stdout.split()
    assert len(printed) == 4 and printed[3] == "-", done.stdout
    assert "task 4:" in done.stderr and "no_such_workflow" in done.stderr
    assert "submitted 3 of 4" in done.stderr
    assert "Traceback" not in done.stderr
    for i, task_id in enumerate(printed[:3]):
        wait_for(lambda t=task_id: succeeded(a, t), timeout_s=TASK_TIMEOUT_S,
                 what="a task submitted by submit-many to run")
        assert a.get(f"/v1/tasks/{task_id}").json()["priority"] == i


def test_submit_many_submits_nothing_when_a_line_is_bad(api: Api, a: httpx.Client) -> None:
    tag = keyed("cli-bad")
    good = json.dumps({"workflow": "echo", "input": {"text": f"{tag}-ok"}})
    for bad, says in (("{not json", "line 2 is not valid JSON"),
                      ("[1, 2]", "line 2 must be a JSON object"),
                      (json.dumps({"workflow": "echo", "colour": "red"}), "unknown field(s) colour"),
                      (json.dumps({"input": {}}), "line 2 names no workflow"),
                      (json.dumps({"workflow": "echo", "priority": "high"}),
                       "line 2 is not a valid task")):
        done = run_cli("submit-many", "-", "--url", api.url, stdin=f"{good}\n{bad}\n")
        assert done.returncode == 2, (bad, done.stdout, done.stderr)
        assert says in done.stderr and "Traceback" not in done.stderr, done.stderr
        assert done.stdout.strip() == ""
    assert by_key(a, tag) == []
