"""The dispatcher's, the workers' and the pools' logic over in-process stand-ins for their handles.

No Ray: the Store is a ``StoreActor`` on a temporary SQLite file called in this process (it has the
handle's methods), the dispatcher a ``Dispatcher`` object, pool members coroutines a test ends.
"""

from __future__ import annotations

import asyncio
import pickle
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
import ray

from runtime.actors.handles import ActorHandle
from runtime.authoring.agent import Agent
from runtime.authoring.workflow import StepDefaults
from runtime.core.config import AgentPoolConfig, Settings
from runtime.core.errors import ActorUnavailable, LeaseLost
from runtime.core.models import AgentMessage, Claim, SubmitRequest, TaskRecord, TaskStatus
from runtime.durable.dispatch import Dispatcher
from runtime.durable.worker import WorkerPool, WorkflowWorker
from runtime.flow.queue import QueueActor
from runtime.llm.engine import Router
from runtime.replicas.replica import AgentPool
from runtime.store.actor import StoreActor
from runtime.tools.executor import ToolRouter
from runtime.tools.registry import Registry

APPS = ["tests.apps.basic"]


def settings(tmp_path: Path, **more: Any) -> Settings:
    return Settings(data_dir=tmp_path / "state", lease_s=5.0, sweep_interval_s=0.05, **more)


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(coro)


