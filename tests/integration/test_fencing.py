"""Fencing per claim: a worker frozen past its lease comes back to find its run replaced, and the
stale run writes nothing (the Store refuses its lease token) and stops."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import ray

from runtime import TaskStatus
from runtime.durable.worker import WorkerHandle
from tests.conftest import count_lines, wait_for


def actor_pid(name: str, namespace: str) -> int:
    """The pid of the live actor registered as ``name`` (from the GCS; no dashboard needed)."""
    actor_id = ray.get_actor(name, namespace=namespace)._actor_id.hex()
    return int(ray._private.state.actors()[actor_id]["Pid"])


def test_a_worker_frozen_past_its_lease_cannot_record_and_stops(make_runtime, side_dir: Path) -> None:
    rt = make_runtime(workers=2, tasks_per_worker=2, lease_s=3.0)
    client = rt.client()
    task = client.submit("five_steps", {"dir": str(side_dir), "gate_at": 2})
    marks = lambda name: count_lines(side_dir / f"{task.id}.{name}")  # noqa: E731
    wait_for(lambda: marks("at_gate") == 1, what="the first run to reach step 2")
    first = client.get(task.id)
    pid = actor_pid(f"worker:{first.owner}", rt.settings.namespace)

    os.kill(pid, signal.SIGSTOP)
    try:
        # Its lease runs out; the other worker claims the task (a new token) and reaches step 2 too.
        wait_for(lambda: client.get(task.id).runs == 2 and marks("at_gate") == 2, timeout_s=60,
                 what="the task to be claimed again by the other worker")
        second = client.get(task.id)
        assert second.owner != first.owner
        (side_dir / f"{task.id}.open").write_text("")
        done = client.wait(task.id, timeout_s=60)
        assert done.status is TaskStatus.SUCCEEDED
    finally:
        os.kill(pid, signal.SIGCONT)  # the frozen run wakes with its step 2 done, and a stale lease

    # The stale run tries to record step 2 and is refused, so it never reaches step 3: the first
    # run's work after the freeze is lost, never recorded over the second's.
    stale = WorkerHandle(ray.get_actor(f"worker:{first.owner}", namespace=rt.settings.namespace))
    wait_for(lambda: asyncio.run(stale.info())["active"] == [], timeout_s=30,
             what="the frozen worker to let its stale run go")
    stale_window_end = client.get(task.id)
    events = list(client.events(task.id))
    assert [e.data["key"] for e in events if e.kind == "step"].count("s2") == 1
    assert [marks(f"step{i}") for i in (1, 3, 4, 5)] == [1, 1, 1, 1]
    assert stale_window_end.status is TaskStatus.SUCCEEDED and stale_window_end.runs == 2
    # and the frozen worker is alive and works again
    more = client.submit("five_steps", {"dir": str(side_dir), "steps": 1})
    assert client.wait(more.id, timeout_s=60).status is TaskStatus.SUCCEEDED
