"""PriorityQueue (plain Python, a fake clock) and AsyncQueue's blocking get."""

from __future__ import annotations

import asyncio
import sys
import time

import pytest
import ray
from pydantic import BaseModel

from runtime.core.errors import QueueFull
from runtime.core.sizes import approx_size
from runtime.flow.queue import AsyncQueue, PriorityQueue


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def make_queue(clock: FakeClock, capacity: int = 100, aging_per_s: float = 0.0) -> PriorityQueue:
    return PriorityQueue("test", capacity, aging_per_s, clock=clock)


def ids(batch: list[tuple[str, object]]) -> list[str]:
    return [item_id for item_id, _ in batch]


# -- order ----------------------------------------------------------------------------------------


def test_higher_priority_first(clock: FakeClock) -> None:
    q = make_queue(clock)
    q.put_batch([("low", -5, "L"), ("mid", 0, "M"), ("high", 9, "H")])

    assert q.get_batch(10) == [("high", "H"), ("mid", "M"), ("low", "L")]
    assert len(q) == 0


def test_fifo_within_a_priority(clock: FakeClock) -> None:
    q = make_queue(clock, aging_per_s=1.0)
    for i in range(5):
        q.put_batch([(f"t{i}", 3, i)])
    q.put_batch([("t5", 3, 5), ("t6", 3, 6)])  # same instant, one batch

    assert ids(q.get_batch(10)) == [f"t{i}" for i in range(7)]


def tenant_queue(clock: FakeClock, aging_per_s: float = 0.0) -> PriorityQueue:
    return PriorityQueue("test", 1000, aging_per_s, clock=clock, group_of=lambda item: item)


def test_groups_take_turns_within_a_priority(clock: FakeClock) -> None:
    q = tenant_queue(clock, aging_per_s=1.0)
    q.put_batch([(f"a{i}", 0, "a") for i in range(5)])
    clock.advance(10)  # b and c come much later, at the same priority
    q.put_batch([("b0", 0, "b"), ("b1", 0, "b"), ("c0", 0, "c")])
    q.put_batch([("a-hi", 50, "a")])  # a higher priority than any aging: first

    # Then turns at priority 0, the tenant served longest ago (or never) first; each in its order.
    assert ids(q.get_batch(100)) == ["a-hi", "b0", "c0", "a0", "b1", "a1", "a2", "a3", "a4"]


def test_aging_still_decides_between_priorities_with_groups(clock: FakeClock) -> None:
    q = tenant_queue(clock, aging_per_s=1.0)
    q.put_batch([("a-old", 0, "a")])
    clock.advance(10)
    q.put_batch([("b-p5", 5, "b"), ("c-p0", 0, "c")])  # b's 5 is below a's 10 s of aging

    # a-old (priority 0, aged past 5) first; then b's priority 5, then c's 0.
    assert ids(q.get_batch(10)) == ["a-old", "b-p5", "c-p0"]


def test_a_group_served_last_waits_its_turn_even_when_it_comes_back(clock: FakeClock) -> None:
    q = tenant_queue(clock)
    q.put_batch([(f"a{i}", 0, "a") for i in range(3)] + [(f"b{i}", 0, "b") for i in range(3)])
    assert ids(q.get_batch(2)) == ["a0", "b0"]
    q.put_batch([("c0", 0, "c")])  # never served: its turn comes first
    assert ids(q.get_batch(3)) == ["c0", "a1", "b1"]


def test_trim_keeps_the_first_in_turns(clock: FakeClock) -> None:
    q = tenant_queue(clock)
    q.put_batch([(f"a{i}", 0, "a") for i in range(10)])
    q.put_batch([("b0", 0, "b"), ("b1", 0, "b")])

    assert q.trim(4) == {f"a{i}" for i in range(2, 10)}
    assert ids(q.get_batch(10)) == ["a0", "b0", "a1", "b1"]


def test_groups_keep_their_own_rank_order_over_many(clock: FakeClock) -> None:
    q = tenant_queue(clock, aging_per_s=1.0)
    for i in range(300):
        clock.advance(0.01)
        q.put_batch([(f"{'abc'[i % 3]}{i}", i % 4, "abc"[i % 3])])
    out = ids(q.get_batch(1000))
    assert len(out) == 300 and len(q) == 0
    for group in "abc":
        mine = [i for i in out if i[0] == group]
        keys = [0.01 * (int(i[1:]) + 1) * 1.0 - int(i[1:]) % 4 for i in mine]
        assert keys == sorted(keys)


