"""The dispatcher: orders runnable tasks and hands them to workers under leases.

The Store is the truth; the dispatcher's priority queue is an index of the Store's queued tasks.
Submits do not pass through here on their way in: the Store admits them (``submit_tasks``: the queue
bound, idempotency keys, one transaction for a batch) and the dispatcher follows the Store's feed of
new tasks (``take_submitted``) to index them. ``submit`` remains for clients without the workflow
catalogue (the Python ``Client``): it validates the input, then writes through the same Store call.
A worker's ``get_tasks`` pops ids in priority order (with aging) and claims them in the Store with a
lease. Leases that run out, and the leases of a worker that died, make their tasks queued again.
At start the dispatcher makes every task an earlier run left running queued again (one runtime owns
a Store), and every few seconds it reconciles its queue with the Store's queued tasks, which also
catches whatever the feed dropped (a Store restart).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any

import ray

from runtime.catalog import Catalog, load_catalog
from runtime.config import Settings
from runtime.group_commit import GroupCommit
from runtime.models import Claim, SubmitRequest, TaskRecord, TaskStatus
from runtime.queue import AsyncQueue, PriorityQueue

log = logging.getLogger(__name__)

ACTOR_NAME = "dispatcher"
RECONCILE_EVERY_S = 5.0
FEED_WAIT_S = 10.0  # how long one look at the Store's feed of new tasks waits


class Dispatcher:
    def __init__(self, settings: Settings, store: Any, apps: list[str]) -> None:
        self.settings = settings
        self.store = store
        self._apps = list(apps)
        self.catalog: Catalog = load_catalog(apps)
        self.queue = AsyncQueue(
            PriorityQueue("tasks", settings.queue_capacity, settings.aging_per_s, clock=time.time)
        )
        self._lost_owners: set[str] = set()
        self._commit = submitter(store)
        self._loop: asyncio.Task[None] | None = None
        self._feed: asyncio.Task[None] | None = None

    async def start(self, recover: bool = True) -> int:
        """Recover the Store's runnable tasks into the queue and start the lease sweeper."""
        records = await self.store.recover.remote() if recover else []
        self._enqueue(records)
        if self._loop is None:
            self._loop = asyncio.create_task(self._sweep())
        if self._feed is None:
            self._feed = asyncio.create_task(self._follow_submits())
        return len(records)

    def _enqueue(self, records: list[TaskRecord]) -> None:
        if records:
            self._put_back([(r.id, (r.priority, r.created_at)) for r in records])

    def _put_back(self, items: list[tuple[str, Any]]) -> None:
        """Queue (id, (priority, created_at)) items, keeping their age; the bound does not apply."""
        self.queue.put_batch([(item_id, prio, (prio, at)) for item_id, (prio, at) in items],
                             since={item_id: at for item_id, (_, at) in items}, force=True)

    async def submit(self, req: SubmitRequest) -> tuple[TaskRecord, bool]:
        """Validate and persist a task (the Store admits it); the feed brings it into the queue."""
        self.catalog.workflow(req.workflow).validate_input(req.input)
        return await self._commit(req)

    async def _follow_submits(self) -> None:
        """Index the tasks the Store admitted, in batches, as they come."""
        while True:
            try:
                fresh = await self.store.take_submitted.remote(FEED_WAIT_S)
            except Exception:  # noqa: BLE001 - e.g. the Store restarting: the reconcile finds what its feed held
                log.exception("reading the Store's feed of new tasks failed; reading it again")
                await asyncio.sleep(self.settings.sweep_interval_s)
                continue
            if fresh:
                self._put_back([(task_id, (prio, at)) for task_id, prio, at in fresh])

    async def app_modules(self) -> list[str]:
        """The app modules this runtime loaded (a client that validates inputs loads the same)."""
        return self._apps

    async def get_tasks(self, owner: str, max_tasks: int, timeout_s: float) -> list[Claim]:
        """Wait up to ``timeout_s`` for runnable tasks and claim up to ``max_tasks`` for ``owner``."""
        deadline = time.monotonic() + timeout_s
        while owner not in self._lost_owners:
            remaining = deadline - time.monotonic()
            items = await self.queue.get_batch(max_tasks, max(remaining, 0))
            if not items:
                return []
            if owner in self._lost_owners:
                self._put_back(items)
                return []
            claims: list[Claim] = await self.store.claim.remote(
                [item_id for item_id, _ in items], owner, self.settings.lease_s)
            if owner in self._lost_owners:
                # The owner died while this call waited: its claims go straight back.
                await self.worker_lost(owner)
                return []
            if claims or remaining <= 0:
                return claims
        return []

    async def requeue(self, task_ids: list[str]) -> None:
        """Queue tasks the Store made queued again (a retry)."""
        records = [await self.store.get_task.remote(t) for t in task_ids]
        self._enqueue(records)

    async def cancel(self, task_id: str) -> TaskRecord:
        """Cancel a task: at once if queued or waiting; a running one's worker is told right away."""
        record: TaskRecord = await self.store.request_cancel.remote(task_id)
        if record.owner:
            try:
                worker = ray.get_actor(f"worker:{record.owner}", namespace=self.settings.namespace)
                await worker.cancel.remote(task_id)
            except (ValueError, ray.exceptions.RayActorError):
                pass  # the worker is gone; its lease runs out and the replay sees the cancel
        return record

    async def signal(self, task_id: str, name: str, payload: Any) -> TaskRecord:
        """Deliver a signal; a task that was waiting for it is queued at once."""
        record: TaskRecord = await self.store.send_signal.remote(task_id, name, payload)
        if record.status is TaskStatus.QUEUED:
            self._enqueue([record])
        return record

    async def worker_lost(self, owner: str) -> int:
        """Queue again every task leased to ``owner``, which is gone, and claim nothing more for it."""
        self._lost_owners.add(owner)
        records = await self.store.release_owner.remote(owner)
        self._enqueue(records)
        return len(records)

    async def workflows(self) -> list[dict[str, Any]]:
        """Each loaded workflow with its input and output JSON schema."""
        return [{"name": wf.name, "description": (wf.fn.__doc__ or "").strip(),
                 "input_schema": wf.input_schema(), "output_schema": wf.output_schema()}
                for wf in sorted(self.catalog.workflows.values(), key=lambda w: w.name)]

    async def stats(self) -> dict[str, Any]:
        return self.queue.queue.stats()

    async def _sweep(self) -> None:
        last_reconcile = time.monotonic()
        while True:
            await asyncio.sleep(self.settings.sweep_interval_s)
            try:
                self._enqueue(await self.store.expire_leases.remote())
                self._enqueue(await self.store.wake_due.remote())
                if time.monotonic() - last_reconcile > RECONCILE_EVERY_S:
                    last_reconcile = time.monotonic()
                    await self._reconcile()
            except Exception:  # noqa: BLE001 - the sweeper must outlive a failed round
                log.exception("lease sweep failed")

    async def _reconcile(self) -> None:
        queued = await self.store.list_tasks.remote(TaskStatus.QUEUED, limit=self.settings.queue_capacity)
        self._enqueue(queued)


def submitter(store: Any) -> GroupCommit[SubmitRequest, tuple[TaskRecord, bool]]:
    """Admit submits through the Store, concurrent ones in one call (one transaction)."""

    async def send(reqs: list[SubmitRequest]) -> list[Any]:
        return await store.submit_tasks.remote([(uuid.uuid4().hex, r) for r in reqs])  # type: ignore[no-any-return]

    return GroupCommit(send)


def start_dispatcher(settings: Settings, store: Any, apps: list[str]) -> Any:
    return (
        ray.remote(Dispatcher)
        .options(name=ACTOR_NAME, namespace=settings.namespace, num_cpus=0, max_restarts=0,
                 max_concurrency=1000)
        .remote(settings, store, apps)
    )
