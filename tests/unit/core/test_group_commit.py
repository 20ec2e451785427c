"""GroupCommit: concurrent calls share one send, each caller gets its own result or error."""

from __future__ import annotations

import asyncio

import pytest

from runtime.core.errors import QueueFull
from runtime.core.group_commit import GroupCommit


def test_calls_of_one_loop_turn_share_one_send_and_later_ones_wait_for_the_next() -> None:
    sent: list[list[int]] = []

    async def send(items: list[int]) -> list[int | BaseException]:
        sent.append(items)
        await asyncio.sleep(0.01)
        return [i * 10 for i in items]

    async def main() -> list[int]:
        commit = GroupCommit(send)
        first = asyncio.gather(*(commit(i) for i in range(5)))
        await asyncio.sleep(0.001)  # the first batch is in flight: these wait for the next one
        second = asyncio.gather(*(commit(i) for i in range(5, 8)))
        return [*await first, *await second]

    assert asyncio.run(main()) == [0, 10, 20, 30, 40, 50, 60, 70]
    assert sent == [[0, 1, 2, 3, 4], [5, 6, 7]]


def test_an_exception_as_a_result_fails_that_caller_only() -> None:
    async def send(items: list[int]) -> list[int | BaseException]:
        return [QueueFull("tasks", 1) if i == 1 else i for i in items]

    async def main() -> list[int | BaseException]:
        commit = GroupCommit(send)
        return await asyncio.gather(*(commit(i) for i in range(3)), return_exceptions=True)

    ok, full, also_ok = asyncio.run(main())
    assert ok == 0 and also_ok == 2 and isinstance(full, QueueFull)


def test_a_failed_send_fails_its_batch_and_the_next_batch_still_goes() -> None:
    calls = 0

    async def send(items: list[int]) -> list[int | BaseException]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("store down")
        return list(items)

    async def main() -> int:
        commit = GroupCommit(send)
        with pytest.raises(ConnectionError):
            await asyncio.gather(commit(1), commit(2))
        return await commit(3)

    assert asyncio.run(main()) == 3


def test_a_batch_stops_at_its_weight_and_the_rest_follow_in_order() -> None:
    sent: list[list[int]] = []

    async def send(items: list[int]) -> list[int | BaseException]:
        sent.append(items)
        return list(items)

    async def main() -> list[int]:
        commit = GroupCommit(send, weigh=lambda i: i, max_weight=10)
        return await asyncio.gather(*(commit(i) for i in (4, 5, 3, 20, 1, 2)))

    assert asyncio.run(main()) == [4, 5, 3, 20, 1, 2]
    # 4+5 fits, +3 would not; 3 alone, +20 would not; 20 alone (over, but a batch takes one); 1+2.
    assert sent == [[4, 5], [3], [20], [1, 2]]
