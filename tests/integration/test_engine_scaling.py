"""Engine replicas scale with the LLM requests in flight on them: a burst adds replicas (up to
``engine_replicas_max``), the routers in the workers send requests to the new ones, and idle ones
stop once the load does."""

from __future__ import annotations

import asyncio

from runtime import TaskStatus
from runtime.llm.engine import find_engines
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

    async def served() -> dict[str, int]:
        # A replica the pool stops between the listing and the question (a pending one it no
        # longer wants) has served nothing: it is left out.
        handles = find_engines(namespace)[MODEL]
        timelines = await asyncio.gather(*(asyncio.wait_for(h.timeline(), 10) for h in handles),
                                         return_exceptions=True)
        return {h.name or "": len(t) for h, t in zip(handles, timelines, strict=True)
                if not isinstance(t, BaseException)}

    # The routers in the workers look the replicas up again when a request comes 2 s or more after
    # their last look: waves of requests (at most six) until the added replicas have served some.
    done = [client.wait(t.id, timeout_s=120) for t in burst]
    counts: dict[str, int] = {}
    for n in range(6):
        wave = [client.submit("chatty", {"text": f"wave {n}.{i}"}) for i in range(12)]
        done += [client.wait(t.id, timeout_s=120) for t in wave]
        counts = asyncio.run(served())
        if len(counts) == 3 and all(c > 0 for c in counts.values()):
            break
    print(f"requests per replica: {counts}")
    assert all(t.status is TaskStatus.SUCCEEDED for t in done)
    added = {name: c for name, c in counts.items() if not name.endswith(":0")}
    assert len(added) == 2 and all(c > 0 for c in added.values()), counts
    wait_for(lambda: replicas() == [f"engine:{MODEL}:0"], timeout_s=60,
             what="the idle replicas to stop")
    # The fixed replica still serves.
    assert client.wait(client.submit("chatty", {"text": "after"}).id, 60).status is \
        TaskStatus.SUCCEEDED
