"""What the status page draws first, over real HTTP against the shared `raysquad up`: a task's
recorded events (``GET /v1/tasks/{id}/history``, the event stream's data read at once, a page at a
time) and the tenant's numbers (``GET /v1/stats``: tasks by status, finishes per bucket)."""

from __future__ import annotations

import math
import time
from typing import Any

import httpx

from tests.conftest import wait_for
from tests.e2e.live import Api
from tests.e2e.test_http import assert_client_error, stream_events, submit

STATUSES = ["queued", "running", "waiting", "succeeded", "failed", "cancelled"]


def ended(client: httpx.Client, task_id: str) -> None:
    wait_for(lambda: client.get(f"/v1/tasks/{task_id}").json()["status"] in STATUSES[3:],
             timeout_s=90, what=f"task {task_id} to end")


def history(client: httpx.Client, task_id: str, **params: Any) -> dict[str, Any]:
    r = client.get(f"/v1/tasks/{task_id}/history", params=params)
    assert r.status_code == 200, r.text
    page: dict[str, Any] = r.json()
    return page


def test_the_history_of_an_ended_task_is_its_event_stream_read_at_once(api: Api) -> None:
    a, b = api.client("key-a"), api.client("key-b")
    task_id = submit(a, "five_steps", {"dir": str(api.dir), "steps": 3})["id"]
    ended(a, task_id)

    whole = history(a, task_id)
    streamed = [e.data for e in stream_events(a, task_id)]
    assert whole == {"items": streamed, "next_after": None}
    steps = [e for e in whole["items"] if e["kind"] == "step"]
    assert [e["key"] for e in steps] == ["s1", "s2", "s3"]
    assert all(e["elapsed_s"] >= 0 and e["at"] > 0 for e in steps)
    assert whole["items"][-1]["kind"] == "succeeded"

    # A page at a time: next_after leads through all of it, and nothing comes twice.
    pages, after = [], 0
    while True:
        page = history(a, task_id, after=after, limit=2)
        assert len(page["items"]) <= 2
        pages += page["items"]
        if page["next_after"] is None:
            break
        after = page["next_after"]
    assert pages == streamed
    # From a seq: what came after it (what the page's stream then asks for).
    last = streamed[-1]["seq"]
    assert history(a, task_id, after=streamed[1]["seq"])["items"] == streamed[2:]
    assert history(a, task_id, after=last) == {"items": [], "next_after": None}

    assert_client_error(b.get(f"/v1/tasks/{task_id}/history"), 404, task_id)  # another tenant's
    assert_client_error(a.get("/v1/tasks/nope/history"), 404, "nope")
    assert_client_error(a.get(f"/v1/tasks/{task_id}/history", params={"limit": 0}), 422, "limit")
    assert_client_error(a.get(f"/v1/tasks/{task_id}/history", params={"limit": 1001}), 422)
    assert_client_error(a.get(f"/v1/tasks/{task_id}/history", params={"after": -1}), 422, "after")


def test_stats_count_the_tenants_tasks_and_their_finishes_by_bucket(api: Api) -> None:
    b = api.client("key-b")
    before = b.get("/v1/stats").json()
    assert list(before["counts"]) == STATUSES

    task_id = submit(b, "echo", {"text": "counted"})["id"]
    ended(b, task_id)
    asked = time.time()
    r = b.get("/v1/stats", params={"window_s": 600, "bucket_s": 30})
    assert r.status_code == 200, r.text
    stats = r.json()

    assert stats["counts"]["succeeded"] >= before["counts"]["succeeded"] + 1
    listed = sum(1 for t in b.get("/v1/tasks", params={"limit": 500}).json()["items"]
                 if t["status"] == "succeeded")
    assert stats["counts"]["succeeded"] >= min(listed, 500) > 0
    throughput = stats["throughput"]
    assert throughput["bucket_s"] == 30
    assert throughput["since"] % 30 == 0  # buckets start on multiples of bucket_s: reads line up
    assert len(throughput["finished"]) in (20, 21)  # a bucket may begin between two clocks
    assert throughput["since"] + 30 * len(throughput["finished"]) >= stats["at"] >= asked - 5
    assert throughput["since"] <= stats["at"] - 570
    finished_at = b.get(f"/v1/tasks/{task_id}").json()["finished_at"]
    mine = math.floor((finished_at - throughput["since"]) / 30)
    assert throughput["finished"][mine] >= 1

    day = b.get("/v1/stats", params={"window_s": 86400, "bucket_s": 3600}).json()
    assert len(day["throughput"]["finished"]) in (24, 25)
    assert_client_error(b.get("/v1/stats", params={"bucket_s": 0}), 422, "bucket_s")
    assert_client_error(b.get("/v1/stats", params={"bucket_s": 3601}), 422, "bucket_s")
    assert_client_error(b.get("/v1/stats", params={"window_s": 86401}), 422, "window_s")
    assert_client_error(b.get("/v1/stats", params={"window_s": 86400, "bucket_s": 60}), 422,
                        "1440 buckets", "the most is 500")
    assert_client_error(api.client().get("/v1/stats"), 401)
