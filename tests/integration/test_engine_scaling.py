"""Engine replicas scale with the LLM requests in flight on them, and with the agent messages
waiting that will make model calls: a burst adds replicas (up to ``engine_replicas_max``), the
routers in the workers send requests to the new ones, and idle ones stop once the load does."""

from __future__ import annotations

import asyncio

from runtime import AgentPoolConfig, TaskStatus
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


def test_engines_grow_on_agent_messages_waiting_not_only_on_requests_in_flight(
        make_runtime) -> None:
    """One ``asker`` replica taking one message at a time keeps at most one request in flight on the
    engines, under the target of 4 that would add a replica; the messages waiting in its mailbox are
    the model calls to come, and they grow the engines (wanted = ceil((1 + waiting) / 4))."""
    rt = make_runtime(["tests.apps.llm"], simulated={"ttft_s": 0.5, "tpot_s": 0.001},
                      engine_replicas_max=3, engine_target_requests=4, engine_idle_s=3.0,
                      agents={"asker": AgentPoolConfig(min_replicas=1, max_replicas=1,
                                                       concurrency=1)})
    client = rt.client()
    namespace = rt.settings.namespace

    def replicas() -> list[str]:
        return sorted(h.name or "" for h in find_engines(namespace).get(MODEL, []))

    assert replicas() == [f"engine:{MODEL}:0"]
    burst = [client.submit("ask", {"question": f"q{i}", "max_tokens": 4}) for i in range(16)]
    grown = wait_for(lambda: (lambda r: r if len(r) >= 2 else None)(replicas()), timeout_s=60,
                     what="the engines to grow on the asker's waiting messages")
    print(f"replicas while the mailbox is deep: {grown}")
    done = [client.wait(t.id, timeout_s=120) for t in burst]
    assert all(t.status is TaskStatus.SUCCEEDED for t in done), [t.error for t in done]
    # Nothing was ever in flight beyond the one replica's one message: the growth came from demand.
    async def spans() -> list[tuple[float, float]]:
        handles = find_engines(namespace)[MODEL]
        got = await asyncio.gather(*(asyncio.wait_for(h.timeline(), 10) for h in handles),
                                   return_exceptions=True)
        return [span for t in got if not isinstance(t, BaseException) for span in t]

    served = asyncio.run(spans())
    assert served and max_overlap(served) <= 1, served
    wait_for(lambda: replicas() == [f"engine:{MODEL}:0"], timeout_s=60,
             what="the replicas added on demand to stop once the mailbox is empty")


def max_overlap(spans: list[tuple[float, float]]) -> int:
    """The most spans open at one instant."""
    edges = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans],
                   key=lambda e: (e[0], e[1]))
    most = now = 0
    for _, step in edges:
        now += step
        most = max(most, now)
    return most