def test_get_batch_takes_at_most_max_items(clock: FakeClock) -> None:
    q = make_queue(clock)
    q.put_batch([(f"t{i}", 0, i) for i in range(5)])

    assert ids(q.get_batch(2)) == ["t0", "t1"]
    assert ids(q.get_batch(0)) == []
    assert ids(q.get_batch(10)) == ["t2", "t3", "t4"]
    assert q.get_batch(10) == []


@pytest.mark.parametrize(("gap_s", "first"), [(10.5, "low"), (9.5, "high")])
def test_aging_bound(clock: FakeClock, gap_s: float, first: str) -> None:
    # Starvation bound: priority 0 waits behind priority 10 only if it arrived < (10-0)/1.0 s earlier.
    q = make_queue(clock, aging_per_s=1.0)
    q.put_batch([("low", 0, None)])
    clock.advance(gap_s)
    q.put_batch([("high", 10, None)])

    assert ids(q.get_batch(2))[0] == first


def test_without_aging_priority_alone_decides(clock: FakeClock) -> None:
    q = make_queue(clock, aging_per_s=0.0)
    q.put_batch([("low", 0, None)])
    clock.advance(1e6)
    q.put_batch([("high", 1, None)])

    assert ids(q.get_batch(2)) == ["high", "low"]


def test_since_backdates_an_item(clock: FakeClock) -> None:
    q = make_queue(clock, aging_per_s=1.0)
    q.put_batch([("fresh", 5, None)])
    # "old" has priority 0 but waited 20 s elsewhere: it has aged past "fresh".
    q.put_batch([("old", 0, None)], since={"old": clock.now - 20})

    assert ids(q.get_batch(2)) == ["old", "fresh"]


def test_since_in_the_future_is_clamped_to_now(clock: FakeClock) -> None:
    q = make_queue(clock, aging_per_s=1.0)
    q.put_batch([("a", 0, None)], since={"a": clock.now + 100})
    clock.advance(1)
    q.put_batch([("b", 0, None)])

    assert ids(q.get_batch(2)) == ["a", "b"]
    assert q.stats()["oldest_wait_s"] == 0.0


# -- bound and duplicates -------------------------------------------------------------------------


def test_bound_is_all_or_nothing(clock: FakeClock) -> None:
    q = make_queue(clock, capacity=3)
    q.put_batch([("a", 0, None), ("b", 0, None)])

    with pytest.raises(QueueFull) as info:
        q.put_batch([("c", 0, None), ("d", 0, None)])

    assert info.value.capacity == 3
    assert info.value.queue == "test"
    assert len(q) == 2
    assert q.total_put == 2
    assert ids(q.get_batch(10)) == ["a", "b"]


def test_bound_admits_exactly_capacity(clock: FakeClock) -> None:
    q = make_queue(clock, capacity=3)
    assert q.put_batch([("a", 0, None), ("b", 0, None), ("c", 0, None)]) == 3
    with pytest.raises(QueueFull):
        q.put_batch([("d", 0, None)])


def test_force_bypasses_the_bound(clock: FakeClock) -> None:
    q = make_queue(clock, capacity=1)
    q.put_batch([("a", 0, None)])

    assert q.put_batch([("b", 0, None), ("c", 0, None)], force=True) == 2
    assert len(q) == 3


def test_duplicate_ids_are_ignored(clock: FakeClock) -> None:
    q = make_queue(clock, capacity=2)
    q.put_batch([("a", 0, "first"), ("b", 0, "B")])

    # Already held: skipped, and does not count against the bound.
    assert q.put_batch([("a", 9, "second")]) == 0
    assert q.get_batch(10) == [("a", "first"), ("b", "B")]
    assert q.total_put == 2


def test_an_id_in_flight_is_not_queued_twice(clock: FakeClock) -> None:
    q = make_queue(clock)
    q.put_batch([("a", 0, "A")])
    q.get_batch(1, consumer="w1")

    assert q.put_batch([("a", 0, "again")]) == 0
    assert len(q) == 0
    assert q.in_flight == 1


