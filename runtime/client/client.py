"""The clients of a running runtime: ``AsyncClient`` for async code, ``Client`` for the rest.

Both have the same methods under the same names over one implementation: ``Client`` runs
``AsyncClient``'s coroutines on a private event loop. Both submit the same way: the input is validated
here against the runtime's workflow catalogue, then written straight to the Store, which admits it
(queue bound, idempotency key) in one call shared by the submits of the same event-loop turn; the
dispatcher learns of the new task from the Store. ``serve.http_client.HttpClient`` offers the same
surface over the HTTP API.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Coroutine, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

import ray

from runtime.actors import names
from runtime.actors.cluster import quiet_driver, use_local_token_if_any
from runtime.actors.handles import ActorHandle, actor_names
from runtime.authoring.catalog import Catalog, load_catalog
from runtime.core.config import Settings
from runtime.core.errors import (
    EventNotFound,
    NoApprovalWaiting,
    RaysquadError,
    RuntimeNotRunning,
    ScheduleNotFound,
    TaskFailed,
    WaitTimeout,
)
from runtime.core.models import (
    END_EVENT_KINDS,
    Event,
    Schedule,
    SubmitRequest,
    TaskRecord,
    TaskStatus,
    TaskSummary,
    TopicEvent,
    new_task_id,
    parse_cursor,
)
from runtime.durable.dispatch import DispatcherHandle
from runtime.events.bus import new_event, poke, publish
from runtime.events.schedules import new_schedule, next_tick
from runtime.store.actor import StoreHandle
from runtime.store.base import TaskStats
from runtime.store.connect import store_for
from runtime.store.outbox import EventReport
from runtime.store.service import StoreService

T = TypeVar("T")
SchemaList = list[dict[str, Any]]
TaskList = list[TaskSummary]
EventList = list[Event]
TopicEventList = list[TopicEvent]
ScheduleList = list[Schedule]
#: One answer per task of a ``submit_many``: its record, or the error that refused it.
Outcome = TaskRecord | RaysquadError
#: The most tasks one Store transaction of ``submit_many`` takes (and one HTTP batch holds).
MAX_BATCH = 1000

#: How long a readiness check waits for each part of the control plane.
READY_DEADLINE_S = 2.0


class AsyncClient:
    """A handle on a running runtime for async code (the HTTP app, async driver scripts)."""

    def __init__(self, store: StoreService, dispatcher: DispatcherHandle, catalog: Catalog,
                 namespace: str = "raysquad", max_event_bytes: int = 1 << 20) -> None:
        self._store = store
        self._max_event_bytes = max_event_bytes
        self._dispatcher = dispatcher
        self._catalog = catalog
        self._namespace = namespace
        self._parts: dict[str, ActorHandle] = {}

    @classmethod
    def connect(cls, settings: Settings | None = None) -> AsyncClient:
        """Join Ray (``settings.ray_address``, else the address a runtime recorded in this
        directory, else ``auto``) and find the runtime's actors. Blocking: call it at start-up."""
        settings = settings or Settings()
        join(settings)
        return cls.from_named_actors(settings.namespace, settings)

    @classmethod
    def from_named_actors(cls, namespace: str, settings: Settings | None = None) -> AsyncClient:
        """Find the runtime's actors on the Ray cluster this process is connected to, and load the
        app modules the runtime runs (blocking: call it outside the event loop, or at start-up).
        With ``settings`` that name a PostgreSQL Store, the client reaches it directly."""
        try:
            dispatcher = DispatcherHandle.find(namespace)
            store = (store_for(settings) if settings is not None
                     and settings.namespace == namespace else StoreHandle.find(namespace))
        except ValueError:
            raise RuntimeNotRunning(f"Ray namespace {namespace!r}") from None
        apps = dispatcher.app_modules_now()
        return cls(store, dispatcher, load_catalog(apps), namespace,
                   **({"max_event_bytes": settings.max_input_bytes} if settings else {}))

    async def aclose(self) -> None:
        """Release what this client holds on its event loop (a PostgreSQL LISTEN connection)."""
        close = getattr(self._store, "aclose", None)
        if close is not None:
            await close()

    # -- tasks --------------------------------------------------------------------------------------

    async def submit(self, workflow: str, input: dict[str, Any] | None = None, *, priority: int = 0,
                     idempotency_key: str | None = None, tenant: str = "default",
                     token_budget: int | None = None) -> TaskRecord:
        """Queue a task; returns its record once it is committed. An idempotency key already used
        returns that task. ``token_budget``: the most tokens its model calls may use."""
        record, _ = await self.submit_request(SubmitRequest(
            workflow=workflow, input=input or {}, priority=priority,
            idempotency_key=idempotency_key, tenant=tenant, token_budget=token_budget))
        return record

    async def submit_request(self, req: SubmitRequest) -> tuple[TaskRecord, bool]:
        """``submit`` for a built request; also says whether the task is new (False: the
        idempotency key's first task)."""
        self._catalog.workflow(req.workflow).validate_input(req.input)
        return await self._store.submit(req)

    async def submit_many(self, tasks: Iterable[SubmitRequest | Mapping[str, Any]], *,
                          tenant: str = "default") -> list[Outcome]:
        """Queue many tasks at once, ``MAX_BATCH`` to a Store transaction; one answer per task, in
        order: its record (new, or the idempotency key's first task) or the error that refused it
        (an unknown workflow, an invalid input, a full queue...), with nothing written for it.
        A mapping takes ``submit``'s keyword names (``workflow``, ``input``, ``priority``,
        ``idempotency_key``) and this call's ``tenant``."""
        reqs = [t if isinstance(t, SubmitRequest) else SubmitRequest(**{"tenant": tenant, **t})
                for t in tasks]
        outcomes: list[Outcome] = []
        for start in range(0, len(reqs), MAX_BATCH):
            outcomes += [o if isinstance(o, RaysquadError) else o[0]
                         for o in await self.submit_requests(reqs[start:start + MAX_BATCH])]
        return outcomes

    async def submit_requests(self, reqs: list[SubmitRequest]
                              ) -> list[tuple[TaskRecord, bool] | RaysquadError]:
        """``submit_request`` for many in one Store transaction: per request, ``(record, created)``
        or the error that refused it (checked here against the catalogue, or by the Store's
        admission)."""
        checked: list[RaysquadError | None] = []
        for req in reqs:
            try:
                self._catalog.workflow(req.workflow).validate_input(req.input)
                checked.append(None)
            except RaysquadError as e:
                checked.append(e)
        valid = [(new_task_id(), req) for req, e in zip(reqs, checked, strict=True) if e is None]
        admitted = iter(await self._store.submit_tasks(valid) if valid else [])
        return [next(admitted) if e is None else e for e in checked]

    async def get(self, task_id: str) -> TaskRecord:
        return await self._store.get_task(task_id)

    async def list(self, status: TaskStatus | str | None = None, workflow: str | None = None,
                   tenant: str | None = None, limit: int = 100,
                   cursor: str | None = None) -> TaskList:
        """Tasks, newest first. The next page: ``cursor=page_cursor(tasks[-1])``."""
        status = TaskStatus(status) if status else None
        before = parse_cursor(cursor) if cursor else None
        return await self._store.list_tasks(status, workflow, tenant, limit, before)

    async def task_stats(self, tenant: str | None, since: float, bucket_s: float) -> TaskStats:
        """``tenant``'s tasks by status, and how many finished in each ``bucket_s`` since
        ``since`` (oldest first; the last bucket ends now, at most ``MAX_STATS_BUCKETS``)."""
        return await self._store.task_stats(tenant, since, bucket_s)

    async def wait_events(self, task_id: str, after: int = 0, timeout_s: float = 0.0) -> EventList:
        """Events after seq ``after``, waiting up to ``timeout_s`` for the first one."""
        return await self._store.wait_events(task_id, after, timeout_s)

    async def events(self, task_id: str, after: int = 0, follow: bool = False,
                     poll_s: float = 5.0) -> AsyncIterator[Event]:
        """The task's events after seq ``after``; with ``follow``, keep going until the task ends."""
        while True:
            batch = await self.wait_events(task_id, after, poll_s if follow else 0.0)
            for event in batch:
                after = event.seq
                yield event
                if follow and event.kind in END_EVENT_KINDS:
                    return
            if not batch and (not follow or (await self.get(task_id)).status.ended):
                return

    # -- topic events -------------------------------------------------------------------------------

    async def publish(self, topic: str, data: Any = None, *, key: str | None = None,
                      id: str | None = None, tenant: str = "default",  # noqa: A002 - the API's name
                      source: str = "client") -> TopicEvent:
        """Publish an event: kept in the Store first, then delivered at least once to each
        subscriber. Publishing again with the same ``id`` is the same event (returned as kept)."""
        event = new_event(topic, data, key=key, event_id=id, tenant=tenant, source=source,
                          max_bytes=self._max_event_bytes)
        ((kept, _),) = await publish(self._store, self._namespace, [event])
        return kept

    async def publish_event(self, event: TopicEvent) -> tuple[TopicEvent, bool]:
        """``publish`` for a built event; also says whether it is new (False: its id was used)."""
        ((kept, new),) = await publish(self._store, self._namespace, [event])
        return kept, new

    async def topic_events(self, topic: str | None = None, tenant: str | None = None,
                           limit: int = 100, before: int | None = None) -> TopicEventList:
        """Published events, newest first; the next page: ``before=events[-1].seq``."""
        return await self._store.topic_events(topic, tenant, limit, before)

    async def event_report(self, event_id: str, tenant: str = "default") -> EventReport:
        """The event ``event_id`` and what became of it (one entry per subscriber)."""
        report = await self._store.event_deliveries(tenant, event_id)
        if report is None:
            raise EventNotFound(event_id)
        return report

    # -- schedules ----------------------------------------------------------------------------------

    async def create_schedule(self, schedule_id: str, workflow: str, cron: str, *,
                              timezone: str = "UTC",
                              input: dict[str, Any] | None = None,  # noqa: A002 - as in submit
                              catch_up: Literal["skip", "once"] = "skip",
                              overlap: Literal["skip", "allow", "cancel"] = "skip",
                              tenant: str = "default", paused: bool = False) -> Schedule:
        """Create the schedule ``schedule_id`` (or replace its definition): a task of ``workflow``
        with ``input`` at each tick of ``cron`` in ``timezone`` (see runtime/events/schedules.py)."""
        schedule = new_schedule(schedule_id, workflow, cron, timezone=timezone, input=input,
                                catch_up=catch_up, overlap=overlap, tenant=tenant, paused=paused,
                                catalog=self._catalog)
        kept, _ = await self._store.put_schedule(schedule)
        poke(self._namespace, "schedules_changed")
        return kept

    async def schedules(self, tenant: str | None = None, limit: int | None = None,
                        cursor: str | None = None) -> ScheduleList:
        """Schedules by id; ``limit`` of them, after the id ``cursor`` (the last of a page)."""
        return await self._store.list_schedules(tenant, limit, cursor)

    async def schedule(self, schedule_id: str, tenant: str = "default") -> Schedule:
        found = await self._store.get_schedule(tenant, schedule_id)
        if found is None:
            raise ScheduleNotFound(schedule_id)
        return found

    async def pause_schedule(self, schedule_id: str, tenant: str = "default") -> Schedule:
        return await self._set_paused(schedule_id, tenant, True)

    async def resume_schedule(self, schedule_id: str, tenant: str = "default") -> Schedule:
        """Resume from the next tick to come: ticks while it was paused do not run."""
        return await self._set_paused(schedule_id, tenant, False)

    async def _set_paused(self, schedule_id: str, tenant: str, paused: bool) -> Schedule:
        current = await self.schedule(schedule_id, tenant)
        # A pause keeps the tick it stopped at (a cron that no longer ticks can still be paused);
        # a resume starts from the next tick to come (InvalidSchedule if there is none).
        next_at = (current.next_at if paused
                   else next_tick(current.cron, current.timezone, time.time()))
        updated = await self._store.pause_schedule(tenant, schedule_id, paused, next_at)
        if updated is None:
            raise ScheduleNotFound(schedule_id)
        poke(self._namespace, "schedules_changed")
        return updated

    async def delete_schedule(self, schedule_id: str, tenant: str = "default") -> None:
        if not await self._store.delete_schedule(tenant, schedule_id):
            raise ScheduleNotFound(schedule_id)

    async def wait(self, task_id: str, timeout_s: float | None = None) -> TaskRecord:
        """Wait until the task ends (succeeded, failed or cancelled) and return its record."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        after = 0
        while True:
            record = await self.get(task_id)
            if record.status.ended:
                return record
            remaining = 5.0 if deadline is None else min(5.0, deadline - time.monotonic())
            if remaining <= 0:
                raise WaitTimeout(task_id, timeout_s or 0, record.status.value)
            batch = await self.wait_events(task_id, after, remaining)
            if batch:
                after = batch[-1].seq

    async def result(self, task_id: str, timeout_s: float | None = None) -> Any:
        """The task's output once it succeeds; TaskFailed if it failed or was cancelled."""
        record = await self.wait(task_id, timeout_s)
        if record.status is not TaskStatus.SUCCEEDED:
            raise TaskFailed(task_id, record.status.value, record.error or "")
        return record.output

    async def cancel(self, task_id: str) -> TaskRecord:
        """Cancel a queued task now, or a running one at its next step boundary."""
        return await self._dispatcher.cancel(task_id)

    async def retry(self, task_id: str) -> TaskRecord:
        """Run a failed or cancelled task again from its last checkpoint."""
        record = await self._store.retry(task_id)
        await self._dispatcher.requeue([task_id])
        return record

    async def signal(self, task_id: str, name: str, payload: Any = None) -> TaskRecord:
        """Send the signal ``name`` to a task; one waiting for it resumes."""
        return await self._dispatcher.signal(task_id, name, payload)

    async def decide(self, task_id: str, call_id: str, decision: Literal["approve", "deny"],
                     reason: str | None = None,
                     arguments: dict[str, Any] | None = None) -> TaskRecord:
        """Approve or deny (with a ``reason`` the model is told) a tool call the task waits on;
        an approval may replace the call's ``arguments``. NoApprovalWaiting if the task is not
        waiting for that call (decided already, or never asked)."""
        record = await self.get(task_id)
        name = f"approval:{call_id}"
        if record.waiting_for != name:
            raise NoApprovalWaiting(task_id, call_id, record.waiting_for or "nothing")
        payload = {"decision": decision, "reason": reason, "arguments": arguments}
        return await self.signal(task_id, name, payload)

    async def workflows(self) -> SchemaList:
        """Each workflow the runtime runs, with its input and output JSON schema."""
        return await self._dispatcher.workflows()

    async def queue_stats(self) -> dict[str, Any]:
        return await self._dispatcher.stats()

    # -- health -------------------------------------------------------------------------------------

    async def readiness(self) -> dict[str, str]:
        """Each part of the control plane, by actor name: "ok", or why it is not."""
        # Listed anew each time: engine replicas come and go with their autoscaler.
        names = await asyncio.to_thread(_control_plane_names, self._namespace)
        for gone in set(self._parts) - set(names):
            del self._parts[gone]
        for name in names:
            if name not in self._parts:
                with contextlib.suppress(ValueError):  # gone between the list and the lookup
                    self._parts[name] = ActorHandle.named(name, self._namespace)
        names = sorted(self._parts)
        results = await asyncio.gather(*(self._parts[n].health(READY_DEADLINE_S) for n in names))
        return dict(zip(names, results, strict=True))


