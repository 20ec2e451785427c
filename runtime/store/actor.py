"""The Store actor: one process owns the SQLite file; every other process reaches it through here.

It is pinned to the node that starts it (the head in a cluster) and restarts on failure, since all of
its state is on disk. ``wait_events`` long-polls a task's event log, which feeds progress bars and SSE.
"""

from __future__ import annotations

import asyncio
import pickle
import time
from collections import defaultdict
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from runtime.config import Settings
from runtime.errors import QueueFull
from runtime.models import Claim, DeadLetter, Event, SubmitRequest, TaskRecord, TaskStatus
from runtime.store.sqlite import SQLiteStore

ACTOR_NAME = "store"


class StoreActor:
    """Async facade over a Store; each call runs to completion on the actor's event loop."""

    def __init__(self, settings: Settings) -> None:
        self._store = SQLiteStore(settings.database_path, settings.blob_dir)
        self._waiters: dict[str, asyncio.Event] = defaultdict(asyncio.Event)
        self._capacity = settings.queue_capacity
        # The dispatcher's feed: (id, priority, created_at) of tasks submitted since it last looked.
        self._submitted: list[tuple[str, int, float]] = []
        self._submitted_event = asyncio.Event()

    def _wake(self) -> None:
        for task_id in self._store.touched:
            waiter = self._waiters.pop(task_id, None)
            if waiter is not None:
                waiter.set()
        self._store.touched.clear()

    def _call(self, method: str, *args: Any) -> Any:
        try:
            return getattr(self._store, method)(*args)
        finally:
            self._wake()

    async def create_task(self, task_id: str, req: SubmitRequest) -> tuple[TaskRecord, bool]:
        return self._call("create_task", task_id, req, time.time())  # type: ignore[no-any-return]

    async def create_tasks(self, items: list[tuple[str, SubmitRequest]]) -> list[tuple[TaskRecord, bool]]:
        return self._call("create_tasks", items, time.time())  # type: ignore[no-any-return]

    async def submit_tasks(self, items: list[tuple[str, SubmitRequest]]
                           ) -> list[tuple[TaskRecord, bool] | QueueFull]:
        """``create_tasks`` under the queue bound; the new tasks go to the dispatcher's feed.

        Once ``queue_capacity`` tasks are queued, the rest of the batch gets QueueFull (as values, one
        per refused item) and nothing is written for them. As in the dispatcher before, the bound is
        checked before idempotency keys: a submit that may be new must find room.
        """
        room = max(0, self._capacity - self._store.count_tasks(TaskStatus.QUEUED))
        accepted: list[tuple[TaskRecord, bool]] = (
            self._call("create_tasks", items[:room], time.time()) if room else [])
        fresh = [(r.id, r.priority, r.created_at) for r, created in accepted if created]
        if fresh:
            self._submitted.extend(fresh)
            del self._submitted[:-self._capacity]  # unread that long: the reconcile finds them
            self._submitted_event.set()
        return [*accepted,
                *(QueueFull("tasks", self._capacity, retry_after_s=1.0) for _ in items[room:])]

    async def take_submitted(self, timeout_s: float) -> list[tuple[str, int, float]]:
        """The tasks ``submit_tasks`` created since the last call, waiting up to ``timeout_s`` for one.

        One reader, the dispatcher. What a restart of this actor drops, the dispatcher's reconcile
        with the Store finds.
        """
        if not self._submitted:
            self._submitted_event.clear()
            try:
                await asyncio.wait_for(self._submitted_event.wait(), timeout_s)
            except TimeoutError:
                return []
        fresh, self._submitted = self._submitted, []
        return fresh

    async def add_dead_letter(self, letter: DeadLetter) -> None:
        self._call("add_dead_letter", letter)

    async def dead_letters(self, status: str | None = None, tool: str | None = None,
                           tenant: str | None = None, limit: int = 100) -> list[DeadLetter]:
        return self._call("dead_letters", status, tool, tenant, limit)  # type: ignore[no-any-return]

    async def get_dead_letter(self, letter_id: str) -> DeadLetter:
        return self._call("get_dead_letter", letter_id)  # type: ignore[no-any-return]

    async def replayed(self, letter_id: str, ok: bool, result: Any, error: str, attempts: int,
                       step_output: bytes | None = None) -> DeadLetter:
        return self._call("replayed", letter_id, ok, result, error, attempts, time.time(),  # type: ignore[no-any-return]
                          step_output)

    async def get_task(self, task_id: str) -> TaskRecord:
        return self._call("get_task", task_id)  # type: ignore[no-any-return]

    async def list_tasks(self, status: TaskStatus | None = None, workflow: str | None = None,
                         tenant: str | None = None, limit: int = 100,
                         offset: int = 0) -> list[TaskRecord]:
        return self._call("list_tasks", status, workflow, tenant, limit, offset)  # type: ignore[no-any-return]

    async def count_tasks(self, status: TaskStatus) -> int:
        return self._call("count_tasks", status)  # type: ignore[no-any-return]

    async def recover(self) -> list[TaskRecord]:
        return self._call("recover", time.time())  # type: ignore[no-any-return]

    async def claim(self, task_ids: list[str], owner: str, lease_s: float) -> list[Claim]:
        return self._call("claim", task_ids, owner, lease_s, time.time())  # type: ignore[no-any-return]

    async def renew(self, owner: str, task_ids: list[str], lease_s: float) -> dict[str, bool]:
        return self._call("renew", owner, task_ids, lease_s, time.time())  # type: ignore[no-any-return]

    async def expire_leases(self) -> list[TaskRecord]:
        return self._call("expire_leases", time.time())  # type: ignore[no-any-return]

    async def release_owner(self, owner: str) -> list[TaskRecord]:
        return self._call("release_owner", owner, time.time())  # type: ignore[no-any-return]

    async def record_step(self, task_id: str, owner: str, key: str, output: bytes,
                          refs: list[tuple[str, list[ray.ObjectRef]]] | None = None) -> bool:
        """Checkpoint a step. ``refs`` are (blob key, [ObjectRef]) of large values to persist once."""
        blobs = {}
        for blob_key, (object_ref,) in refs or ():
            blobs[blob_key] = pickle.dumps(await object_ref, protocol=5)
        return self._call("record_step", task_id, owner, key, output, blobs, time.time())  # type: ignore[no-any-return]

    async def append_event(self, task_id: str, kind: str, data: dict[str, Any]) -> int:
        return self._call("append_event", task_id, kind, data, time.time())  # type: ignore[no-any-return]

    async def finish(self, task_id: str, owner: str, status: TaskStatus, output: Any,
                     error: str | None) -> TaskRecord:
        return self._call("finish", task_id, owner, status, output, error, time.time())  # type: ignore[no-any-return]

    async def request_cancel(self, task_id: str) -> TaskRecord:
        return self._call("request_cancel", task_id, time.time())  # type: ignore[no-any-return]

    async def retry(self, task_id: str) -> TaskRecord:
        return self._call("retry", task_id, time.time())  # type: ignore[no-any-return]

    async def send_signal(self, task_id: str, name: str, payload: Any) -> TaskRecord:
        return self._call("send_signal", task_id, name, payload, time.time())  # type: ignore[no-any-return]

    async def await_signal(self, task_id: str, owner: str, name: str, key: str,
                           wake_at: float | None) -> tuple[str, Any]:
        return self._call("await_signal", task_id, owner, name, key, wake_at, time.time())  # type: ignore[no-any-return]

    async def wake_due(self) -> list[TaskRecord]:
        return self._call("wake_due", time.time())  # type: ignore[no-any-return]

    async def events(self, task_id: str, after: int = 0, limit: int = 1000) -> list[Event]:
        return self._call("events", task_id, after, limit)  # type: ignore[no-any-return]

    async def wait_events(self, task_id: str, after: int = 0, timeout_s: float = 10.0,
                          limit: int = 1000) -> list[Event]:
        """Events after ``after``; if there are none yet, wait up to ``timeout_s`` for one."""
        events = self._store.events(task_id, after, limit)
        if events:
            return events
        waiter = self._waiters[task_id]
        try:
            await asyncio.wait_for(waiter.wait(), timeout_s)
        except TimeoutError:
            return []
        return self._store.events(task_id, after, limit)

    async def read_blob(self, key: str) -> bytes:
        return self._call("read_blob", key)  # type: ignore[no-any-return]

    async def ping(self) -> str:
        return str(self._store.path)


def start_store(settings: Settings) -> Any:
    """Create the Store actor on this node (the head), named so that every process can find it."""
    return (
        ray.remote(StoreActor)
        .options(
            name=ACTOR_NAME,
            namespace=settings.namespace,
            num_cpus=0,
            max_restarts=-1,
            max_concurrency=1000,
            scheduling_strategy=NodeAffinitySchedulingStrategy(
                node_id=ray.get_runtime_context().get_node_id(), soft=False
            ),
        )
        .remote(settings)
    )