def test_duplicate_ids_within_one_batch_are_ignored(clock: FakeClock) -> None:
    q = make_queue(clock)

    assert q.put_batch([("a", 0, "first"), ("a", 0, "second")]) == 1
    assert q.get_batch(10) == [("a", "first")]


# -- acknowledgements and redelivery --------------------------------------------------------------


def test_get_with_consumer_puts_items_in_flight_and_ack_removes_them(clock: FakeClock) -> None:
    q = make_queue(clock)
    q.put_batch([("a", 0, "A"), ("b", 0, "B")])

    assert q.get_batch(10, consumer="w1") == [("a", "A"), ("b", "B")]
    assert len(q) == 0
    assert q.in_flight == 2

    q.ack(["a", "unknown"])
    assert q.in_flight == 1
    q.ack(["b"])
    assert q.in_flight == 0
    assert q.requeue_consumer("w1") == 0
    assert len(q) == 0


def test_get_without_consumer_is_not_tracked(clock: FakeClock) -> None:
    q = make_queue(clock)
    q.put_batch([("a", 0, "A")])
    q.get_batch(1)

    assert q.in_flight == 0


def test_requeue_consumer_restores_original_order(clock: FakeClock) -> None:
    q = make_queue(clock, aging_per_s=1.0)
    q.put_batch([("a", 5, None), ("b", 5, None), ("c", 1, None)])
    taken = ids(q.get_batch(2, consumer="w1"))  # a, b
    q.get_batch(1, consumer="w2")  # c
    clock.advance(1)
    q.put_batch([("d", 5, None)])

    assert q.requeue_consumer("w1") == 2
    assert q.in_flight == 1  # w2's item stays
    assert ids(q.get_batch(10)) == [*taken, "d"]
    assert q.requeue_consumer("w1") == 0


def test_requeue_expired_restores_only_past_deadline(clock: FakeClock) -> None:
    q = make_queue(clock)
    q.put_batch([("a", 0, None), ("b", 0, None), ("c", 0, None)])
    q.get_batch(2, consumer="w1", visibility_s=10)  # a, b
    clock.advance(5)
    q.get_batch(1, consumer="w2", visibility_s=10)  # c

    clock.advance(5)
    assert q.requeue_expired() == 0  # a, b deadline reached but not passed
    clock.advance(0.1)
    assert q.requeue_expired() == 2
    assert ids(q.get_batch(10)) == ["a", "b"]
    assert q.in_flight == 1
    clock.advance(10)
    assert q.requeue_expired() == 1
    assert ids(q.get_batch(10)) == ["c"]


# -- stats and size -------------------------------------------------------------------------------


def test_stats(clock: FakeClock) -> None:
    q = make_queue(clock, capacity=10)
    assert q.stats() == {"name": "test", "depth": 0, "in_flight": 0, "capacity": 10, "total_put": 0,
                         "bytes": 0, "max_item_bytes": 0, "oldest_wait_s": 0.0}

    q.put_batch([("a", 0, b"x" * 100)])
    clock.advance(3)
    q.put_batch([("b", 0, "yy"), ("c", 0, "z")])
    q.get_batch(1, consumer="w1")  # takes a
    clock.advance(2)

    stats = q.stats()
    assert stats["depth"] == 2
    assert stats["in_flight"] == 1
    assert stats["total_put"] == 3
    assert stats["max_item_bytes"] == 100
    assert stats["bytes"] == 103  # queued and in flight
    assert stats["oldest_wait_s"] == pytest.approx(2.0)


def test_a_queue_bounded_in_bytes_refuses_what_would_pass_them(clock: FakeClock) -> None:
    q = PriorityQueue("box", 100, 0.0, clock=clock, capacity_bytes=1000)
    q.put_batch([("a", 0, b"x" * 600)])
    with pytest.raises(QueueFull, match="box"):
        q.put_batch([("b", 0, b"y" * 500)])  # few items, too many bytes
    q.put_batch([("a", 0, b"x" * 600)])  # held already: nothing new
    q.get_batch(1, consumer="w1")
    with pytest.raises(QueueFull):
        q.put_batch([("b", 0, b"y" * 500)])  # in flight still holds its bytes
    q.ack(["a"])
    q.put_batch([("b", 0, b"y" * 500)])
    assert q.stats()["bytes"] == 500
    assert q.get_batch(1) and q.stats()["bytes"] == 0  # taken without a consumer: gone