async def until(condition: Callable[[], Any], timeout_s: float = 10.0) -> Any:
    """Poll ``condition`` on the event loop until it is truthy; fail after ``timeout_s``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not (value := condition()):
        if loop.time() > deadline:
            raise AssertionError("timed out waiting for a condition")
        await asyncio.sleep(0.01)
    return value


async def submit(store: StoreActor, workflow: str, input: dict[str, Any],
                 priority: int = 0, tenant: str = "default") -> TaskRecord:
    (result,) = await store.submit_tasks(
        [(uuid.uuid4().hex, SubmitRequest(workflow=workflow, input=input, priority=priority,
                                          tenant=tenant))])
    assert not isinstance(result, BaseException)
    return result[0]


# -- the dispatcher ---------------------------------------------------------------------------------


def test_dispatcher_claims_by_priority_and_fences_each_claim(tmp_path: Path) -> None:
    async def body() -> None:
        store = StoreActor(settings(tmp_path))
        dispatcher = Dispatcher(settings(tmp_path), store, APPS)
        low = await submit(store, "echo", {"text": "low"}, priority=0)
        high = await submit(store, "echo", {"text": "high"}, priority=5)
        await dispatcher.start()
        claims = await dispatcher.get_tasks("w1", 1, 1.0)
        assert [c.task.id for c in claims] == [high.id]
        assert claims[0].lease.owner == "w1" and claims[0].lease.token == 1
        (second,) = await dispatcher.get_tasks("w1", 1, 1.0)
        assert second.task.id == low.id

    run(body())


def test_tenants_take_turns_at_a_priority_whatever_came_first(tmp_path: Path) -> None:
    """Tenant a queues 30 tasks, then b 3 and c 1 at the same priority: b's and c's are claimed
    among the first, not behind all of a's; each tenant's own in its rank order; and a higher
    priority still goes first. The window is smaller than the backlog (the trim keeps turns too)."""
    async def body() -> None:
        config = settings(tmp_path, dispatch_window=12, aging_per_s=0.0, queue_capacity=1000,
                          tenant_queued_tasks=100)
        store = StoreActor(config)
        dispatcher = Dispatcher(config, store, APPS)
        await dispatcher.start()
        for i in range(30):
            await submit(store, "echo", {"text": f"a{i}"}, tenant="a")
        for i in range(3):
            await submit(store, "echo", {"text": f"b{i}"}, tenant="b")
        await submit(store, "echo", {"text": "c0"}, tenant="c")
        await submit(store, "echo", {"text": "a-urgent"}, priority=5, tenant="a")
        await until(lambda: len(dispatcher.queue.queue) >= 12)
        claimed: list[str] = []
        while claims := await dispatcher.get_tasks("w1", 1, 0.5):
            claimed += [c.task.input["text"] for c in claims]
        assert claimed[0] == "a-urgent"
        # Then turns at priority 0, the tenant served longest ago (or never) first.
        assert claimed[1:8] == ["b0", "c0", "a0", "b1", "a1", "b2", "a2"]
        assert [t for t in claimed if t.startswith("a") and t != "a-urgent"] == [
            f"a{i}" for i in range(30)]
        assert len(claimed) == 35

    run(body())


def test_a_backlog_larger_than_the_window_is_claimed_in_rank_order(tmp_path: Path) -> None:
    """60 tasks queued before start and 20 submitted while claiming, a window of 10: the
    dispatcher never holds much more than 10, and every claim takes the Store's best-ranked
    queued task (priority with aging, the oldest first among equals)."""
    async def body() -> None:
        config = settings(tmp_path, dispatch_window=10, aging_per_s=0.0, queue_capacity=1000)
        store = StoreActor(config)
        dispatcher = Dispatcher(config, store, APPS)
        for i in range(60):
            await submit(store, "echo", {"text": str(i)}, priority=i % 7)
        await dispatcher.start()
        assert len(dispatcher.queue.queue) <= 10 and (await dispatcher.stats())["beyond"]
        claimed: list[TaskRecord] = []
        while True:
            best = await store.queued_index(1)
            claims = await dispatcher.get_tasks("w1", 1, 0.5)
            if not claims:
                break
            assert [c.task.id for c in claims] == [best[0][0]]  # the Store's first in rank order
            claimed += [c.task for c in claims]
            if len(claimed) == 30:  # late arrivals: the highest priority goes to the front
                for i in range(20):
                    await submit(store, "echo", {"text": f"late{i}"}, priority=9 if i < 3 else 0)
                await until(lambda: len(dispatcher.queue.queue) >= 10)
            assert len(dispatcher.queue.queue) <= 11
        assert len(claimed) == 80 and len({t.id for t in claimed}) == 80
        assert [t.input["text"] for t in claimed[30:33]] == ["late0", "late1", "late2"]
        priorities = [t.priority for t in claimed[33:]]
        assert priorities == sorted(priorities, reverse=True)

    run(body())


def test_a_lost_worker_gets_nothing_more_and_its_tasks_go_back(tmp_path: Path) -> None:
    async def body() -> None:
        store = StoreActor(settings(tmp_path))
        dispatcher = Dispatcher(settings(tmp_path), store, APPS)
        task = await submit(store, "echo", {"text": "x"})
        await dispatcher.start()
        (claim,) = await dispatcher.get_tasks("w1", 1, 1.0)
        assert await dispatcher.worker_lost("w1") == 1
        assert await dispatcher.get_tasks("w1", 1, 0.1) == []  # a ghost's pending call takes nothing
        (again,) = await dispatcher.get_tasks("w2", 1, 1.0)
        assert again.task.id == task.id and again.lease.token == claim.lease.token + 1
        assert (await store.get_task(task.id)).crashes == 1

    run(body())


def test_a_restarted_dispatcher_rebuilds_its_index_and_leaves_running_tasks_alone(
        tmp_path: Path) -> None:
    async def body() -> None:
        store = StoreActor(settings(tmp_path))
        first = Dispatcher(settings(tmp_path), store, APPS)
        running = await submit(store, "echo", {"text": "a"})
        await first.start()
        (claim,) = await first.get_tasks("w1", 1, 1.0)
        queued = await submit(store, "echo", {"text": "b"})

        # The first dispatcher dies with its memory; a new one starts as Ray restarts it.
        second = Dispatcher(settings(tmp_path), store, APPS)
        assert await second.start(recover=False) == 1
        (next_claim,) = await second.get_tasks("w2", 1, 1.0)
        assert next_claim.task.id == queued.id
        assert (await store.get_task(running.id)).owner == "w1"  # not taken from its live worker
        assert await store.renew("w1", {running.id: claim.lease.token}, 5.0) == {running.id: False}

    run(body())


def test_a_restarted_worker_pool_frees_the_tasks_of_workers_gone_with_it(tmp_path: Path) -> None:
    async def body() -> None:
        store = StoreActor(settings(tmp_path))
        dispatcher = Dispatcher(settings(tmp_path), store, APPS)
        a = await submit(store, "echo", {"text": "a"})
        b = await submit(store, "echo", {"text": "b"})
        await dispatcher.start()
        await dispatcher.get_tasks("old-1", 1, 1.0)
        await dispatcher.get_tasks("live-1", 1, 1.0)
        assert await dispatcher.workers_replaced(["live-1"]) == 1
        assert all(t.crashes == 0 for t in await store.list_tasks())  # they died with the pool
        statuses = {t.id: (t.status, t.owner) for t in [await store.get_task(a.id),
                                                           await store.get_task(b.id)]}
        assert sorted(statuses.values(), key=str) == sorted(
            [(TaskStatus.QUEUED, None), (TaskStatus.RUNNING, "live-1")], key=str)

    run(body())


# -- the worker -------------------------------------------------------------------------------------


class OneShotDispatcher:
    """Hands out the claims it is given, once each; then nothing."""

    def __init__(self, claims: list[Claim]) -> None:
        self.claims = list(claims)

    async def get_tasks(self, owner: str, max_tasks: int, timeout_s: float) -> list[Claim]:
        if not self.claims:
            await asyncio.sleep(0.01)
            return []
        out, self.claims = self.claims[:max_tasks], self.claims[max_tasks:]
        return out


def worker(tmp_path: Path, store: StoreActor, dispatcher: Any) -> WorkflowWorker:
    return WorkflowWorker("w1", settings(tmp_path), APPS, store, dispatcher, {}, Router({}),
                          ToolRouter(Registry(), []))


def test_a_worker_runs_a_claim_to_its_end_under_its_lease(tmp_path: Path) -> None:
    async def body() -> None:
        store = StoreActor(settings(tmp_path))
        side = tmp_path / "side"
        side.mkdir()
        task = await submit(store, "five_steps", {"dir": str(side), "steps": 3})
        claims = await store.claim([task.id], "w1", 5.0)
        w = worker(tmp_path, store, OneShotDispatcher(claims))
        loop = asyncio.create_task(w.run())
        done = await until(lambda: w.completed)
        await w.stop()
        await loop
        record = await store.get_task(task.id)
        assert done == 1 and record.status is TaskStatus.SUCCEEDED and record.output == {"done": 3}

    run(body())


def test_a_stale_run_stops_and_a_worker_never_runs_two_runs_of_one_task(tmp_path: Path) -> None:
    async def body() -> None:
        store = StoreActor(settings(tmp_path))
        side = tmp_path / "side"
        side.mkdir()
        task = await submit(store, "five_steps", {"dir": str(side), "steps": 2, "gate_at": 1})
        (first,) = await store.claim([task.id], "w1", 5.0)
        w = worker(tmp_path, store, OneShotDispatcher([]))
        await w._start(first)
        await until(lambda: (side / f"{task.id}.at_gate").exists())

        # The lease runs out (the worker stalled) and the same worker claims the task again.
        await store.release_owner("w1")
        (second,) = await store.claim([task.id], "w1", 5.0)
        assert second.lease.token == first.lease.token + 1
        await w._start(second)
        assert len(w._runs) == 1 and w._runs[task.id].lease == second.lease

        (side / f"{task.id}.open").write_text("")
        await until(lambda: w.completed)
        final = await store.get_task(task.id)
        assert final.status is TaskStatus.SUCCEEDED
        with pytest.raises(LeaseLost):
            await store.record_step(first.lease, "s1", b"stale")

    run(body())


def test_a_claim_whose_steps_do_not_decode_is_abandoned_not_fatal(tmp_path: Path) -> None:
    async def body() -> None:
        store = StoreActor(settings(tmp_path, max_task_crashes=2))
        task = await submit(store, "echo", {"text": "x"})
        (claim,) = await store.claim([task.id], "w1", 5.0)
        broken = claim.model_copy(update={"steps": {"echo": pickle.dumps(1)[:-3]}})
        w = worker(tmp_path, store, OneShotDispatcher([]))
        await w._start(broken)
        assert w._runs == {}
        assert (await store.get_task(task.id)).status is TaskStatus.QUEUED
        (claim2,) = await store.claim([task.id], "w2", 5.0)
        await w._start(claim2.model_copy(update={"steps": broken.steps}))
        failed = await store.get_task(task.id)
        assert failed.status is TaskStatus.FAILED and "cannot be read" in (failed.error or "")

    run(body())


def test_a_cancel_reaches_the_run_which_ends_at_its_next_step(tmp_path: Path) -> None:
    async def body() -> None:
        store = StoreActor(settings(tmp_path))
        side = tmp_path / "side"
        side.mkdir()
        task = await submit(store, "five_steps", {"dir": str(side), "steps": 3, "gate_at": 1})
        (claim,) = await store.claim([task.id], "w1", 5.0)
        w = worker(tmp_path, store, OneShotDispatcher([]))
        assert not await w.cancel(task.id)  # not running here yet
        await w._start(claim)
        await until(lambda: (side / f"{task.id}.at_gate").exists())
        assert await w.cancel(task.id)
        (side / f"{task.id}.open").write_text("")
        await until(lambda: w.completed)
        assert (await store.get_task(task.id)).status is TaskStatus.CANCELLED
        assert not (side / f"{task.id}.step2").exists() and w._runs == {}

    run(body())


def test_a_run_whose_lease_is_gone_stops_and_writes_nothing_more(tmp_path: Path) -> None:
    async def body() -> None:
        store = StoreActor(settings(tmp_path))
        side = tmp_path / "side"
        side.mkdir()
        task = await submit(store, "five_steps", {"dir": str(side), "steps": 2, "gate_at": 1})
        (claim,) = await store.claim([task.id], "w1", 5.0)
        w = worker(tmp_path, store, OneShotDispatcher([]))
        await w._start(claim)
        await until(lambda: (side / f"{task.id}.at_gate").exists())
        await store.release_owner("w1")  # the lease runs out while the worker stalls
        await w.renew_once()
        await until(lambda: not w._runs)
        (side / f"{task.id}.open").write_text("")
        record = await store.get_task(task.id)
        assert w.completed == 0 and record.status is TaskStatus.QUEUED
        assert not (side / f"{task.id}.step2").exists()

    run(body())


def test_a_run_takes_its_step_defaults_from_the_settings_and_its_workflow(tmp_path: Path) -> None:
    async def body() -> None:
        config = settings(tmp_path, agent_timeout_s=5, step_timeout_s=9,
                          tools={"step_timeout_s": 7}, default_model="m")
        store = StoreActor(config)
        task = await submit(store, "echo", {"text": "x"})
        (claim,) = await store.claim([task.id], "w1", 5.0)
        w = WorkflowWorker("w1", config, APPS, store, OneShotDispatcher([]), {}, Router({}),
                           ToolRouter(Registry(), []))
        details = w._details(claim.task, claim.lease, {})
        assert details.defaults == StepDefaults(config.retry, "m", 9, 5, 7)
        assert details.lease == claim.lease and details.peers.store is store

    run(body())


# -- the pools --------------------------------------------------------------------------------------


class FakeMember:
    """A pool member whose loop ends when the test says (it "dies")."""

    def __init__(self, member_id: str) -> None:
        self.id = member_id
        self.ended = asyncio.Event()
        self.stopped = False
        self.killed = False

    async def run(self, *_: Any) -> int:
        await self.ended.wait()
        return 0

    async def stop(self) -> None:
        self.stopped = True
        self.ended.set()

    async def idle_s(self) -> float:
        return 3600.0

    async def load(self) -> dict[str, Any]:
        return {"active": 0, "idle_s": 3600.0}

    async def kill(self) -> None:
        self.killed = True
        self.ended.set()


class RecordingDispatcher:
    def __init__(self) -> None:
        self.lost: list[str] = []
        self.replaced: list[list[str]] = []

    async def worker_lost(self, owner: str, crashed: bool = True) -> int:
        self.lost.append(owner)
        return 0

    async def workers_replaced(self, live: list[str]) -> int:
        self.replaced.append(live)
        return 0


def test_the_worker_pool_replaces_a_dead_worker_and_releases_its_leases(tmp_path: Path) -> None:
    async def body() -> None:
        members: dict[str, FakeMember] = {}

        def spawn(worker_id: str) -> FakeMember:
            members[worker_id] = FakeMember(worker_id)
            return members[worker_id]

        dispatcher = RecordingDispatcher()
        pool = WorkerPool(settings(tmp_path, workers=2), APPS, None, dispatcher, {},  # type: ignore[arg-type]
                          Router({}), ToolRouter(Registry(), []), spawner=spawn)
        live = await pool.start()
        assert dispatcher.replaced == [live] and len(live) == 2
        victim = live[0]
        members[victim].ended.set()  # the worker dies
        await until(lambda: dispatcher.lost == [victim] and len(pool.members) == 2)
        assert victim not in await pool.workers() and len(members) == 3

    run(body())


class PendingMember(FakeMember):
    """A member no node has room for: it never answers."""

    async def load(self) -> dict[str, Any]:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


class BacklogDispatcher(RecordingDispatcher):
    def __init__(self) -> None:
        super().__init__()
        self.depth = 0

    async def stats(self) -> dict[str, Any]:
        return {"depth": self.depth}


def test_the_worker_pool_grows_on_backlog_and_shrinks_pending_workers_first(tmp_path: Path) -> None:
    async def body() -> None:
        members: dict[str, FakeMember] = {}

        def spawn(worker_id: str) -> FakeMember:
            # The third worker finds no node with room: it stays pending.
            members[worker_id] = (PendingMember if len(members) == 2 else FakeMember)(worker_id)
            return members[worker_id]

        dispatcher = BacklogDispatcher()
        config = settings(tmp_path, workers=1, workers_max=3, worker_target_backlog=2,
                          worker_idle_s=0.0)
        pool = WorkerPool(config, APPS, None, dispatcher, {},  # type: ignore[arg-type]
                          Router({}), ToolRouter(Registry(), []), spawner=spawn)
        await pool.start()
        assert len(pool.members) == 1
        dispatcher.depth = 5  # 5 queued / 2 per worker -> 3, the most allowed
        assert await pool.tick() == 3 and len(pool.members) == 3
        dispatcher.depth = 9
        assert await pool.tick() == 3 and len(pool.members) == 3  # capped
        dispatcher.depth = 0  # the load stops: back to the minimum, the pending one first
        assert await pool.tick() == 1
        await until(lambda: len(pool.members) == 1)
        first, second, pending = members.values()
        assert pending.killed and not pending.stopped
        assert second.stopped or first.stopped
        # Retired workers held nothing: their leases are released as not crashed; their processes
        # are ended once their loop has returned.
        assert sorted(dispatcher.lost) == sorted(m.id for m in members.values() if m.ended.is_set())
        await until(lambda: all(m.killed for m in members.values() if m.stopped))
        await pool.stop()

    run(body())


def test_an_agent_pool_grows_with_backlog_and_frees_what_dead_replicas_held(tmp_path: Path) -> None:
    async def body() -> None:
        mailbox = QueueActor("agent:x", 100, 0.0)
        await mailbox.put_batch([(f"m{i}", 0, i) for i in range(6)])
        # A replica of an earlier life of the pool took two messages and died with it.
        assert len(await mailbox.get_batch("x-old", 2, 0.1)) == 2
        members: dict[str, FakeMember] = {}

        def spawn(replica_id: str) -> FakeMember:
            members[replica_id] = FakeMember(replica_id)
            return members[replica_id]

        config = AgentPoolConfig(min_replicas=0, max_replicas=3, target_backlog=2, idle_s=0.0)
        pool = AgentPool("x", Agent, config, settings(tmp_path), mailbox, None, Router({}),
                         spawner=spawn)
        await pool.start()
        assert (await mailbox.stats())["in_flight"] == 0  # given back at the pool's start
        await pool.tick()
        assert len(pool.members) == 3  # 6 waiting / 2 per replica, capped at 3
        taken = await mailbox.get_batch(next(iter(members)), 6, 0.1)
        await mailbox.ack([item_id for item_id, _ in taken])
        await pool.tick()  # nothing waiting and every replica idle: back to the minimum
        assert all(m.stopped for m in members.values())
        if pool._loop is not None:
            pool._loop.cancel()

    run(body())


class DyingMember(FakeMember):
    """A member whose process is killed: its loop raises, as an actor's death does."""

    async def run(self, *_: Any) -> int:
        await self.ended.wait()
        if not self.stopped:
            raise ray.exceptions.ActorDiedError()
        return 0


