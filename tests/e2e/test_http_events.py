"""Events over real HTTP on the shared server: publishing (new, repeated, refused), listing per
tenant, an event's report with the task it started, and webhooks signed by the Standard Webhooks
scheme (good, missing, wrong, stale, replayed, rotated secret, unknown source, too large)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from standardwebhooks.webhooks import Webhook

from tests.conftest import wait_for
from tests.e2e.live import MAX_BODY_BYTES, WEBHOOK_SECRETS, Api

UNKNOWN_SECRET = "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo="


def signed(body: bytes, secret: str, msg_id: str | None = None,
           at: datetime | None = None) -> dict[str, str]:
    msg_id = msg_id or f"msg_{uuid.uuid4().hex}"
    at = at or datetime.now(UTC)
    return {"webhook-id": msg_id, "webhook-timestamp": str(int(at.timestamp())),
            "webhook-signature": Webhook(secret).sign(msg_id, at, body),
            "content-type": "application/json"}


def doc(api: Api, url: str) -> bytes:
    return json.dumps({"dir": str(api.dir), "url": url, "lang": "en"}).encode()


def events_of(client: httpx.Client, topic: str) -> list[dict[str, Any]]:
    return client.get("/v1/events", params={"topic": topic, "limit": 500}).json()["items"]


def test_a_signed_webhook_publishes_its_event_and_starts_its_workflow(api: Api) -> None:
    hooks, tenant_a = api.client(), api.client("key-a")
    body = doc(api, f"hook-{uuid.uuid4().hex[:6]}.html")
    headers = signed(body, WEBHOOK_SECRETS[0])

    r = hooks.post("/v1/webhooks/docs", content=body, headers=headers)

    assert r.status_code == 202, r.text
    event = r.json()
    assert (event["id"], event["topic"], event["source"], event["tenant"]) == (
        f"webhook:docs:{headers['webhook-id']}", "docs.new", "webhook:docs", "tenant-a")
    assert event["data"] == json.loads(body)
    report_url = r.headers["Location"]
    task_id = wait_for(lambda: next((d["task_id"] for d in
                                     tenant_a.get(report_url).json()["deliveries"]
                                     if d["target"] == "workflow:index_doc" and d["task_id"]), None),
                       timeout_s=60, what="the webhook's event to start index_doc")
    assert tenant_a.get(f"/v1/tasks/{task_id}").json()["workflow"] == "index_doc"

    # Replayed (the same delivery again, inside the window): nothing new is published.
    before = len(events_of(tenant_a, "docs.new"))
    again = hooks.post("/v1/webhooks/docs", content=body, headers=headers)
    assert again.status_code == 200 and again.json()["seq"] == event["seq"]
    assert len(events_of(tenant_a, "docs.new")) == before

    # The tenant's own publish with the delivery's id is an event of its own, not this one.
    mine = tenant_a.post("/v1/events/notes.added", json={"id": headers["webhook-id"],
                                                       "data": {"other": 1}})
    assert mine.status_code == 202 and mine.json()["seq"] != event["seq"]


def test_a_rotated_secret_is_still_accepted(api: Api) -> None:
    body = doc(api, "rotated.html")
    r = api.client().post("/v1/webhooks/docs", content=body,
                          headers=signed(body, WEBHOOK_SECRETS[1]))
    assert r.status_code == 202, r.text


def test_bad_signatures_are_401_and_publish_nothing(api: Api) -> None:
    hooks, tenant_a = api.client(), api.client("key-a")
    body = doc(api, "bad.html")
    before = len(events_of(tenant_a, "docs.new"))
    good = signed(body, WEBHOOK_SECRETS[0])
    cases = {
        "missing": {"content-type": "application/json"},
        "wrong": signed(body, UNKNOWN_SECRET),
        "stale": signed(body, WEBHOOK_SECRETS[0], at=datetime.now(UTC) - timedelta(minutes=10)),
        "future": signed(body, WEBHOOK_SECRETS[0], at=datetime.now(UTC) + timedelta(minutes=10)),
        "tampered": good,  # signed for another body
    }
    for name, headers in cases.items():
        content = body if name != "tampered" else body.replace(b"bad.html", b"evil.html")
        r = hooks.post("/v1/webhooks/docs", content=content, headers=headers)
        assert r.status_code == 401, (name, r.status_code, r.text)
        assert r.json()["error"]["type"] == "WebhookRejected", name
    assert len(events_of(tenant_a, "docs.new")) == before


def test_webhook_sources_and_sizes_are_checked(api: Api) -> None:
    hooks = api.client()
    body = doc(api, "x.html")
    r = hooks.post("/v1/webhooks/nobody", content=body, headers=signed(body, WEBHOOK_SECRETS[0]))
    assert r.status_code == 404 and "RAYSQUAD_WEBHOOKS" in r.json()["error"]["message"]
    big = json.dumps({"pad": "x" * MAX_BODY_BYTES}).encode()
    r = hooks.post("/v1/webhooks/docs", content=big, headers=signed(big, WEBHOOK_SECRETS[0]))
    assert r.status_code == 413


def test_publish_over_http(api: Api) -> None:
    tenant_a, tenant_b = api.client("key-a"), api.client("key-b")
    event_id = f"pub-{uuid.uuid4().hex[:8]}"
    body = {"id": event_id, "key": "k1", "data": {"dir": str(api.dir), "url": "p.html"}}

    first = tenant_a.post("/v1/events/notes.added", json=body)
    again = tenant_a.post("/v1/events/notes.added", json={**body, "data": {"other": 1}})

    assert first.status_code == 202 and again.status_code == 200
    assert again.json() == first.json()
    assert first.json()["key"] == "k1" and first.json()["source"] == "http"
    report = tenant_a.get(f"/v1/events/notes.added/{event_id}").json()
    assert report["event"]["id"] == event_id and report["deliveries"] == []  # nobody subscribes
    assert tenant_b.get(f"/v1/events/notes.added/{event_id}").status_code == 404
    assert all(e["tenant"] == "tenant-b" for e in events_of(tenant_b, "notes.added"))
    assert api.client().post("/v1/events/notes.added", json=body).status_code == 401

    for topic, payload, status in [("bad..topic", {"data": 1}, 422),
                                   ("notes.added", {"data": 1, "extra": 2}, 422),
                                   ("notes.added", {"data": 1, "id": ""}, 422)]:
        r = tenant_a.post(f"/v1/events/{topic}", json=payload)
        assert r.status_code == status, (topic, payload, r.text)


def test_events_are_paged(api: Api) -> None:
    tenant_b = api.client("key-b")
    topic = f"pages.t{uuid.uuid4().hex[:6]}"
    for n in range(5):
        assert tenant_b.post(f"/v1/events/{topic}", json={"data": {"n": n}}).status_code == 202
    first = tenant_b.get("/v1/events", params={"topic": topic, "limit": 3}).json()
    rest = tenant_b.get("/v1/events", params={"topic": topic, "limit": 3,
                                              "cursor": first["next_cursor"]}).json()
    assert [e["data"]["n"] for e in first["items"] + rest["items"]] == [4, 3, 2, 1, 0]
    assert rest["next_cursor"] is None


def test_schedules_over_http(api: Api) -> None:
    tenant_a, tenant_b = api.client("key-a"), api.client("key-b")
    sid = f"s-{uuid.uuid4().hex[:6]}"
    body = {"id": sid, "workflow": "tick", "cron": "* * * * * */2", "overlap": "allow",
            "input": {"dir": str(api.dir)}}

    created = tenant_a.post("/v1/schedules", json=body)
    assert created.status_code == 201, created.text
    assert tenant_a.post("/v1/schedules", json={**body, "timezone": "Asia/Tokyo"}).status_code == 200
    assert tenant_a.get(f"/v1/schedules/{sid}").json()["timezone"] == "Asia/Tokyo"
    assert tenant_b.get(f"/v1/schedules/{sid}").status_code == 404
    assert sid not in [s["id"] for s in tenant_b.get("/v1/schedules").json()]
    wait_for(lambda: tenant_a.get(f"/v1/schedules/{sid}").json()["last_task_id"], timeout_s=30,
             what="the schedule to start a task")
    task = tenant_a.get(f"/v1/schedules/{sid}").json()["last_task_id"]
    assert tenant_a.get(f"/v1/tasks/{task}").json()["workflow"] == "tick"

    assert tenant_a.post(f"/v1/schedules/{sid}/pause").json()["paused"] is True
    assert tenant_a.post(f"/v1/schedules/{sid}/resume").json()["paused"] is False
    assert tenant_a.delete(f"/v1/schedules/{sid}").status_code == 204
    assert tenant_a.get(f"/v1/schedules/{sid}").status_code == 404
    assert tenant_a.delete(f"/v1/schedules/{sid}").status_code == 404

    changes: list[tuple[dict[str, Any], int]] = [
        ({"cron": "every day"}, 422), ({"timezone": "Mars/Base"}, 422), ({"workflow": "nope"}, 404),
        ({"input": {"wrong": 1}}, 422), ({"catch_up": "always"}, 422)]
    for change, status in changes:
        r = tenant_a.post("/v1/schedules", json={**body, **change})
        assert r.status_code == status, (change, r.text)
    # A cron with a year field runs out of ticks; one that never ticks has none: both refused.
    for cron, says in [("0 0 1 1 * 0 2027", "year field"), ("0 0 1 1 * 0 2020", "year field"),
                       ("0 0 31 2 *", "never ticks")]:
        r = tenant_a.post("/v1/schedules", json={**body, "cron": cron})
        assert r.status_code == 422 and says in r.json()["error"]["message"], (cron, r.text)
    # Only admin tenants tick by the second; tenant-b is not one.
    r = tenant_b.post("/v1/schedules", json=body)
    assert r.status_code == 422 and "at most every 60 s" in r.json()["error"]["message"], r.text
    assert sid not in [s["id"] for s in tenant_a.get("/v1/schedules").json()]
    assert sid not in [s["id"] for s in tenant_b.get("/v1/schedules").json()]


def test_schedules_are_listed_a_page_at_a_time(api: Api) -> None:
    tenant_b = api.client("key-b")
    prefix = f"pg-{uuid.uuid4().hex[:6]}"
    for n in range(3):
        body = {"id": f"{prefix}-{n}", "workflow": "tick", "cron": "0 9 * * 1",
                "input": {"dir": str(api.dir)}}
        assert tenant_b.post("/v1/schedules", json=body).status_code == 201
    first = tenant_b.get("/v1/schedules", params={"limit": 2, "cursor": prefix}).json()
    rest = tenant_b.get("/v1/schedules", params={"limit": 2, "cursor": first[-1]["id"]}).json()
    assert [s["id"] for s in first + rest][:3] == [f"{prefix}-{n}" for n in range(3)]
    assert len(first) == 2
    assert tenant_b.get("/v1/schedules", params={"limit": 0}).status_code == 422
    for n in range(3):
        assert tenant_b.delete(f"/v1/schedules/{prefix}-{n}").status_code == 204


def test_cli_publishes_lists_and_schedules(api: Api, tmp_path: Path) -> None:
    from tests.e2e.test_cli import assert_one_line_error, cli

    url = ["--url", api.url]
    published = cli("publish", "notes.cli", "--data", '{"n": 1}', "--key", "k", *url, cwd=tmp_path)
    assert published.returncode == 0, published.stderr
    event_id = published.stdout.strip()
    listed = cli("events", "--topic", "notes.cli", *url, cwd=tmp_path)
    assert listed.returncode == 0 and event_id[:8] in listed.stdout

    sid = f"cli-{uuid.uuid4().hex[:6]}"
    made = cli("schedule", "create", sid, "tick", "0 9 * * 1", "--timezone", "Europe/Paris",
               "--input", json.dumps({"dir": str(api.dir)}), *url, cwd=tmp_path)
    assert made.returncode == 0 and "next" in made.stdout, made.stderr
    assert sid in cli("schedules", *url, cwd=tmp_path).stdout
    assert "paused" in cli("schedule", "pause", sid, *url, cwd=tmp_path).stdout
    assert cli("schedule", "delete", sid, *url, cwd=tmp_path).returncode == 0

    assert_one_line_error(cli("schedule", "create", "x", "tick", "every day", *url, cwd=tmp_path),
                          1, "not a cron expression")
    assert_one_line_error(cli("publish", "bad..topic", *url, cwd=tmp_path), 1, "422")
    assert_one_line_error(cli("publish", "t", "--data", "{nope", *url, cwd=tmp_path), 2,
                          "--data is not valid JSON")
    assert_one_line_error(cli("schedule", "show", sid, *url, cwd=tmp_path), 1, "no schedule")


# -- flow control is per tenant (audit H2): tenants a and b publish on the same key ---------------


def _flow_dir(api: Api) -> Path:
    side = api.dir / f"flow-{uuid.uuid4().hex[:8]}"
    side.mkdir()
    return side


def _publish(client: httpx.Client, topic: str, key: str, **data: Any) -> str:
    r = client.post(f"/v1/events/{topic}", json={"key": key, "data": data})
    assert r.status_code == 202, r.text
    return r.headers["Location"]


def _delivery(client: httpx.Client, report_url: str, target: str) -> dict[str, Any] | None:
    return next((d for d in client.get(report_url).json()["deliveries"] if d["target"] == target),
                None)


def _task_of(client: httpx.Client, report_url: str, target: str) -> str:
    return wait_for(lambda: (_delivery(client, report_url, target) or {}).get("task_id"),
                    timeout_s=60, what=f"the event to start {target}")


def _status(client: httpx.Client, task_id: str) -> str:
    return client.get(f"/v1/tasks/{task_id}").json()["status"]


def _phases(side: Path, name: str) -> list[tuple[int, str]]:
    path = side / name
    return [(n["n"], n["phase"]) for n in map(json.loads, path.read_text().splitlines())
            ] if path.exists() else []


def _a_held_while_b_runs(a: httpx.Client, b: httpx.Client, api: Api, topic: str,
                         workflow: str) -> tuple[Path, str, str]:
    """Tenant a's run of ``workflow`` held at its gate while tenant b publishes the same key: b's
    run must end meanwhile, and a's after its gate opens. Returns the side dir and both tasks."""
    side, key = _flow_dir(api), f"k-{uuid.uuid4().hex[:6]}"
    at_a = _publish(a, topic, key, dir=str(side), url="a", n=1, gate="ga")
    task_a = _task_of(a, at_a, f"workflow:{workflow}")
    wait_for(lambda: (1, "start") in _phases(side, workflow), 60, what="a's run at its gate")

    at_b = _publish(b, topic, key, dir=str(side), url="b", n=2)
    task_b = _task_of(b, at_b, f"workflow:{workflow}")
    wait_for(lambda: _status(b, task_b) == "succeeded", 60,
             what="b's run to end while a's holds the key")

    assert _status(a, task_a) in ("running", "waiting")
    (side / "ga").touch()
    wait_for(lambda: _status(a, task_a) == "succeeded", 60,
             what="a's run to end, not cancelled or held by b's event")
    assert (1, "end") in _phases(side, workflow)
    return side, task_a, task_b


