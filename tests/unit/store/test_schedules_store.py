"""Schedules in the Store (store/schedules.py) and the scheduler's round (runtime/events/schedules.py) over
it, on SQLite and on PostgreSQL, both real: a tenant's bounds, lists a page at a time, a tick put
off, a schedule paused with its reason; a round that a failing schedule does not stop, that leaves
a tick due on a passing failure, moves past a refused one, reaches past put-off schedules and
catches up a long-missed schedule at once.

The round runs in this process over the Store service the events actor uses (the Store actor's
class on SQLite, the direct PostgreSQL store), with no Ray; ``Failing`` makes a tenant's submits
fail as a Store outage or a full queue would."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

from runtime.authoring.catalog import Catalog
from runtime.core.config import Settings
from runtime.core.errors import (
    ActorUnavailable,
    InputTooLarge,
    InvalidSchedule,
    QueueFull,
    StoreError,
)
from runtime.core.models import Schedule, SubmitRequest, TaskRecord
from runtime.events.schedules import LEASE_S, MIN_WAIT_S, Scheduler, prev_tick, tick_key
from runtime.store.actor import StoreActor
from runtime.store.direct import DirectStore
from tests.unit.stores import T0, AnyStore

EVERY_MINUTE = "* * * * *"


def schedule(schedule_id: str, next_at: float, tenant: str = "default", cron: str = EVERY_MINUTE,
             **more: Any) -> Schedule:
    return Schedule(id=schedule_id, tenant=tenant, workflow="tick", cron=cron, next_at=next_at,
                    created_at=next_at, updated_at=next_at, **more)


# -- the Store ------------------------------------------------------------------------------------


def got(store: AnyStore, schedule_id: str, tenant: str = "default") -> Schedule:
    found = store.get_schedule(tenant, schedule_id)
    assert found is not None
    return found


def test_a_tenant_keeps_at_most_its_share_of_schedules(store: AnyStore) -> None:
    store.put_schedule(schedule("a", T0, tenant="t"), 2)
    store.put_schedule(schedule("b", T0, tenant="t"), 2)
    with pytest.raises(InvalidSchedule, match=r"tenant 't' has 2 schedules.*max_schedules_per_tenant"):
        store.put_schedule(schedule("c", T0, tenant="t"), 2)
    kept, created = store.put_schedule(schedule("b", T0, tenant="t", cron="0 * * * *"), 2)
    assert not created and kept.cron == "0 * * * *"  # a replacement is not one more
    store.put_schedule(schedule("c", T0, tenant="other"), 2)
    assert [s.id for s in store.list_schedules("t")] == ["a", "b"]


def test_schedules_are_listed_a_page_at_a_time(store: AnyStore) -> None:
    for n in range(5):
        store.put_schedule(schedule(f"s{n}", T0, tenant="t"))
    store.put_schedule(schedule("s9", T0, tenant="other"))
    first = store.list_schedules("t", 2)
    rest = store.list_schedules("t", 2, first[-1].id)
    last = store.list_schedules("t", 2, rest[-1].id)
    assert [s.id for s in first + rest + last] == ["s0", "s1", "s2", "s3", "s4"]
    assert [s.id for s in store.list_schedules("t", 10, "s4")] == []


def test_a_tick_put_off_stays_due_and_comes_back_at_its_time(store: AnyStore) -> None:
    store.put_schedule(schedule("late", T0))
    store.put_schedule(schedule("next", T0 + 10))
    assert store.defer_schedule("default", "late", T0, T0 + 30, T0)
    assert not store.defer_schedule("default", "late", T0 - 60, T0 + 30, T0)  # not its tick
    # Put off: the one behind it comes first, and the scheduler's next look is its time.
    assert [s.id for s in store.due_schedules(T0 + 20, 10)] == ["next"]
    assert got(store, "late").next_at == T0  # the tick itself has not moved
    assert [s.id for s in store.due_schedules(T0 + 30, 10)] == ["next", "late"]
    store.advance_schedule("default", "next", T0 + 10, T0 + 70, T0 + 10, None, T0 + 10)
    assert store.next_schedule_at() == T0 + 30
    store.advance_schedule("default", "late", T0, T0 + 60, T0, None, T0 + 30)
    assert store.next_schedule_at() == T0 + 60  # moved on: due at its next tick again


def test_a_schedule_paused_by_the_scheduler_keeps_the_reason_until_its_owner_acts(
        store: AnyStore) -> None:
    store.put_schedule(schedule("s", T0))
    assert not store.halt_schedule("default", "s", T0 - 60, "stale", T0)  # not its tick: no-op
    assert store.halt_schedule("default", "s", T0, "InvalidSchedule: no tick after", T0)
    halted = got(store, "s")
    assert halted.paused and halted.paused_reason == "InvalidSchedule: no tick after"
    assert store.due_schedules(T0 + 3600, 10) == [] and store.next_schedule_at() is None
    resumed = store.pause_schedule("default", "s", False, T0 + 60, T0)
    assert resumed is not None and not resumed.paused and resumed.paused_reason is None
    assert store.halt_schedule("default", "s", T0 + 60, "again", T0)
    redefined, _ = store.put_schedule(schedule("s", T0 + 120, cron="0 * * * *"))
    assert not redefined.paused and redefined.paused_reason is None


# -- the Store service: a tenant's bounds, decided before anything is written ----------------------


def in_loop(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """An async test, run on an event loop of its own."""
    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(test(*args, **kwargs))
    return run


@pytest.fixture(params=["sqlite", "postgres"])
def make_service(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """Opens the Store service for settings (the Store actor's class on SQLite, the direct store
    on PostgreSQL), on one database per test."""
    opened: list[Any] = []
    url = (request.getfixturevalue("postgres_backend").url if request.param == "postgres"
           else None)

    def make(**more: Any) -> Any:
        if url is None:
            service: Any = StoreActor(Settings(data_dir=tmp_path / "state", **more))
        else:
            service = DirectStore(Settings(data_dir=tmp_path / "state", store="postgres",
                                           postgres_url=url, **more))
        opened.append(service)
        return service

    yield make
    for service in opened:
        service._store.close()


@in_loop
async def test_a_tenants_schedule_is_admitted_within_its_bounds(make_service: Any) -> None:
    service = make_service(api_keys={"k1": "t", "k2": "boss"}, admin_tenants=("boss",),
                           max_input_bytes=100, max_schedules_per_tenant=2)
    with pytest.raises(InvalidSchedule, match="every 2 s.*at most every 60 s"):
        await service.put_schedule(schedule("fast", T0, tenant="t", cron="* * * * * */2"))
    await service.put_schedule(schedule("fast", T0, tenant="boss", cron="* * * * * *"))  # an admin
    await service.put_schedule(schedule("app", T0, tenant="t", cron="* * * * * *"), limited=False)
    with pytest.raises(InputTooLarge):  # each tick's task would be refused for it
        await service.put_schedule(schedule("big", T0, tenant="t", input={"x": "y" * 200}))
    await service.put_schedule(schedule("a", T0, tenant="t"))
    with pytest.raises(InvalidSchedule, match="max_schedules_per_tenant"):
        await service.put_schedule(schedule("b", T0, tenant="t"))
    assert [s.id for s in await service.list_schedules("t")] == ["a", "app"]


@in_loop
async def test_without_api_keys_every_caller_may_tick_by_the_second(make_service: Any) -> None:
    service = make_service()
    await service.put_schedule(schedule("fast", T0, tenant="t", cron="* * * * * *"))


# -- the scheduler's round --------------------------------------------------------------------------


class Failing:
    """The Store service, but a submit for a tenant in ``failing`` raises that tenant's error."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.failing: dict[str, Exception] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def submit(self, req: SubmitRequest) -> tuple[TaskRecord, bool]:
        if req.tenant in self.failing:
            raise self.failing[req.tenant]
        return await self.inner.submit(req)


