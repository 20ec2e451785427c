"""With PostgreSQL, processes reach the database directly: the Store actor is off the path of a task.

The test freezes the Store actor's process (SIGSTOP) and shows that submits, claims, steps, event
streams and results all go on without it; on the actor path, each of them would wait for it."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from runtime import Runtime, TaskStatus
from tests.faults import Kind, pick


def test_tasks_run_end_to_end_while_the_store_actor_is_frozen(make_runtime, side_dir: Path) -> None:
    rt: Runtime = make_runtime(store="postgres")
    assert rt.settings.postgres_direct
    client = rt.client()
    warm = client.submit("five_steps", {"dir": str(side_dir), "steps": 2})
    assert client.wait(warm.id, timeout_s=60).status is TaskStatus.SUCCEEDED

    store = pick(Kind.STORE, rt.settings.namespace)
    assert store is not None
    os.kill(store.pid, signal.SIGSTOP)
    try:
        tasks = [client.submit("five_steps", {"dir": str(side_dir), "steps": 5}) for _ in range(4)]
        done = [client.wait(t.id, timeout_s=90) for t in tasks]
        # An event stream, woken by NOTIFY: every step of every task, in order.
        kinds = [e.kind for e in client.events(tasks[0].id)]
    finally:
        os.kill(store.pid, signal.SIGCONT)

    assert [t.status for t in done] == [TaskStatus.SUCCEEDED] * 4
    assert [t.output for t in done] == [{"done": 5}] * 4
    assert kinds.count("step") == 5 and kinds[0] == "submitted" and kinds[-1] == "succeeded"
    for task in tasks:  # each step ran once: one line in each step's file
        runs = {p.name: p.read_text().count("x") for p in side_dir.glob(f"{task.id}.step*")}
        assert runs == {f"{task.id}.step{i}": 1 for i in range(1, 6)}
