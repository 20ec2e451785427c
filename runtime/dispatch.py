"""The dispatcher: admits submissions, orders runnable tasks, hands them to workers under leases.

The Store is the truth; the dispatcher's priority queue is an index of the Store's queued tasks.
A submit writes the task to the Store, then queues its id (a full queue refuses before writing). A
worker's ``get_tasks`` pops ids in priority order (with aging) and claims them in the Store with a
lease. Leases that run out, and the leases of a worker that died, make their tasks queued again.
At start the dispatcher makes every task an earlier run left running queued again (one runtime owns
a Store), and every few seconds it reconciles its queue with the Store's queued tasks.
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
from runtime.errors import QueueFull
from runtime.models import Claim, SubmitRequest, TaskRecord, TaskStatus
from runtime.queue import AsyncQueue, PriorityQueue

log = logging.getLogger(__name__)

ACTOR_NAME = "dispatcher"
RECONCILE_EVERY_S = 5.0


class Dispatcher:
    def __init__(self, settings: Settings, store: Any, apps: list[str]) -> None:
        self.settings = settings
        self.store = store
        self.catalog: Catalog = load_catalog(apps)
        self.queue = AsyncQueue(
            PriorityQueue("tasks", settings.queue_capacity, settings.aging_per_s, clock=time.time)
        )
        self._reserved = 0
        self._lost_owners: set[str] = set()
        self._pending: list[tuple[str, SubmitRequest, asyncio.Future[tuple[TaskRecord, bool]]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._loop: asyncio.Task[None] | None = None

    async def start(self, recover: bool = True) -> int:
        """Recover the Store's runnable tasks into the queue and start the lease sweeper."""
        records = await self.store.recover.remote() if recover else []
        self._enqueue(records)
        if self._loop is None:
            self._loop = asyncio.create_task(self._sweep())
        return len(records)

    def _enqueue(self, records: list[TaskRecord]) -> None:
        if records:
            self._put_back([(r.id, (r.priority, r.created_at)) for r in records])

    def _put_back(self, items: list[tuple[str, Any]]) -> None:
        """Queue (id, (priority, created_at)) items, keeping their age; the bound does not apply."""
        self.queue.put_batch([(item_id, prio, (prio, at)) for item_id, (prio, at) in items],
                             since={item_id: at for item_id, (_, at) in items}, force=True)

    async def submit(self, req: SubmitRequest) -> tuple[TaskRecord, bool]:
        """Validate, persist and queue a task; the same idempotency key returns the first task."""
        wf = self.catalog.workflow(req.workflow)
        wf.validate_input(req.input)
        q = self.queue.queue
        if len(q) + self._reserved >= q.capacity:
            raise QueueFull("tasks", q.capacity, retry_after_s=1.0)
        self._reserved += 1
        try:
            future: asyncio.Future[tuple[TaskRecord, bool]] = asyncio.get_running_loop().create_future()
            self._pending.append((uuid.uuid4().hex, req, future))
            if self._flusher is None or self._flusher.done():
                self._flusher = asyncio.create_task(self._flush_submits())
            record, created = await future
        finally:
            self._reserved -= 1
        if created:
            self._enqueue([record])
        return record, created

    async def _flush_submits(self) -> None:
        """Write every submit that arrived meanwhile in one Store call (one transaction)."""
        while self._pending:
            await asyncio.sleep(0)  # let the submits already in this actor's inbox join the batch
            batch, self._pending = self._pending, []
            try:
                results = await self.store.create_tasks.remote([(t, r) for t, r, _ in batch])
            except Exception as e:  # noqa: BLE001 - every waiting submit gets the error
                for _, _, future in batch:
                    if not future.done():
                        future.set_exception(e)
                continue
            for (_, _, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)

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


def start_dispatcher(settings: Settings, store: Any, apps: list[str]) -> Any:
    return (
        ray.remote(Dispatcher)
        .options(name=ACTOR_NAME, namespace=settings.namespace, num_cpus=0, max_restarts=0,
                 max_concurrency=1000)
        .remote(settings, store, apps)
    )