def test_cancel_running_never_cancels_another_tenants_task(a: httpx.Client, b: httpx.Client,
                                                           api: Api) -> None:
    _a_held_while_b_runs(a, b, api, "prices.changed", "latest_only")


def test_one_per_key_never_holds_another_tenants_event(a: httpx.Client, b: httpx.Client,
                                                       api: Api) -> None:
    _, _, task_b = _a_held_while_b_runs(a, b, api, "jobs.queued", "one_at_a_time")
    assert b.get(f"/v1/tasks/{task_b}").json()["priority"] == -5  # b's lowest allowed (L14)


def test_debounce_never_supersedes_another_tenants_event(a: httpx.Client, b: httpx.Client,
                                                         api: Api) -> None:
    side, key = _flow_dir(api), f"page-{uuid.uuid4().hex[:6]}"
    at_a = _publish(a, "edits.made", key, dir=str(side), url="a", n=1)
    at_b = _publish(b, "edits.made", key, dir=str(side), url="b", n=2)

    for client, url in ((a, at_a), (b, at_b)):
        task = _task_of(client, url, "workflow:debounced")
        def succeeded(c: httpx.Client = client, t: str = task) -> bool:
            return _status(c, t) == "succeeded"
        wait_for(succeeded, 60, what="each tenant's debounced run")
        assert (_delivery(client, url, "workflow:debounced") or {})["outcome"] == "started"
    runs = sorted(n["n"] for n in map(json.loads, (side / "debounced").read_text().splitlines()))
    assert runs == [1, 2]