async def rounds_until(scheduler: Scheduler, condition: Callable[[], Awaitable[Any]],
                       timeout_s: float = 15.0) -> Any:
    """Run rounds until ``condition`` holds (as the scheduler's loop would, woken at once)."""
    deadline = time.monotonic() + timeout_s
    while not (value := await condition()):
        assert time.monotonic() < deadline, "timed out waiting for a condition"
        await scheduler.round()
        await asyncio.sleep(0.05)
    return value


def scheduler_over(make_service: Any, **more: Any) -> tuple[Scheduler, Failing]:
    settings = Settings(schedule_grace_s=120.0, **more)
    store = Failing(make_service(**more))
    return Scheduler(settings, store, Catalog()), store


def due_now() -> float:
    """A tick of EVERY_MINUTE that has just passed (within the grace)."""
    return prev_tick(EVERY_MINUTE, "UTC", time.time())


@pytest.mark.parametrize("error", [
    StoreError("the store is unavailable (OperationalError)"),
    ActorUnavailable("store", 60.0, retry_after_s=0.5),
    QueueFull("tasks", 10, retry_after_s=0.5),
], ids=["StoreError", "ActorUnavailable", "QueueFull"])
@in_loop
async def test_a_passing_failure_leaves_the_tick_due_and_it_runs_later(
        make_service: Any, error: Exception) -> None:
    scheduler, store = scheduler_over(make_service)
    tick = due_now()
    await store.put_schedule(schedule("flaky", tick, tenant="a"))
    await store.put_schedule(schedule("fine", tick, tenant="b"))
    store.failing["a"] = error

    await scheduler.round()
    flaky, fine = await store.get_schedule("a", "flaky"), await store.get_schedule("b", "fine")
    assert fine.last_task_id is not None and fine.next_at > tick  # the others fire
    assert (flaky.next_at, flaky.last_task_id, flaky.paused) == (tick, None, False)  # still due
    assert "flaky" not in [s.id for s in await store.due_schedules(100)]  # put off meanwhile

    del store.failing["a"]  # the Store is back
    task_id = await rounds_until(
        scheduler, lambda: _last_task(store, "a", "flaky"))
    task = await store.get_task(task_id)
    assert task.idempotency_key == tick_key("flaky", tick)  # that tick, not skipped


