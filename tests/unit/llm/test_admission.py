"""vLLM admission (runtime/llm/vllm.py ``Admission``): priority first, with aging, so a stream of
high-priority requests cannot starve a low-priority one. No vLLM needed: the class is plain asyncio."""

from __future__ import annotations

import asyncio

from runtime.llm.vllm import Admission


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def _order(admission: Admission, clock: Clock, arrivals: list[tuple[float, str, int]]) -> list[str]:
    """Hold the one slot, queue ``arrivals`` (time, name, priority), then release one at a time."""
    await admission.acquire(0)
    admitted: list[str] = []

    async def wait(name: str, priority: int) -> None:
        await admission.acquire(priority)
        admitted.append(name)

    waiters = []
    for at, name, priority in arrivals:
        clock.now = at
        waiters.append(asyncio.create_task(wait(name, priority)))
        await asyncio.sleep(0)
    for _ in arrivals:
        admission.release()
        await asyncio.sleep(0)
        await asyncio.sleep(0)
    await asyncio.gather(*waiters)
    return admitted


def test_a_later_higher_priority_goes_first_within_the_aging_bound() -> None:
    clock = Clock()
    order = asyncio.run(_order(Admission(1, aging_per_s=1.0, clock=clock), clock,
                               [(0.0, "low", 0), (5.0, "high", 10)]))
    assert order == ["high", "low"]  # 5 s later, but 10 points higher: within (10 - 0) / 1 s


def test_a_low_priority_waiter_is_not_starved_by_later_high_priority_ones() -> None:
    clock = Clock()
    arrivals = [(0.0, "low", 0), *((11.0 + i, f"high{i}", 10) for i in range(5))]
    order = asyncio.run(_order(Admission(1, aging_per_s=1.0, clock=clock), clock, arrivals))
    assert order[0] == "low"  # the highs arrived more than 10 s after it: it has aged past them
    assert order[1:] == [f"high{i}" for i in range(5)]  # then first come, first served


def test_without_aging_priority_is_strict() -> None:
    clock = Clock()
    arrivals = [(0.0, "low", 0), (1000.0, "high", 1)]
    order = asyncio.run(_order(Admission(1, aging_per_s=0.0, clock=clock), clock, arrivals))
    assert order == ["high", "low"]


def test_a_cancelled_waiter_gives_up_its_place() -> None:
    async def run() -> list[str]:
        clock = Clock()
        admission = Admission(1, clock=clock)
        await admission.acquire(0)
        admitted: list[str] = []

        async def wait(name: str) -> None:
            await admission.acquire(0)
            admitted.append(name)

        gone = asyncio.create_task(wait("gone"))
        kept = asyncio.create_task(wait("kept"))
        await asyncio.sleep(0)
        gone.cancel()
        await asyncio.sleep(0)
        admission.release()
        await kept
        assert admission.queued == 0 and admission.active == 1
        return admitted

    assert asyncio.run(run()) == ["kept"]
