"""Tools, gates and dead letters over real HTTP, against the shared `raysquad up` (with the tool app)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import wait_for
from tests.e2e.live import Api
from tests.e2e.test_http import assert_client_error
from tests.servers import Upstream, upstream


@pytest.fixture(scope="module")
def ops_api(api: Api) -> Iterator[tuple[Api, Upstream]]:
    """The shared server (tests/e2e/live.py: tenant-a is an admin, http_fetch may reach loopback) and
    an upstream on loopback for its tools to call."""
    with upstream() as up:
        yield api, up


def _wait_done(client: httpx.Client, task_id: str) -> dict[str, Any]:
    def ended() -> dict[str, Any] | None:
        task: dict[str, Any] = client.get(f"/v1/tasks/{task_id}").json()
        return task if task["status"] in ("succeeded", "failed", "cancelled") else None

    done: dict[str, Any] = wait_for(ended, 90, 0.2, "the task to end")
    return done


def test_tools_are_listed_with_their_argument_schemas(ops_api: tuple[Api, Upstream]) -> None:
    api, _ = ops_api
    tools = {t["name"]: t for t in api.client("key-b").get("/v1/tools").json()}
    assert {"http_fetch", "extract_text", "sql_query", "lookup"} <= set(tools)
    assert tools["http_fetch"]["parameters"]["required"] == ["url"]
    assert tools["lookup"]["batch"] == {"max_size": 4, "max_wait_s": 0.5}


def test_admins_see_and_change_gates_others_get_403(ops_api: tuple[Api, Upstream]) -> None:
    api, _ = ops_api
    admin, other = api.client("key-a"), api.client("key-b")
    assert_client_error(other.get("/v1/gates"), 403, "tenant-b", "GET /v1/gates",
                        "RAYSQUAD_ADMIN_TENANTS")
    assert_client_error(other.put("/v1/gates/api:x", json={"requests": 5}), 403)

    set_ = admin.put("/v1/gates/api:search", json={"requests": 5, "interval_s": 60, "concurrency": 2})
    assert set_.status_code == 200, set_.text
    assert set_.json()["limits"]["requests"] == 5
    assert admin.get("/v1/gates").json()["api:search"]["limits"]["concurrency"] == 2

    problems = assert_client_error(admin.put("/v1/gates/api:search", json={"requests": 0}), 422,
                                   "requests")["problems"]
    assert problems[0]["loc"][-1] == "requests"
    assert_client_error(admin.put("/v1/gates/api:search", json={"burst": 3}), 422, "burst")
    assert_client_error(admin.put("/v1/gates/bad%20key", json={"requests": 1}), 422)
    # What the OpenAPI document says is what is enforced: its pattern is ASCII (JSON Schema's \w).
    assert_client_error(admin.put("/v1/gates/caf%C3%A9", json={"requests": 1}), 422, "key")
    assert_client_error(admin.put("/v1/gates/api:x", json={"requests": 1, "interval_s": 1.2e-7}),
                        422, "interval_s")

    assert admin.delete("/v1/gates/api:search").status_code == 204
    assert "api:search" not in admin.get("/v1/gates").json()
    assert_client_error(admin.delete("/v1/gates/api:search"), 404, "api:search")


def test_a_dead_letter_is_listed_for_its_tenant_and_replayed(ops_api: tuple[Api, Upstream]) -> None:
    api, up = ops_api
    a, b = api.client("key-a"), api.client("key-b")
    up.down = True
    secret = "Bearer s3cret-upstream-token"
    # A query string may carry credentials too (audit M9; userinfo: tests/unit/tools/test_tool_secrets.py).
    url = up.url("/flaky?token=q-s3cret")
    r = a.post("/v1/tasks", json={"workflow": "fetch_once", "input": {
        "url": url, "headers": {"Authorization": secret, "X-Trace": "t-1"}}})
    assert r.status_code == 202, r.text
    task_id = r.json()["id"]
    out = _wait_done(a, task_id)["output"]
    assert out["ok"] is False and out["dead_letter"]
    assert up.url("/flaky") in out["error"] and "s3cret" not in out["error"]

    listed = a.get("/v1/dead-letters", params={"status": "dead"})
    letters = [d for d in listed.json() if d["task_id"] == task_id]  # the server is shared
    assert [d["id"] for d in letters] == [out["dead_letter"]]
    # The call's header values never reach the tenant (a workflow may have added credentials).
    assert "s3cret" not in listed.text and "t-1" not in listed.text
    assert letters[0]["args"]["headers"] == {"Authorization": "[redacted]", "X-Trace": "[redacted]"}
    assert letters[0]["args"]["url"] == up.url("/flaky")
    assert letters[0]["tool"] == "http_fetch" and letters[0]["attempts"] == 4
    assert b.get("/v1/dead-letters").json() == []  # another tenant's letters do not exist for b
    assert_client_error(b.post(f"/v1/dead-letters/{out['dead_letter']}/replay"), 404)
    assert_client_error(a.post("/v1/dead-letters/nope/replay"), 404, "nope")

    up.down = False
    replayed = a.post(f"/v1/dead-letters/{out['dead_letter']}/replay")
    assert replayed.status_code == 200, replayed.text
    assert "s3cret" not in replayed.text
    assert up.of("/flaky")[-1].headers["authorization"] == secret  # the replay itself sent them
    assert up.of("/flaky")[-1].query == {"token": "q-s3cret"}  # to the whole URL
    assert replayed.json()["status"] == "replayed" and replayed.json()["result"]["status"] == 200
    replayed_ids = [d["id"] for d in a.get("/v1/dead-letters", params={"status": "replayed"}).json()]
    assert out["dead_letter"] in replayed_ids
    assert out["dead_letter"] not in [d["id"] for d in a.get("/v1/dead-letters",
                                                              params={"status": "dead"}).json()]