class PostedEvents:
    """The Store as far as a pool tells tasks things: the events it posts."""

    def __init__(self) -> None:
        self.posted: list[tuple[str, str, dict[str, Any]]] = []

    def post_event(self, task_id: str, kind: str, data: dict[str, Any], lease: Any = None) -> None:
        self.posted.append((task_id, kind, data))


def test_an_agent_pool_replaces_a_dead_replica_at_once_and_tells_its_tasks(tmp_path: Path) -> None:
    async def body() -> None:
        mailbox = QueueActor("agent:x", 100, 0.0)
        messages = [AgentMessage(id=f"m{i}", role="x", task_id=f"t{i}", step_key="agent:x")
                    for i in range(2)]
        await mailbox.put_batch([(m.id, 0, m) for m in messages])
        members: dict[str, DyingMember] = {}

        def spawn(replica_id: str) -> DyingMember:
            members[replica_id] = DyingMember(replica_id)
            return members[replica_id]

        store = PostedEvents()
        config = AgentPoolConfig(min_replicas=1, max_replicas=1, target_backlog=2, idle_s=3600.0)
        pool = AgentPool("x", Agent, config, settings(tmp_path), mailbox, store, Router({}),
                         spawner=spawn)
        await pool.start()
        (victim,) = members
        assert len(await mailbox.get_batch(victim, 2, 0.1)) == 2
        members[victim].ended.set()  # SIGKILL
        await until(lambda: len(members) == 2 and len(store.posted) == 4)
        replacement = next(r for r in members if r != victim)
        assert replacement in pool.members.live and victim not in pool.members.live
        assert (await pool.stats())["replaced"] == 1
        assert (await mailbox.stats())["depth"] == 2  # both delivered again
        for m in messages:
            assert (m.task_id, "replica.replaced", {"role": "x", "old_replica": victim,
                                                    "new_replica": replacement}) in store.posted
            assert (m.task_id, "redelivered", {
                "role": "x", "step": "agent:x", "message_id": m.id, "replica": victim,
                "reason": "its replica died"}) in store.posted
        if pool._loop is not None:
            pool._loop.cancel()

    run(body())