def test_the_runtimes_own_topics_are_refused(a: httpx.Client) -> None:
    for topic in ("task.failed", "task.succeeded", "sys.anything"):
        r = a.post(f"/v1/events/{topic}", json={"data": {"task_id": "x"}})
        assert r.status_code == 422, r.text
        assert "the runtime's own" in r.json()["error"]["message"]


# -- an event's report: its topic and an id with slashes (audit L10); cursors; webhook bodies ----

def test_an_events_report_matches_its_topic_and_takes_an_id_with_slashes(api: Api) -> None:
    tenant_a = api.client("key-a")
    event_id = f"task/{uuid.uuid4().hex}/1"  # shaped like the runtime's own ids
    r = tenant_a.post("/v1/events/notes.sliced", json={"id": event_id, "data": {"n": 1}})
    assert r.status_code == 202, r.text

    by_location = tenant_a.get(r.headers["Location"])  # the id quoted: %2F
    by_path = tenant_a.get(f"/v1/events/notes.sliced/{event_id}")  # the id as it is
    other_topic = tenant_a.get(f"/v1/events/notes.other/{event_id}")

    assert by_location.status_code == 200, by_location.text
    assert by_path.status_code == 200 and by_path.json()["event"]["id"] == event_id
    assert other_topic.status_code == 404 and event_id in other_topic.json()["error"]["message"]


def test_a_cursor_past_any_event_is_422_not_500(api: Api) -> None:
    r = api.client("key-a").get("/v1/events", params={"cursor": "9999999999999999999"})

    assert r.status_code == 422 and r.json()["error"]["type"] == "InvalidCursor", r.text


def test_a_validly_signed_body_that_is_not_json_is_400_and_publishes_nothing(api: Api) -> None:
    hooks, tenant_a = api.client(), api.client("key-a")
    before = len(events_of(tenant_a, "docs.new"))
    for body in (b"", b"{not json", b"[1, 2"):
        r = hooks.post("/v1/webhooks/docs", content=body, headers=signed(body, WEBHOOK_SECRETS[1]))
        assert r.status_code == 400, (body, r.status_code, r.text)
        assert r.json()["error"]["type"] == "MalformedJSON"
    assert len(events_of(tenant_a, "docs.new")) == before
