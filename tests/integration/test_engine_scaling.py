"""Engine replicas scale with the LLM requests in flight on them: a burst adds replicas (up to
``engine_replicas_max``), the routers in the workers send requests to the new ones, and idle ones
stop once the load does."""

from __future__ import annotations

import asyncio

from runtime import TaskStatus
from runtime.engines.actor import find_engines
from tests.conftest import wait_for

MODEL = "sim-small"


def test_engines_grow_with_requests_in_flight_and_shrink_when_idle(make_runtime) -> None:
    rt = make_runtime(simulated={"ttft_s": 2.0, "tpot_s": 0.001}, engine_replicas_max=3,
                      engine_target_requests=4, engine_idle_s=4.0)
    client = rt.client()
    namespace = rt.settings.namespace

    def replicas() -> list[str]:
        return [h.name or "" for h in find_engines(namespace).get(MODEL, [])]

    assert replicas() == [f"engine:{MODEL}:0"]
    burst = [client.submit("chatty", {"text": f"burst {i}"}) for i in range(24)]
    wait_for(lambda: len(replicas()) == 3, timeout_s=60, what="three engine replicas")
    # The routers look the replicas up again every 2 s: a second wave spreads over all three.
    wave = [client.submit("chatty", {"text": f"wave {i}"}) for i in range(24)]
    done = [client.wait(t.id, timeout_s=120) for t in burst + wave]
    assert all(t.status is TaskStatus.SUCCEEDED for t in done)

    async def served() -> dict[str, int]:
        handles = find_engines(namespace)[MODEL]
        return {h.name or "": len(await h.timeline()) for h in handles}

    counts = asyncio.run(served())
    print(f"requests per replica: {counts}")
    added = {n: c for n, c in counts.items() if not n.endswith(":0")}
    assert added and all(c > 0 for c in added.values()), counts
    wait_for(lambda: replicas() == [f"engine:{MODEL}:0"], timeout_s=60,
             what="the idle replicas to stop")
    # The fixed replica still serves.
    assert client.wait(client.submit("chatty", {"text": "after"}).id, 60).status is \
        TaskStatus.SUCCEEDED
