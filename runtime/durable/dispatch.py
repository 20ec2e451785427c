"""The dispatcher: orders runnable tasks and hands them to workers under leases.

The Store is the truth; the dispatcher's priority queue is an index of the Store's queued tasks, a
window on them: at most ``dispatch_window`` of them, the highest-ranked (priority with aging; the
Store orders its queued tasks by the same key, ``records.rank_order``). Tenants share it: the
first task in rank order picks the priority served next, and the tenants with a task first at
that priority take turns (runtime/flow/queue.py's ``_FairHeap``), so one tenant's backlog never holds
another tenant's tasks behind all of it. Submits do not pass through
here: the Store admits them (``submit_tasks``: the queue bound, idempotency keys, one transaction
for a batch) and the dispatcher follows the Store's feed of new tasks (``take_submitted``) to index
them. Past the window, the lowest-ranked are dropped from it (they stay queued in the Store); once
it has drained to half, it is refilled with the Store's first ``dispatch_window`` queued tasks in
rank order, so a million queued tasks cost the dispatcher the memory of ten thousand, and claims
still come in rank order. A worker's ``get_tasks`` pops ids in that order and claims them in the
Store with a lease whose token fences the run. Leases that run out, and the leases of a worker that
died, make their tasks queued again.

Nothing here is kept only in memory. At the runtime's first start the dispatcher makes every task an
earlier run left running queued again (one runtime owns a Store). When the actor restarts after a
crash, it rebuilds its index from the Store's queued tasks and leaves running tasks to their workers;
every few seconds it reconciles its index with the Store, which also catches what the feed dropped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Protocol

import ray

from runtime.actors import names
from runtime.actors.handles import ActorHandle, restarted
from runtime.authoring.catalog import Catalog, load_catalog
from runtime.core import metrics
from runtime.core.config import Settings
from runtime.core.models import Claim, TaskRecord, TaskStatus
from runtime.core.recovery import OK, Rebuild, Rounds, loops_health
from runtime.flow.queue import AsyncQueue, PriorityQueue
from runtime.store.base import Queued
from runtime.store.service import StoreService

log = logging.getLogger(__name__)

#: The dispatcher actor's name in the runtime's namespace.
ACTOR_NAME = names.DISPATCHER
RECONCILE_EVERY_S = 5.0
FEED_WAIT_S = 10.0  # how long one look at the Store's feed of new tasks waits


def _tenant(item: tuple[int, float, str]) -> str:
    """The group of a task in the index: its tenant (the queue shares priorities between them)."""
    return item[2]


class WorkerNotifier(Protocol):
    """How the dispatcher reaches a worker (to push a cancel); the worker module provides it."""

    async def cancel(self, owner: str, task_id: str) -> None: ...


class Dispatcher:
    def __init__(self, settings: Settings, store: StoreService, apps: list[str],
                 workers: WorkerNotifier | None = None) -> None:
        self.settings = settings
        self.store = store
        self._apps = list(apps)
        self.catalog: Catalog = load_catalog(apps)
        self.queue = AsyncQueue(
            PriorityQueue("tasks", settings.queue_capacity, settings.aging_per_s, clock=time.time,
                          group_of=_tenant)
        )
        self._workers = workers
        self.window = settings.dispatch_window
        self._beyond = False  # the Store may hold queued tasks outside the window
        self._refilling: asyncio.Task[None] | None = None
        self._refill_again = False
        self._lost_owners: set[str] = set()
        self._loop: asyncio.Task[None] | None = None
        self._feed: asyncio.Task[None] | None = None
        self._sweeps = Rounds("sweeping leases")
        self._rebuild: Rebuild | None = None
        if restarted():  # a crash restarted us: rebuild from the Store, take no running task away
            # Until the Store answers (a database outage outlasts a restart), tried again and again.
            self._rebuild = Rebuild("rebuilding the dispatch index",
                                    lambda: self.start(recover=False))
            self._rebuild.start()

    async def start(self, recover: bool = True) -> int:
        """Index the Store's queued tasks (first making an earlier run's running tasks queued, with
        ``recover``) and start the lease sweeper and the feed."""
        index = (await self.store.recover() if recover
                 else await self.store.queued_index(self.window))
        self._index_window(index)
        if self._loop is None:
            self._loop = asyncio.create_task(self._sweep())
        if self._feed is None:
            self._feed = asyncio.create_task(self._follow_submits())
        return len(index)

    def _index(self, index: list[Queued], complete: bool | None = None) -> None:
        """Queue (id, priority, created_at, tenant), as the Store's feed and index give them;
        ``complete``, for the Store's first queued tasks: whether they are all it holds."""
        if complete is not None:
            self._beyond = not complete
        if index:
            self._put_back([(task_id, (prio, at, tenant)) for task_id, prio, at, tenant in index])

    def _index_window(self, index: list[Queued]) -> None:
        """Index the Store's first ``window`` queued tasks; fewer than that are all it holds."""
        self._index(index, complete=len(index) < self.window)

    def _enqueue(self, records: list[TaskRecord]) -> None:
        if records:
            self._put_back([(r.id, (r.priority, r.created_at, r.tenant)) for r in records])

    def _put_back(self, items: list[tuple[str, Any]]) -> None:
        """Queue (id, (priority, created_at, tenant)) items, keeping their age; the bound does not
        apply."""
        self.queue.put_batch([(item_id, item[0], item) for item_id, item in items],
                             since={item_id: item[1] for item_id, item in items}, force=True)
        if len(self.queue.queue) > self.window + self.window // 10:  # trimmed now and then
            if self.queue.queue.trim(self.window):
                self._beyond = True

    def _maybe_refill(self, now: bool = False) -> None:
        """Refill the window from the Store once it has drained to half, if the Store holds more;
        ``now``: whatever the window holds (the feed dropped tasks that may outrank it)."""
        if not self._beyond or not (now or len(self.queue.queue) <= self.window // 2):
            return
        if self._refilling is None or self._refilling.done():
            self._refilling = asyncio.create_task(self._refill())
        elif now:
            self._refill_again = True  # the refill in flight may have read the Store too early

    async def _refill(self) -> None:
        self._refill_again = True
        while self._refill_again:
            self._refill_again = False
            try:
                await self._reconcile()
            except Exception:  # noqa: BLE001 - the next get or the reconcile tries again
                log.warning("refilling the dispatch window from the Store failed", exc_info=True)
                return

    async def _follow_submits(self) -> None:
        """Index the tasks the Store admitted, in batches, as they come."""
        while True:
            try:
                fresh = await self.store.take_submitted(FEED_WAIT_S)
            except Exception:  # noqa: BLE001 - the Store restarting past the handle's deadline
                log.warning("reading the Store's feed of new tasks failed; reading it again")
                await asyncio.sleep(self.settings.sweep_interval_s)
                continue
            self._index(fresh)
            if len(fresh) >= self.window:  # the feed may have dropped some: the Store has them
                self._beyond = True
                self._maybe_refill(now=True)

    async def health(self) -> str:
        """``ok`` while it indexes and sweeps; else what it waits for (``/readyz`` shows it)."""
        if self._rebuild is not None and (rebuilding := self._rebuild.health()) != OK:
            return rebuilding
        stopped = loops_health({"lease sweeper": self._loop, "submit feed": self._feed})
        return stopped if stopped != OK else self._sweeps.health()

    async def app_modules(self) -> list[str]:
        """The app modules this runtime loaded (a client that validates inputs loads the same)."""
        return self._apps

    async def get_tasks(self, owner: str, max_tasks: int, timeout_s: float) -> list[Claim]:
        """Wait up to ``timeout_s`` for runnable tasks and claim up to ``max_tasks`` for ``owner``."""
        deadline = time.monotonic() + timeout_s
        while owner not in self._lost_owners:
            remaining = deadline - time.monotonic()
            self._maybe_refill()
            items = await self.queue.get_batch(max_tasks, max(remaining, 0))
            self._maybe_refill()
            if not items:
                return []
            if owner in self._lost_owners:
                self._put_back(items)
                return []
            try:
                claims = await self.store.claim([item_id for item_id, _ in items], owner,
                                                self.settings.lease_s)
            except Exception:
                self._put_back(items)  # what the claim did not take is still queued in the Store
                raise
            if owner in self._lost_owners:
                # The owner died while this call waited: its claims go straight back.
                await self.worker_lost(owner)
                return []
            if claims or remaining <= 0:
                return claims
        return []

    async def requeue(self, task_ids: list[str]) -> None:
        """Queue tasks the Store made queued again (a retry, a replay)."""
        records = [await self.store.get_task(t) for t in task_ids]
        self._enqueue([r for r in records if r.status is TaskStatus.QUEUED])

    async def cancel(self, task_id: str) -> TaskRecord:
        """Cancel a task: at once if queued or waiting; a running one's worker is told right away."""
        record = await self.store.request_cancel(task_id)
        if record.owner and self._workers is not None:
            await self._workers.cancel(record.owner, task_id)
        return record

    async def signal(self, task_id: str, name: str, payload: Any) -> TaskRecord:
        """Deliver a signal; a task that was waiting for it is queued at once."""
        record = await self.store.send_signal(task_id, name, payload)
        if record.status is TaskStatus.QUEUED:
            self._enqueue([record])
        return record

    async def worker_lost(self, owner: str, crashed: bool = True) -> int:
        """Queue again every task leased to ``owner``, which is gone, and claim nothing more for it.
        ``crashed``: the worker died on its own (its death counts against its tasks)."""
        self._lost_owners.add(owner)
        records = await self.store.release_owner(owner, crashed)
        self._enqueue(records)
        return len(records)

    async def workers_replaced(self, live: list[str]) -> int:
        """The worker pool (re)started with only ``live`` workers: every other lease holder is gone."""
        released = 0
        for owner in await self.store.running_owners():
            if owner not in live:  # it died with the pool: not a sign against its tasks
                released += await self.worker_lost(owner, crashed=False)
        return released

    async def workflows(self) -> list[dict[str, Any]]:
        """Each loaded workflow with its input and output JSON schema."""
        return [{"name": wf.name, "description": (wf.fn.__doc__ or "").strip(),
                 "input_schema": wf.input_schema(), "output_schema": wf.output_schema()}
                for wf in sorted(self.catalog.workflows.values(), key=lambda w: w.name)]

    async def stats(self) -> dict[str, Any]:
        """The window's stats (its ``depth`` is what it holds, at most ``window``); ``beyond``: the
        Store holds queued tasks outside it."""
        return {**self.queue.queue.stats(), "window": self.window, "beyond": self._beyond}

    async def _sweep(self) -> None:
        last_reconcile = time.monotonic()
        while True:
            await asyncio.sleep(self.settings.sweep_interval_s)
            try:
                self._enqueue(await self.store.expire_leases())
                self._enqueue(await self.store.wake_due())
                metrics.set_gauge("raysquad_queue_depth", len(self.queue.queue), queue="tasks")
                if time.monotonic() - last_reconcile > RECONCILE_EVERY_S:
                    last_reconcile = time.monotonic()
                    await self._reconcile()
                self._sweeps.succeeded()
            except Exception as e:  # noqa: BLE001 - the sweeper must outlive a failed round
                log.warning("lease sweep failed; trying again next round", exc_info=True)
                self._sweeps.failed(e)

    async def _reconcile(self) -> None:
        """Index the Store's first ``window`` queued tasks (what the feed dropped, or a restart of
        the Store lost, comes back this way)."""
        self._index_window(await self.store.queued_index(self.window))


class DispatcherService(Protocol):
    """What workers, the worker pool and clients call on the dispatcher."""

    async def get_tasks(self, owner: str, max_tasks: int, timeout_s: float) -> list[Claim]: ...
    async def requeue(self, task_ids: list[str]) -> None: ...
    async def cancel(self, task_id: str) -> TaskRecord: ...
    async def signal(self, task_id: str, name: str, payload: Any) -> TaskRecord: ...
    async def worker_lost(self, owner: str, crashed: bool = True) -> int: ...
    async def workers_replaced(self, live: list[str]) -> int: ...
    async def stats(self) -> dict[str, Any]: ...


class DispatcherHandle(ActorHandle):
    """The dispatcher actor, typed; its calls ride out a restart of the actor."""

    @classmethod
    def find(cls, namespace: str) -> DispatcherHandle:
        return cls.named(ACTOR_NAME, namespace)

    async def start(self, recover: bool = True) -> int:
        return await self.via(Dispatcher.start)(recover)

    async def app_modules(self) -> list[str]:
        return await self.via(Dispatcher.app_modules)()

    def app_modules_now(self) -> list[str]:
        """``app_modules`` for code outside an event loop (a client starting up)."""
        return [str(name) for name in ray.get(self._remote("app_modules"))]

    async def get_tasks(self, owner: str, max_tasks: int, timeout_s: float) -> list[Claim]:
        # Repeatable: a claim made by a call whose reply was lost runs out its lease.
        return await self.via(Dispatcher.get_tasks)(owner, max_tasks, timeout_s)

    async def requeue(self, task_ids: list[str]) -> None:
        await self.via(Dispatcher.requeue)(task_ids)

    async def cancel(self, task_id: str) -> TaskRecord:
        return await self.via(Dispatcher.cancel)(task_id)

    async def signal(self, task_id: str, name: str, payload: Any) -> TaskRecord:
        return await self.via(Dispatcher.signal, idempotent=False)(task_id, name, payload)

    async def worker_lost(self, owner: str, crashed: bool = True) -> int:
        return await self.via(Dispatcher.worker_lost)(owner, crashed)

    async def workers_replaced(self, live: list[str]) -> int:
        return await self.via(Dispatcher.workers_replaced)(live)

    async def workflows(self) -> list[dict[str, Any]]:
        return await self.via(Dispatcher.workflows)()

    async def stats(self, deadline_s: float | None = None) -> dict[str, Any]:
        return await self.via(Dispatcher.stats, deadline_s=deadline_s)()


