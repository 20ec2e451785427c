"""Agent pools grow with their mailbox's backlog up to max_replicas, shrink to zero when idle, and wake
when work arrives."""

from __future__ import annotations

import asyncio
from pathlib import Path

from runtime import AgentPoolConfig, TaskStatus
from tests.conftest import wait_for


def test_pool_scales_from_zero_to_max_and_back(make_runtime, side_dir: Path) -> None:
    pool_config = AgentPoolConfig(min_replicas=0, max_replicas=3, concurrency=2, target_backlog=2,
                                  idle_s=1.0)
    rt = make_runtime(agents={"elastic": pool_config})
    client = rt.client()
    pool = rt.pools["elastic"]
    replicas = lambda: asyncio.run(pool.stats())["replicas"]  # noqa: E731
    assert replicas() == 0  # idle from the start: no actor held

    tasks = [client.submit("elastic_call", {"dir": str(side_dir)}) for _ in range(8)]
    wait_for(lambda: replicas() == 3, timeout_s=60, what="the pool to grow to max_replicas")
    mailbox = rt.mailboxes["elastic"]
    # 3 replicas x concurrency 2 hold six messages; two wait in the mailbox.
    wait_for(lambda: asyncio.run(mailbox.stats())["in_flight"] == 6, timeout_s=60,
             what="three replicas to take two messages each")
    assert asyncio.run(mailbox.stats())["depth"] == 2
    assert replicas() == 3  # and never more than max_replicas

    (side_dir / "elastic.open").touch()
    done = [client.wait(t.id, timeout_s=60) for t in tasks]
    assert all(t.status is TaskStatus.SUCCEEDED for t in done)
    assert len({t.output for t in done}) == 3  # the work was spread over three processes
    wait_for(lambda: replicas() == 0, timeout_s=60, what="the idle pool to shrink to zero")

    woke = client.submit("elastic_call", {"dir": str(side_dir)})  # work arrives: the pool wakes
    assert client.wait(woke.id, timeout_s=60).status is TaskStatus.SUCCEEDED
    assert asyncio.run(pool.stats())["started"] == 4
