"""Human in the loop: a task parked on a signal holds no worker, resumes on the signal, also after a
restart, and times out when told to."""

from __future__ import annotations

import asyncio
from pathlib import Path

import ray

from runtime import TaskStatus
from runtime.durable.worker import WorkerHandle
from tests.conftest import count_lines, wait_for


def _workers_busy(rt) -> list[str]:
    async def active() -> list[str]:
        ids = await rt.workers.workers()
        infos = [await WorkerHandle(ray.get_actor(f"worker:{i}", namespace=rt.settings.namespace)).info()
                 for i in ids]
        return [t for info in infos for t in info["active"]]

    return asyncio.run(active())


def test_signal_resumes_a_parked_task_that_holds_no_worker(make_runtime, side_dir: Path) -> None:
    rt = make_runtime(workers=1, tasks_per_worker=1)
    client = rt.client()
    task = client.submit("approval", {"dir": str(side_dir)})
    wait_for(lambda: client.get(task.id).status is TaskStatus.WAITING, what="the task to park")
    parked = client.get(task.id)
    assert parked.owner is None and parked.waiting_for == "approve"
    assert _workers_busy(rt) == []
    # The only worker slot is free: another task runs to its end while the first one waits.
    assert client.wait(client.submit("echo", {"text": "x"}).id, 60).status is TaskStatus.SUCCEEDED

    client.signal(task.id, "approve", {"by": "alice"})
    done = client.wait(task.id, timeout_s=60)
    assert done.status is TaskStatus.SUCCEEDED
    assert done.output == {"approved": True, "decision": {"by": "alice"}}
    assert count_lines(side_dir / f"{task.id}.draft") == 1
    assert count_lines(side_dir / f"{task.id}.publish") == 1


def test_waiting_survives_a_restart_of_the_runtime(make_runtime, side_dir: Path) -> None:
    rt = make_runtime()
    client = rt.client()
    task = client.submit("approval", {"dir": str(side_dir)})
    wait_for(lambda: client.get(task.id).status is TaskStatus.WAITING, what="the task to park")
    rt.stop(shutdown_ray=False)

    client2 = make_runtime().client()
    assert client2.get(task.id).status is TaskStatus.WAITING  # recovery leaves it parked
    client2.signal(task.id, "approve", {"by": "bob"})
    done = client2.wait(task.id, timeout_s=60)
    assert done.output == {"approved": True, "decision": {"by": "bob"}}
    assert count_lines(side_dir / f"{task.id}.draft") == 1


def test_signal_sent_before_the_wait_is_kept(shared_runtime, side_dir: Path) -> None:
    client = shared_runtime().client()
    task = client.submit("approval", {"dir": str(side_dir)})
    client.signal(task.id, "approve", "early")
    done = client.wait(task.id, timeout_s=60)
    assert done.output == {"approved": True, "decision": "early"}


def test_wait_times_out_and_a_cancel_ends_a_waiting_task(shared_runtime, side_dir: Path) -> None:
    client = shared_runtime().client()
    timed = client.submit("approval", {"dir": str(side_dir), "timeout_s": 0.5})
    assert client.wait(timed.id, 60).output == {"approved": False, "reason": "timed out"}

    waiting = client.submit("approval", {"dir": str(side_dir)})
    wait_for(lambda: client.get(waiting.id).status is TaskStatus.WAITING, what="the task to park")
    assert client.cancel(waiting.id).status is TaskStatus.CANCELLED