# -- the handles ------------------------------------------------------------------------------------


class FlakyMethod:
    """An actor method whose first ``failures`` calls meet a restarting actor."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    def remote(self, *args: Any) -> Awaitable[Any]:
        self.calls += 1

        async def answer() -> Any:
            if self.calls <= self.failures:
                raise ray.exceptions.ActorUnavailableError("restarting", None)
            return args

        return answer()


class FlakyActor:
    def __init__(self, failures: int) -> None:
        self.ping = FlakyMethod(failures)


def test_a_handle_rides_out_a_restart_for_repeatable_calls_only() -> None:
    actor = FlakyActor(failures=3)
    handle = ActorHandle(actor, "flaky", deadline_s=5.0)
    assert run(handle._call("ping", 1)) == (1,)
    assert actor.ping.calls == 4

    once = ActorHandle(FlakyActor(failures=1), "flaky")
    with pytest.raises(ActorUnavailable):
        run(once._call("ping", idempotent=False))

    never = ActorHandle(FlakyActor(failures=10**6), "flaky", deadline_s=0.3)
    with pytest.raises(ActorUnavailable) as raised:
        run(never._call("ping"))
    assert raised.value.actor == "flaky"


# -- engines that autoscale ---------------------------------------------------------------------


class FakeEngine:
    def __init__(self, load: int = 0, pending: bool = False) -> None:
        self.in_flight = load
        self.pending = pending
        self.killed = False

    async def load(self, deadline_s: float | None = None) -> int:
        if self.pending:
            await asyncio.Event().wait()
        return self.in_flight

    async def kill(self) -> None:
        self.killed = True


def test_engine_replicas_follow_the_requests_in_flight(tmp_path: Path) -> None:
    from runtime.llm.pool import EnginePool

    async def body() -> None:
        replicas: dict[int, FakeEngine] = {0: FakeEngine(load=10)}

        def spawn(index: int) -> FakeEngine:
            replicas[index] = FakeEngine(pending=index == 2)  # no node has room for the third
            return replicas[index]

        def find() -> dict[int, FakeEngine]:
            return {i: r for i, r in replicas.items() if not r.killed}

        config = settings(tmp_path, engine_replicas_max=3, engine_target_requests=4,
                          engine_idle_s=0.0)
        pool = EnginePool(config, "sim-small", find, spawn)
        assert await pool.tick() == 3  # 10 in flight / 4 per replica, capped at 3
        assert sorted(find()) == [0, 1, 2]
        replicas[0].in_flight = 5
        assert await pool.tick() == 2 and sorted(find()) == [0, 1]  # the pending one goes first
        assert replicas[2].killed
        replicas[0].in_flight = 0
        assert await pool.tick() == 1 and sorted(find()) == [0]  # idle, above the minimum
        assert await pool.tick() == 1 and not replicas[0].killed  # the fixed replica stays

    run(body())


def test_engine_replicas_grow_on_the_agent_messages_waiting_before_their_calls_arrive(
        tmp_path: Path) -> None:
    """Nothing in flight yet, but 9 messages wait in the mailboxes of the roles on this model: the
    pool grows for the calls they will make; once they are taken and done, it shrinks back."""
    from runtime.llm.pool import EnginePool

    async def body() -> None:
        replicas: dict[int, FakeEngine] = {0: FakeEngine(load=0)}
        waiting = 9

        def spawn(index: int) -> FakeEngine:
            replicas[index] = FakeEngine()
            return replicas[index]

        def find() -> dict[int, FakeEngine]:
            return {i: r for i, r in replicas.items() if not r.killed}

        async def demand() -> int:
            return waiting

        config = settings(tmp_path, engine_replicas_max=3, engine_target_requests=4,
                          engine_idle_s=0.0)
        pool = EnginePool(config, "sim-small", find, spawn, demand)
        assert await pool.tick() == 3 and sorted(find()) == [0, 1, 2]  # ceil(9 / 4)
        waiting = 0
        assert await pool.tick() == 1 and sorted(find()) == [0]
        without = EnginePool(config, "sim-small", find, spawn)  # in flight only: no growth
        waiting = 9
        assert await without.tick() == 1

    run(body())


def test_a_router_that_discovers_sends_to_replicas_added_later() -> None:
    from runtime.core.models import ChatMessage, ChatRequest, Completion, Usage

    class Echo:
        def __init__(self, name: str) -> None:
            self.name = name
            self.calls = 0

        async def chat(self, request: ChatRequest, stream_to: Any = None) -> Completion:
            self.calls += 1
            await asyncio.sleep(0.01)
            return Completion(model="m", text=self.name,
                              usage=Usage(prompt_tokens=1, completion_tokens=1))

        async def abort(self, request_id: str) -> bool:
            return False

    first, second = Echo("a"), Echo("b")
    known: dict[str, list[Any]] = {"m": [first]}
    router = Router(dict(known), discover=lambda: dict(known), refresh_s=0.0)

    async def body() -> None:
        request = ChatRequest(model="m", messages=[ChatMessage(role="user", content="hi")])
        known["m"] = [first, second]
        await asyncio.gather(*(router.chat(request) for _ in range(8)))
        assert first.calls and second.calls  # the replica added later took requests

    run(body())
