"""A full queue and a tenant's queued-bytes and queued-tasks bounds over HTTP, on a small
`raysquad up` of its own.

It runs after the HTTP suites that share a server (the file sorts after them), so that server is
already stopped: two runtimes at once on two cores slow each other down.
"""

from __future__ import annotations

from pathlib import Path

from tests.e2e.live import Api, raysquad_up
from tests.e2e.test_http import (
    assert_client_error,
    at_gate,
    get_task,
    list_all,
    open_gate,
    submit,
    wait_status,
)


def test_a_full_queue_is_429_with_retry_after_and_accepted_tasks_all_finish(
        tmp_path: Path) -> None:
    side = tmp_path / "side"
    side.mkdir()
    with raysquad_up(tmp_path / "small", RAYSQUAD_QUEUE_CAPACITY="4", RAYSQUAD_WORKERS="1",
                     RAYSQUAD_TASKS_PER_WORKER="1", RAYSQUAD_TENANT_QUEUED_BYTES="50000",
                     RAYSQUAD_TENANT_QUEUED_TASKS="2") as url:
        small = Api(url, side)
        c, other = small.client("key-a"), small.client("key-b")
        try:
            blocker = submit(c, "five_steps", {"dir": str(side), "gate_at": 1})["id"]
            at_gate(small, blocker)  # the only worker's only slot is taken
            # Each tenant's queued input bytes are bounded: a's second 30 KB input is one too many,
            # while b still has room of its own.
            big = {"text": "x" * 30_000}
            accepted = [blocker, submit(c, "echo", big)["id"]]
            before = {t["id"] for t in list_all(c, 500)}
            over = c.post("/v1/tasks", json={"workflow": "echo", "input": big})
            assert_client_error(over, 429, "tenant-a", "50000")
            assert int(over.headers["retry-after"]) >= 1
            assert {t["id"] for t in list_all(c, 500)} == before  # nothing committed
            accepted.append(submit(other, "echo", big)["id"])
            # Each tenant's queued tasks are bounded too: a fills its two, and b is still let in
            # (one tenant cannot fill the queue for all).
            accepted.append(submit(c, "echo", {"text": "a2"})["id"])
            mine = c.post("/v1/tasks", json={"workflow": "echo", "input": {"text": "a3"}})
            assert_client_error(mine, 429, "tenant-a", "2 tasks", "tenant_queued_tasks")
            assert int(mine.headers["retry-after"]) >= 1
            accepted.append(submit(other, "echo", {"text": "b2"})["id"])
            # Now the queue itself is full (four), for every tenant.
            refused = other.post("/v1/tasks", json={"workflow": "echo", "input": {"text": "b3"}})
            assert len(accepted) == 1 + 4  # the running task and a queue of four
            assert_client_error(refused, 429, "full", "4 items")
            assert int(refused.headers["retry-after"]) >= 1
            owners = [c, c, other, c, other]
            assert all(get_task(o, t)["status"] == "queued" for o, t in zip(owners, accepted, strict=True)
                       if t != blocker)

            open_gate(small, blocker)
            for owner, task_id in zip(owners, accepted, strict=True):
                assert wait_status(owner, task_id, "succeeded", "failed", "cancelled")[
                    "status"] == "succeeded"
            assert submit(c, "echo", big)["status"] == "queued"  # room again, bytes too
        finally:
            c.close()
            other.close()