async def _last_task(store: Any, tenant: str, schedule_id: str) -> str | None:
    return (await store.get_schedule(tenant, schedule_id)).last_task_id


@in_loop
async def test_a_tick_refused_for_what_it_is_moves_on(make_service: Any) -> None:
    scheduler, store = scheduler_over(make_service, max_input_bytes=100)
    tick = due_now()
    # Kept before the bound was checked at creation: each tick's task is too large.
    await store.put_schedule(schedule("big", tick, input={"x": "y" * 200}), limited=False)
    await scheduler.round()
    big = await store.get_schedule("default", "big")
    assert big.next_at > tick and big.last_task_id is None and not big.paused
    assert await store.list_tasks() == []


@in_loop
async def test_one_failing_schedule_is_paused_with_its_reason_and_the_others_fire(
        make_service: Any) -> None:
    scheduler, store = scheduler_over(make_service)
    tick = due_now()
    # Kept before year fields were refused: its last tick has passed, there is no next one.
    await store.put_schedule(schedule("yearly", 1_577_836_800.0, cron="0 0 1 1 * 0 2020"),
                             limited=False)
    # Its task cannot even be asked for (a tenant name no request may carry): not our error.
    await store.put_schedule(schedule("odd", tick, tenant="bad\x01tenant"), limited=False)
    await store.put_schedule(schedule("fine", tick))

    await scheduler.round()
    yearly, odd = await store.get_schedule("default", "yearly"), await store.get_schedule(
        "bad\x01tenant", "odd")
    assert yearly.paused and "InvalidSchedule" in (yearly.paused_reason or "")
    assert "no tick after" in (yearly.paused_reason or "")
    assert odd.paused and "ValidationError" in (odd.paused_reason or "")
    assert (await store.get_schedule("default", "fine")).last_task_id is not None
    assert [s.id for s in await store.due_schedules(100)] == []


@in_loop
async def test_schedules_put_off_do_not_keep_the_round_from_the_others(make_service: Any) -> None:
    """More schedules than a round takes are refused by a full queue; the one due after them is
    still reached (it used to wait behind the same hundred forever)."""
    scheduler, store = scheduler_over(make_service)
    tick = due_now()
    for n in range(120):
        await store.put_schedule(schedule(f"s{n:03}", tick - 60, tenant="full"))
    await store.put_schedule(schedule("other", tick, tenant="other"))
    store.failing["full"] = QueueFull("tenant full", 10, retry_after_s=60.0)

    assert await scheduler.round() == 0.0  # a full batch: more are due, go on at once
    await scheduler.round()
    assert (await store.get_schedule("other", "other")).last_task_id is not None
    full = await store.list_schedules("full")
    assert all(s.next_at == tick - 60 and not s.paused for s in full)
    # Only put-off ticks remain, a minute away: the next round waits, no busy loop.
    assert await scheduler.round() >= MIN_WAIT_S


@in_loop
async def test_a_long_missed_schedule_is_caught_up_at_once(make_service: Any) -> None:
    scheduler, store = scheduler_over(make_service)
    now = time.time()
    a_year_ago = now - 366 * 86400
    await store.put_schedule(schedule("once", a_year_ago, cron="* * * * * *", catch_up="once"))
    await store.put_schedule(schedule("skip", a_year_ago, cron="* * * * * *"))

    started = time.monotonic()
    await scheduler.round()
    assert time.monotonic() - started < 2.0  # it walked 30 million ticks one by one before
    once, skip = await store.get_schedule("default", "once"), await store.get_schedule(
        "default", "skip")
    # The latest tick is within the grace: on time, whatever the policy; the year before is not.
    for s in (once, skip):
        assert s.last_tick is not None and s.last_tick >= now - 2 and s.next_at > now
    assert len(await store.list_tasks()) == 2


@in_loop
async def test_a_round_with_nothing_due_waits(make_service: Any) -> None:
    scheduler, store = scheduler_over(make_service)
    assert await scheduler.round() == LEASE_S / 4
    await store.put_schedule(schedule("later", time.time() + 1.0))
    assert MIN_WAIT_S <= await scheduler.round() <= 1.0
