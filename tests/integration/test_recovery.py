"""Failures during a run: a worker killed mid-step, an agent replica killed mid-message."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import ray

from runtime import TaskStatus
from tests.conftest import count_lines, wait_for


def test_worker_killed_during_step_4_resumes_at_step_4(make_runtime, side_dir: Path) -> None:
    rt = make_runtime(workers=2)
    client = rt.client()
    task = client.submit("five_steps", {"dir": str(side_dir), "gate_at": 4})
    wait_for(lambda: (side_dir / f"{task.id}.at_gate").exists(), what="step 4 to start")

    owner = client.get(task.id).owner
    assert owner is not None
    ray.kill(ray.get_actor(f"worker:{owner}", namespace=rt.settings.namespace), no_restart=True)
    # The pool notices the death, queues the task again and starts a new worker; let step 4 finish.
    wait_for(lambda: client.get(task.id).owner not in (None, owner) or client.get(task.id).runs > 1,
             what="the task to be claimed again")
    (side_dir / f"{task.id}.open").touch()

    done = client.wait(task.id, timeout_s=60)
    assert done.status is TaskStatus.SUCCEEDED, done.error
    assert done.runs == 2
    for step in (1, 2, 3):
        assert count_lines(side_dir / f"{task.id}.step{step}") == 1, f"step {step} ran again"
    assert count_lines(side_dir / f"{task.id}.step4") == 2  # interrupted once, then run to the end
    assert count_lines(side_dir / f"{task.id}.step5") == 1
    kinds = [e.kind for e in client.events(task.id)]
    assert "requeued" in kinds


def test_agent_killed_while_handling_is_handled_again(make_runtime, side_dir: Path) -> None:
    rt = make_runtime()
    client = rt.client()
    task = client.submit("agent_once", {"dir": str(side_dir)})
    pid_file = side_dir / f"{task.id}.slow_pid"
    wait_for(pid_file.exists, what="the agent to take the message")
    first_pid = int(pid_file.read_text())

    os.kill(first_pid, signal.SIGKILL)  # a real crash of the replica's process
    wait_for(lambda: count_lines(side_dir / f"{task.id}.slow_started") == 2, timeout_s=60,
             what="another replica to take the message again")
    assert int(pid_file.read_text()) != first_pid
    (side_dir / f"{task.id}.open").touch()

    done = client.wait(task.id, timeout_s=60)
    assert done.status is TaskStatus.SUCCEEDED, done.error
    assert done.output == "handled"
    assert done.runs == 1  # the workflow itself never restarted: only the message was redelivered
