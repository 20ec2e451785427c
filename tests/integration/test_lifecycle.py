"""Priorities with aging, a full queue, idempotency keys, cancel, retries and retry from checkpoint."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from runtime import QueueFull, TaskStatus
from tests.conftest import count_lines, wait_for


def _block_worker(client, side_dir: Path) -> str:
    """Occupy the only worker slot with a task parked at a gate; returns its id."""
    blocker = client.submit("five_steps", {"dir": str(side_dir), "steps": 1, "gate_at": 1})
    wait_for(lambda: (side_dir / f"{blocker.id}.at_gate").exists(), what="the blocker to start")
    return blocker.id


def test_higher_priority_submitted_later_starts_first(make_runtime, side_dir: Path) -> None:
    rt = make_runtime(workers=1, tasks_per_worker=1, aging_per_s=0.01)
    client = rt.client()
    blocker = _block_worker(client, side_dir)
    low = [client.submit("echo", {"text": f"low{i}"}, priority=0) for i in range(3)]
    high = [client.submit("echo", {"text": f"high{i}"}, priority=10) for i in range(3)]
    (side_dir / f"{blocker}.open").touch()

    done = [client.wait(t.id, timeout_s=60) for t in low + high]
    assert all(t.status is TaskStatus.SUCCEEDED for t in done)
    order = [t.input["text"] for t in sorted(done, key=lambda t: t.started_at or 0)]
    assert order == ["high0", "high1", "high2", "low0", "low1", "low2"]


def test_aging_bounds_the_wait_of_a_low_priority_task(make_runtime, side_dir: Path) -> None:
    """Stated bound: a task of priority p never waits behind a task of priority q that arrived more
    than (q - p) / aging_per_s seconds after it. Here: 10 / 5 = 2 s, under a high-priority flood paced
    faster than the single worker drains it, so the queue never empties of higher-priority work."""
    aging_per_s, p, q = 5.0, 0, 10
    bound_s = (q - p) / aging_per_s
    rt = make_runtime(workers=1, tasks_per_worker=1, aging_per_s=aging_per_s)
    client = rt.client()
    blocker = _block_worker(client, side_dir)
    early = [client.submit("five_steps", {"dir": str(side_dir), "steps": 1, "sleep_s": 0.05},
                           priority=q) for _ in range(5)]
    low = client.submit("five_steps", {"dir": str(side_dir), "steps": 1, "sleep_s": 0.05}, priority=p)
    (side_dir / f"{blocker}.open").touch()
    flood = []
    start = time.monotonic()
    while not client.get(low.id).status.ended:
        # A load generator's pacing (40 submits/s), not a wait for a condition.
        time.sleep(max(0.0, start + len(flood) / 40 - time.monotonic()))
        flood.append(client.submit("five_steps", {"dir": str(side_dir), "steps": 1, "sleep_s": 0.05},
                                   priority=q))
        assert len(flood) < 2000, "the low-priority task starved"
    low_rec = client.get(low.id)
    assert low_rec.status is TaskStatus.SUCCEEDED
    ahead = [client.get(t.id) for t in early + flood]
    started_before = [t for t in ahead if t.started_at and t.started_at < low_rec.started_at]
    late = [t for t in started_before if t.created_at > low_rec.created_at + bound_s]
    assert not late, f"{len(late)} high-priority task(s) that arrived > {bound_s}s later went first"
    # And the flood really did outlast the bound, or the test proves nothing.
    assert max(t.created_at for t in ahead) > low_rec.created_at + bound_s
    assert any(t.created_at > low_rec.created_at for t in started_before)


def test_full_queue_refuses_and_keeps_what_it_accepted(make_runtime, side_dir: Path) -> None:
    rt = make_runtime(workers=1, tasks_per_worker=1, queue_capacity=3, tenant_queued_tasks=3)
    client = rt.client()
    blocker = _block_worker(client, side_dir)
    accepted = [client.submit("echo", {"text": str(i)}) for i in range(3)]
    with pytest.raises(QueueFull, match=r"queue 'tasks' is full \(3 items\); try again in"):
        client.submit("echo", {"text": "one too many"})
    (side_dir / f"{blocker}.open").touch()
    for task in accepted:
        assert client.wait(task.id, timeout_s=60).status is TaskStatus.SUCCEEDED
    assert len(client.list(workflow="echo")) == 3  # the refused one was never stored
    # The bound frees up as tasks leave the queue.
    assert client.wait(client.submit("echo", {"text": "later"}).id, 60).status is TaskStatus.SUCCEEDED


def test_cancel_a_queued_task_and_a_running_one_at_its_next_step(make_runtime, side_dir: Path) -> None:
    client = make_runtime(workers=1, tasks_per_worker=1).client()
    running = client.submit("five_steps", {"dir": str(side_dir), "gate_at": 2})
    wait_for(lambda: (side_dir / f"{running.id}.at_gate").exists(), what="step 2 to start")
    queued = client.submit("echo", {"text": "never"})

    assert client.cancel(queued.id).status is TaskStatus.CANCELLED
    assert client.cancel(running.id).cancel_requested
    (side_dir / f"{running.id}.open").touch()

    done = client.wait(running.id, timeout_s=60)
    assert done.status is TaskStatus.CANCELLED
    assert count_lines(side_dir / f"{running.id}.step2") == 1  # the step in flight finished...
    assert count_lines(side_dir / f"{running.id}.step3") == 0  # ...and the next one never started
    assert client.get(queued.id).started_at is None


def test_idempotency_key_returns_the_first_task(shared_runtime) -> None:
    client = shared_runtime().client()
    echoes = len(client.list(workflow="echo", limit=1000))
    key = uuid.uuid4().hex
    first = client.submit("echo", {"text": "a"}, idempotency_key=f"order-{key}")
    again = client.submit("echo", {"text": "a"}, idempotency_key=f"order-{key}")
    other = client.submit("echo", {"text": "a"}, idempotency_key=f"other-{key}")
    assert again.id == first.id and other.id != first.id
    client.wait(first.id, timeout_s=60)
    assert client.submit("echo", {"text": "a"}, idempotency_key=f"order-{key}").id == first.id
    assert len(client.list(workflow="echo", limit=1000)) == echoes + 2


def test_step_retries_with_exponential_backoff(shared_runtime, side_dir: Path) -> None:
    client = shared_runtime().client()
    task = client.submit("flaky", {"dir": str(side_dir), "fail_times": 2, "attempts": 3})
    done = client.wait(task.id, timeout_s=60)
    assert done.status is TaskStatus.SUCCEEDED and done.output == 3
    retries = [e for e in client.events(task.id) if e.kind == "step_retry"]
    assert [e.data["attempt"] for e in retries] == [1, 2]
    assert all(e.data["error_type"] == "ConnectionError" for e in retries)
    # initial 0.05 s, multiplier 2, jitter 10%: the second wait is about twice the first.
    assert 0.045 <= retries[0].data["delay_s"] <= 0.055
    assert 0.09 <= retries[1].data["delay_s"] <= 0.11


def test_failed_task_keeps_its_error_and_retries_from_its_checkpoint(shared_runtime,
                                                                     side_dir: Path) -> None:
    client = shared_runtime().client()
    task = client.submit("flaky", {"dir": str(side_dir), "fail_times": 100, "attempts": 2})
    failed = client.wait(task.id, timeout_s=60)
    assert failed.status is TaskStatus.FAILED
    assert "step 'flaky' failed after 2 attempt(s): ConnectionError: upstream down" in (failed.error or "")
    assert task.id in [t.id for t in client.list(status="failed", limit=1000)]

    (side_dir / f"{task.id}.heal").touch()  # the upstream recovers
    assert client.retry(task.id).status is TaskStatus.QUEUED
    done = client.wait(task.id, timeout_s=60)
    assert done.status is TaskStatus.SUCCEEDED and done.error is None
    assert count_lines(side_dir / f"{task.id}.before") == 1  # the checkpointed step did not run again
    assert count_lines(side_dir / f"{task.id}.flaky") == 3