class Inner(BaseModel):
    blob: bytes
    tags: list[str]


class Outer(BaseModel):
    name: str
    inner: Inner
    ref: object = None


def test_approx_size_counts_bytes() -> None:
    assert approx_size(b"x" * 1000) == 1000
    assert approx_size("abc") == 3
    assert approx_size(bytearray(10)) == 10
    assert approx_size({"k": "vv"}) == 3
    assert approx_size(["ab", ("cd", {"e"})]) == 5
    assert approx_size(12) == sys.getsizeof(12)


def test_approx_size_of_an_object_ref_is_its_id_only() -> None:
    ref: ray.ObjectRef = ray.ObjectRef(b"\x01" * 28)  # constructing one needs no cluster

    assert approx_size(ref) == 28
    assert approx_size([ref] * 10) == 280


def test_approx_size_walks_nested_pydantic_models() -> None:
    model = Outer(name="n", inner=Inner(blob=b"x" * 5000, tags=["t" * 100]))

    size = approx_size(model)

    assert 5100 <= size < 5300
    assert approx_size({"payload": model}) == size + len("payload")


def test_approx_size_is_bounded_for_deep_or_cyclic_values() -> None:
    cyclic: list[object] = []
    cyclic.append(cyclic)

    assert approx_size(cyclic) == 28


def test_max_item_bytes_tracks_largest_item(clock: FakeClock) -> None:
    q = make_queue(clock)
    q.put_batch([("a", 0, Outer(name="n", inner=Inner(blob=b"x" * 4000, tags=[])))])
    q.put_batch([("b", 0, "small")])

    assert 4000 <= q.stats()["max_item_bytes"] < 4200


# -- AsyncQueue -----------------------------------------------------------------------------------


def test_async_get_returns_empty_after_timeout() -> None:
    async def main() -> tuple[list[tuple[str, object]], float]:
        aq = AsyncQueue(PriorityQueue("async", 10, 0.0))
        start = time.monotonic()
        got = await aq.get_batch(5, timeout_s=0.05)
        return got, time.monotonic() - start

    got, elapsed = asyncio.run(main())

    assert got == []
    assert 0.04 <= elapsed < 2.0


def test_async_get_returns_at_once_when_items_are_there() -> None:
    async def main() -> list[tuple[str, object]]:
        aq = AsyncQueue(PriorityQueue("async", 10, 0.0))
        aq.put_batch([("a", 0, "A"), ("b", 1, "B")])
        return await aq.get_batch(5, timeout_s=0)

    assert asyncio.run(main()) == [("b", "B"), ("a", "A")]


def test_async_get_wakes_when_another_coroutine_puts() -> None:
    async def main() -> list[tuple[str, object]]:
        aq = AsyncQueue(PriorityQueue("async", 10, 0.0))
        getter = asyncio.create_task(aq.get_batch(5, timeout_s=30, consumer="w1"))
        await asyncio.sleep(0)  # let the getter block on the empty queue
        assert not getter.done()
        aq.put_batch([("a", 0, "A")])
        got = await asyncio.wait_for(getter, timeout=5)
        assert aq.queue.in_flight == 1
        return got

    assert asyncio.run(main()) == [("a", "A")]


def test_async_get_leaves_the_rest_for_the_next_getter() -> None:
    async def main() -> tuple[list[tuple[str, object]], list[tuple[str, object]]]:
        aq = AsyncQueue(PriorityQueue("async", 10, 0.0))
        first = asyncio.create_task(aq.get_batch(1, timeout_s=30))
        second = asyncio.create_task(aq.get_batch(1, timeout_s=30))
        await asyncio.sleep(0)
        aq.put_batch([("a", 0, "A"), ("b", 0, "B")])
        return await asyncio.wait_for(asyncio.gather(first, second), timeout=5)

    first, second = asyncio.run(main())

    assert sorted(first + second) == [("a", "A"), ("b", "B")]
