"""An engine's admission (runtime/llm/admission.py): priority first, with aging, so a stream of
high-priority requests cannot starve a low-priority one; within a priority, the task that has had the
least engine time first, aging bounding that too. No engine needed: the class is plain asyncio."""

from __future__ import annotations

import asyncio

from runtime.llm.admission import Admission, program_of


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def _order(admission: Admission, clock: Clock, arrivals: list[tuple[float, str, int]],
                 programs: dict[str, str] | None = None) -> list[str]:
    """Hold the one slot, queue ``arrivals`` (time, name, priority), then release one at a time.
    ``programs`` names each arrival's program (its task)."""
    await admission.acquire(0)
    admitted: list[str] = []

    async def wait(name: str, priority: int) -> None:
        await admission.acquire(priority, (programs or {}).get(name))
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


def test_within_a_priority_the_task_with_the_least_engine_time_goes_first() -> None:
    """A long task has had 5 s of engine time; a short task's first request, arriving later, goes
    ahead of the long task's next one; with no weight, arrival order holds."""
    def run(weight: float) -> list[str]:
        clock = Clock()
        admission = Admission(1, aging_per_s=1.0, service_weight=weight, clock=clock)
        admission._attained["long"] = 5.0
        return asyncio.run(_order(admission, clock, [(0.0, "long#9", 0), (1.0, "short#1", 0)],
                                  {"long#9": "long", "short#1": "short"}))

    assert run(1.0) == ["short#1", "long#9"]
    assert run(0.0) == ["long#9", "short#1"]


def test_aging_bounds_how_long_a_long_task_waits_behind_short_ones() -> None:
    """5 s of service is worth 5 s of waiting: a short request arriving 6 s after the long task's
    waits behind it."""
    clock = Clock()
    admission = Admission(1, aging_per_s=1.0, service_weight=1.0, clock=clock)
    admission._attained["long"] = 5.0
    order = asyncio.run(_order(admission, clock, [(0.0, "long#9", 0), (6.0, "short#1", 0)],
                               {"long#9": "long", "short#1": "short"}))
    assert order == ["long#9", "short#1"]


def test_a_slot_adds_the_time_held_to_its_tasks_service() -> None:
    async def body() -> None:
        clock = Clock()
        admission = Admission(2, service_weight=1.0, clock=clock)
        async with admission.slot(0, "task-1/agent:x/llm#1"):
            clock.now += 2.5
        async with admission.slot(0, "task-1/agent:x/llm#2"):
            clock.now += 0.5
        async with admission.slot(0, None):  # no task: nobody's service
            clock.now += 9.0
        assert admission.attained_s("task-1") == 3.0 and admission.active == 0

    asyncio.run(body())
    assert program_of("abc/llm:m:1") == "abc" and program_of("plain") is None