class Client:
    """``AsyncClient``'s methods for synchronous code (driver scripts, the CLI), same names."""

    def __init__(self, aio: AsyncClient) -> None:
        self.aio = aio
        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._loop.run_forever, name="raysquad-client", daemon=True).start()

    @classmethod
    def connect(cls, settings: Settings | None = None) -> Client:
        """Join Ray and find a running runtime (see ``AsyncClient.connect``)."""
        return cls(AsyncClient.connect(settings))

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def submit(self, workflow: str, input: dict[str, Any] | None = None, *, priority: int = 0,
               idempotency_key: str | None = None, tenant: str = "default",
               token_budget: int | None = None) -> TaskRecord:
        return self._run(self.aio.submit(workflow, input, priority=priority,
                                         idempotency_key=idempotency_key, tenant=tenant,
                                         token_budget=token_budget))

    def submit_many(self, tasks: Iterable[SubmitRequest | Mapping[str, Any]], *,
                    tenant: str = "default") -> list[Outcome]:
        return self._run(self.aio.submit_many(tasks, tenant=tenant))

    def get(self, task_id: str) -> TaskRecord:
        return self._run(self.aio.get(task_id))

    def list(self, status: TaskStatus | str | None = None, workflow: str | None = None,
             tenant: str | None = None, limit: int = 100, cursor: str | None = None) -> TaskList:
        return self._run(self.aio.list(status, workflow, tenant, limit, cursor))

    def task_stats(self, tenant: str | None, since: float, bucket_s: float) -> TaskStats:
        return self._run(self.aio.task_stats(tenant, since, bucket_s))

    def wait_events(self, task_id: str, after: int = 0, timeout_s: float = 0.0) -> EventList:
        return self._run(self.aio.wait_events(task_id, after, timeout_s))

    def events(self, task_id: str, after: int = 0, follow: bool = False,
               poll_s: float = 5.0) -> Iterator[Event]:
        stream = self.aio.events(task_id, after, follow, poll_s)

        async def step() -> Event | None:
            try:
                return await stream.__anext__()
            except StopAsyncIteration:
                return None

        while (event := self._run(step())) is not None:
            yield event

    def wait(self, task_id: str, timeout_s: float | None = None) -> TaskRecord:
        return self._run(self.aio.wait(task_id, timeout_s))

    def result(self, task_id: str, timeout_s: float | None = None) -> Any:
        return self._run(self.aio.result(task_id, timeout_s))

    def cancel(self, task_id: str) -> TaskRecord:
        return self._run(self.aio.cancel(task_id))

    def retry(self, task_id: str) -> TaskRecord:
        return self._run(self.aio.retry(task_id))

    def signal(self, task_id: str, name: str, payload: Any = None) -> TaskRecord:
        return self._run(self.aio.signal(task_id, name, payload))

    def decide(self, task_id: str, call_id: str, decision: Literal["approve", "deny"],
               reason: str | None = None, arguments: dict[str, Any] | None = None) -> TaskRecord:
        return self._run(self.aio.decide(task_id, call_id, decision, reason, arguments))

    def workflows(self) -> SchemaList:
        return self._run(self.aio.workflows())

    def queue_stats(self) -> dict[str, Any]:
        return self._run(self.aio.queue_stats())

    def readiness(self) -> dict[str, str]:
        return self._run(self.aio.readiness())

    def publish(self, topic: str, data: Any = None, *, key: str | None = None,
                id: str | None = None, tenant: str = "default") -> TopicEvent:  # noqa: A002
        return self._run(self.aio.publish(topic, data, key=key, id=id, tenant=tenant))

    def topic_events(self, topic: str | None = None, tenant: str | None = None, limit: int = 100,
                     before: int | None = None) -> TopicEventList:
        return self._run(self.aio.topic_events(topic, tenant, limit, before))

    def event_report(self, event_id: str, tenant: str = "default") -> EventReport:
        return self._run(self.aio.event_report(event_id, tenant))

    def create_schedule(self, schedule_id: str, workflow: str, cron: str, *,
                        timezone: str = "UTC", input: dict[str, Any] | None = None,  # noqa: A002
                        catch_up: Literal["skip", "once"] = "skip",
                        overlap: Literal["skip", "allow", "cancel"] = "skip",
                        tenant: str = "default", paused: bool = False) -> Schedule:
        return self._run(self.aio.create_schedule(
            schedule_id, workflow, cron, timezone=timezone, input=input, catch_up=catch_up,
            overlap=overlap, tenant=tenant, paused=paused))

    def schedules(self, tenant: str | None = None, limit: int | None = None,
                  cursor: str | None = None) -> ScheduleList:
        return self._run(self.aio.schedules(tenant, limit, cursor))

    def schedule(self, schedule_id: str, tenant: str = "default") -> Schedule:
        return self._run(self.aio.schedule(schedule_id, tenant))

    def pause_schedule(self, schedule_id: str, tenant: str = "default") -> Schedule:
        return self._run(self.aio.pause_schedule(schedule_id, tenant))

    def resume_schedule(self, schedule_id: str, tenant: str = "default") -> Schedule:
        return self._run(self.aio.resume_schedule(schedule_id, tenant))

    def delete_schedule(self, schedule_id: str, tenant: str = "default") -> None:
        self._run(self.aio.delete_schedule(schedule_id, tenant))

    def close(self) -> None:
        """Stop this client's loop thread (a client is also cleaned up when the process ends)."""
        with contextlib.suppress(Exception):
            self._run(self.aio.aclose())
        self._loop.call_soon_threadsafe(self._loop.stop)


def _control_plane_names(namespace: str) -> list[str]:
    """The names of the runtime's control-plane actors on this cluster."""
    return [n for prefix in names.CONTROL_PLANE for n in actor_names(namespace, prefix)]


def join(settings: Settings) -> None:
    """Connect this process to the runtime's Ray cluster, unless it already is."""
    if ray.is_initialized():
        return
    where = settings.ray_address or _recorded_address(settings) or "auto"
    use_local_token_if_any()
    try:
        ray.init(address=where, namespace=settings.namespace, log_to_driver=False,
                 logging_level=logging.ERROR)
    except (ConnectionError, RuntimeError):
        raise RuntimeNotRunning(f"Ray address {where!r} (no Ray cluster answered)") from None
    if not settings.ray_log_to_driver:
        quiet_driver()  # a driver script's terminal gets no raylet notices


def address_file(settings: Settings) -> Path:
    """Where a runtime records the Ray address it runs on, for clients started in the same directory."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return settings.data_dir / "ray_address"


def _recorded_address(settings: Settings) -> str | None:
    path = settings.data_dir / "ray_address"
    return path.read_text().strip() or None if path.exists() else None
