"""Token events of many streamed requests in one process leave as one Store call per interval."""

from __future__ import annotations

import asyncio
from typing import Any

from runtime.core.errors import LeaseLost
from runtime.core.models import Lease
from runtime.llm.engine import TokenSink


class RecordingStore:
    """Records each append_events call; refuses the events of a lease it is told is stale."""

    def __init__(self, stale: Lease | None = None) -> None:
        self.calls: list[list[tuple[str, str, dict[str, Any], Lease | None]]] = []
        self.stale = stale

    async def append_events(self, events: list[tuple[str, str, dict[str, Any], Lease | None]]
                            ) -> list[Any]:
        self.calls.append(list(events))
        return [LeaseLost(e[0], "w") if e[3] == self.stale else i for i, e in enumerate(events)]


def test_many_requests_share_one_store_call_per_interval() -> None:
    store = RecordingStore()

    async def request(n: int) -> None:
        on_text, flush = TokenSink(store, f"t{n}", "chat", every_s=0.05).writer()
        for i in range(20):
            await on_text(f"{n}.{i} ")
            await asyncio.sleep(0.01)
        await flush()

    async def body() -> None:
        await asyncio.gather(*(request(n) for n in range(16)))

    asyncio.run(body())

    sent = [e for call in store.calls for e in call]
    for n in range(16):  # every request's text arrives whole, its pieces numbered in order
        mine = [e[2] for e in sent if e[0] == f"t{n}"]
        assert "".join(d["text"] for d in mine) == "".join(f"{n}.{i} " for i in range(20))
        assert [d["n"] for d in mine] == list(range(1, len(mine) + 1))
    # About 0.2 s of text at 0.05 s a tick: a handful of shared calls plus one last one per
    # request, not a call per request per tick (16 x 4 = 64) or per piece (320).
    assert len(store.calls) <= 16 + 10, len(store.calls)
    assert max(len(call) for call in store.calls) >= 8


def test_a_stale_runs_text_is_dropped_without_failing_the_others() -> None:
    stale = Lease("t0", "w", 1)
    store = RecordingStore(stale)

    async def body() -> None:
        writers = [TokenSink(store, f"t{n}", "chat", every_s=0.01,
                             lease=stale if n == 0 else Lease(f"t{n}", "w", 1)).writer()
                   for n in range(3)]
        for on_text, _ in writers:
            await on_text("hello")
        await asyncio.sleep(0.05)
        for _, flush in writers:
            await flush()

    asyncio.run(body())
    assert {e[0] for call in store.calls for e in call} == {"t0", "t1", "t2"}
