"""Workflow workers: actors that claim tasks and run their workflow functions; and their pool.

A worker runs up to ``tasks_per_worker`` workflows at once as asyncio tasks, renews their leases in
one batched call every ``lease_s / 3``, and implements the Context's services: checkpointing through
the Store, agent calls through the role's mailbox (replies come back to ``deliver``), LLM calls
through the engine router. Every Store write of a run carries the run's lease (owner and fencing
token): once the task has been claimed again elsewhere, the write fails with LeaseLost and the stale
run stops there. The pool replaces a worker that dies and releases its leases at once; when the pool
itself restarts (its workers die with it), it starts new ones and releases every other lease.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
import uuid
from collections.abc import Callable
from typing import Any, Protocol

import ray

from runtime import metrics, names, refs, tracing
from runtime.bus import new_event, publish, wants
from runtime.catalog import Catalog, load_catalog
from runtime.cluster import member_actor_options
from runtime.config import Settings
from runtime.dispatch import DispatcherService
from runtime.engines.actor import Router, TokenSink
from runtime.errors import (
    ActorUnavailable,
    AgentNotFound,
    LeaseLost,
    RaysquadError,
    TaskCancelled,
)
from runtime.handles import ActorHandle, restarted
from runtime.models import (
    AgentMessage,
    ChatRequest,
    Claim,
    Completion,
    Lease,
    TaskRecord,
    TaskStatus,
    TopicEvent,
)
from runtime.pool import Member, Members, probe, retire
from runtime.queue import MailboxService, Replies
from runtime.store.service import StoreService
from runtime.tools.executor import Caller, ToolRouter
from runtime.workflow import Context, Parked

log = logging.getLogger(__name__)

#: A task's output rides in its ``task.<status>`` event up to this size (fetch the task for more).
ANNOUNCED_OUTPUT_BYTES = 64 * 1024
#: The worker pool actor's name; each worker is ``worker:<id>``.
POOL_NAME = names.WORKER_POOL
#: How often a pool that autoscales looks at the backlog.
SCALE_EVERY_S = 1.0


class WorkflowWorker:
    def __init__(self, worker_id: str, settings: Settings, apps: list[str], store: StoreService,
                 dispatcher: DispatcherService, mailboxes: dict[str, MailboxService], router: Router,
                 tools: ToolRouter) -> None:
        self.id = worker_id
        self.settings = settings
        self.catalog: Catalog = load_catalog(apps)
        self.store = store
        self.dispatcher = dispatcher
        self.mailboxes = mailboxes
        self.router = router
        self.tools = tools
        self._tasks: dict[str, tuple[asyncio.Task[None], Context, Lease]] = {}
        self._replies = Replies()
        self._announced: dict[str, bool] = {}  # task.<status> -> does anything subscribe
        tracing.configure(settings.tracing)
        self._llm_requests: dict[str, set[tuple[str, str]]] = {}
        self._slot_free = asyncio.Event()
        self._stopping = False
        self._reply_to: Any = self
        self.completed = 0
        self.last_active = time.monotonic()

    # -- the loop -------------------------------------------------------------------------------

    async def run(self) -> int:
        if ray.is_initialized() and ray.get_runtime_context().get_actor_id():
            self._reply_to = WorkerHandle(ray.get_runtime_context().current_actor)
        renewer = asyncio.create_task(self._renew_leases())
        try:
            while not self._stopping:
                free = self.settings.tasks_per_worker - len(self._tasks)
                if free <= 0:
                    self._slot_free.clear()
                    await self._slot_free.wait()
                    continue
                try:
                    claims = await self.dispatcher.get_tasks(self.id, free, 0.5)
                except ActorUnavailable:
                    continue  # the dispatcher stays down past the handle's deadline: ask again
                for claim in claims:
                    await self._start(claim)
            # Asked to stop (the pool shrinks): claim nothing more, finish what we hold.
            await asyncio.gather(*(runner for runner, _, _ in list(self._tasks.values())),
                                 return_exceptions=True)
        finally:
            renewer.cancel()
        return self.completed

    async def stop(self) -> None:
        self._stopping = True

    async def load(self) -> dict[str, Any]:
        """Tasks running here, and how long this worker has run none (the pool's sizing input)."""
        active = len(self._tasks)
        return {"active": active, "idle_s": 0.0 if active else time.monotonic() - self.last_active}

    async def _start(self, claim: Claim) -> None:
        task, lease = claim.task, claim.lease
        stale = self._tasks.pop(task.id, None)
        if stale is not None:  # our earlier run of it lost its lease: it must not run on beside this one
            log.warning("task %s: claimed again (run %d); stopping the earlier run", task.id,
                        lease.token)
            stale[0].cancel()
        try:
            recorded = {key: refs.loads(data, self.store) for key, data in claim.steps.items()}
        except Exception as e:  # noqa: BLE001 - a step written by other code (a renamed class)
            reason = f"its recorded steps cannot be read here ({type(e).__name__}: {e})"
            log.error("task %s: %s", task.id, reason)
            try:
                await self.store.abandon(lease, reason)
            except RaysquadError:
                pass  # the lease runs out, with the same effect
            return
        wf = self.catalog.workflows.get(task.workflow)
        ctx = Context(
            task.id, task.workflow, task.priority, task.tenant, recorded, self,
            (wf.retry if wf and wf.retry else self.settings.retry), self.settings.step_timeout_s,
            self.settings.default_model, agent_timeout_s=self.settings.agent_timeout_s,
            tool_timeout_s=self.settings.tools.step_timeout_s,
        )
        ctx.cancel_requested = task.cancel_requested
        runner = asyncio.create_task(self._run_task(ctx, lease, task.input, task.trace_parent))
        self._tasks[task.id] = (runner, ctx, lease)

    async def _run_task(self, ctx: Context, lease: Lease, raw_input: dict[str, Any],
                        trace_parent: str | None = None) -> None:
        with tracing.span(f"task {ctx.workflow}", parent=trace_parent, **{
                "raysquad.task_id": ctx.task_id, "raysquad.workflow": ctx.workflow,
                "raysquad.run": lease.token}) as span:
            status = await self._run_task_in_span(ctx, lease, raw_input)
            if span is not None and status is not None:
                span.set_attribute("raysquad.status", status.value)

    async def _run_task_in_span(self, ctx: Context, lease: Lease,
                                raw_input: dict[str, Any]) -> TaskStatus | None:
        """Run the task to its end and record it; its status, or None if it stopped short."""
        status, output, error = TaskStatus.SUCCEEDED, None, None
        started = time.monotonic()
        try:
            wf = self.catalog.workflow(ctx.workflow)
            result = await wf.fn(ctx, wf.validate_input(raw_input))
            output = wf.dump_output(result)
        except TaskCancelled:
            status = TaskStatus.CANCELLED
        except Parked as parked:
            log.info("task %s: waiting for signal %s", ctx.task_id, parked.name)
            self._forget(lease)
            return None
        except (LeaseLost, asyncio.CancelledError):
            log.info("task %s: lease lost (run %d), stopping here", ctx.task_id, lease.token)
            self._forget(lease)
            return None
        except (ActorUnavailable, ray.exceptions.RayActorError) as e:
            # The control plane, not the workflow, failed: the lease runs out and the task resumes.
            log.warning("task %s: %s; it resumes once its lease runs out", ctx.task_id, e)
            self._forget(lease)
            return None
        except RaysquadError as e:
            status, error = TaskStatus.FAILED, str(e)
        except Exception as e:  # noqa: BLE001 - workflow code failed outside any step
            status, error = TaskStatus.FAILED, f"{type(e).__name__}: {e}"
        try:
            record = await self.store.finish(lease, status, output, error)
            self.completed += 1
            metrics.inc("raysquad_tasks_finished", workflow=ctx.workflow, status=status.value)
            metrics.observe("raysquad_task_seconds", time.monotonic() - started,
                            workflow=ctx.workflow)
            await self._announce(record)
        except LeaseLost:
            log.info("task %s: lease lost before it could finish", ctx.task_id)
        except RaysquadError:  # the Store stayed unreachable: the lease runs out, it resumes
            log.exception("task %s: could not record its end", ctx.task_id)
        finally:
            self._forget(lease)
        return status

    async def _announce(self, task: TaskRecord) -> None:
        """Publish ``task.<status>`` for a task that ended, if anything subscribes to it (a
        workflow trigger, an agent role, an outbound webhook). Its id is the task's and the run's,
        so a finish sent again announces nothing new."""
        topic = f"task.{task.status.value}"
        wanted = self._announced.get(topic)
        if wanted is None:
            wanted = self._announced[topic] = wants(topic, self.catalog, self.settings.webhooks_out)
        if not wanted:
            return
        data: dict[str, Any] = {"task_id": task.id, "workflow": task.workflow,
                                "status": task.status.value, "error": task.error,
                                "runs": task.runs, "finished_at": task.finished_at}
        if len(json.dumps(task.output, default=str)) <= ANNOUNCED_OUTPUT_BYTES:
            data["output"] = task.output
        try:
            event = new_event(topic, data, key=task.id, event_id=f"task/{task.id}/{task.runs}",
                              tenant=task.tenant, source=f"task:{task.id}",
                              max_bytes=self.settings.max_input_bytes, runtime=True)
            await publish(self.store, self.settings.namespace, [event])
        except RaysquadError:
            log.warning("task %s: its end could not be announced on %s", task.id, topic,
                        exc_info=True)

    def _forget(self, lease: Lease) -> None:
        entry = self._tasks.get(lease.task_id)
        if entry is not None and entry[2] == lease:  # not a newer run of the same task
            del self._tasks[lease.task_id]
            self._llm_requests.pop(lease.task_id, None)
        self.last_active = time.monotonic()
        self._slot_free.set()

    async def _renew_leases(self) -> None:
        while True:
            await asyncio.sleep(self.settings.lease_s / 3)
            await self.renew_once()

    async def renew_once(self) -> None:
        """Renew every lease this worker holds; stop the runs whose lease is gone."""
        if not self._tasks:
            return
        leases = {task_id: lease.token for task_id, (_, _, lease) in self._tasks.items()}
        try:
            held = await self.store.renew(self.id, leases, self.settings.lease_s)
        except RaysquadError:  # try again next round, well within the lease
            log.warning("worker %s: lease renewal failed", self.id)
            return
        for task_id, (runner, ctx, lease) in list(self._tasks.items()):
            if leases.get(task_id) != lease.token:
                continue  # claimed again while the renewal was in flight
            if task_id not in held:
                runner.cancel()
            elif held[task_id]:
                ctx.cancel_requested = True

    def lease_of(self, ctx: Context) -> Lease:
        entry = self._tasks.get(ctx.task_id)
        if entry is None or entry[1] is not ctx:
            raise LeaseLost(ctx.task_id, self.id)
        return entry[2]

    # -- the Context's services -------------------------------------------------------------------

    async def record(self, ctx: Context, key: str, value: Any) -> Any:
        data, found = refs.dumps(value)
        if len(data) > self.settings.inline_limit_bytes:
            value = refs.Ref.put(value, f"{ctx.task_id}/{key}", len(data), self.store)
            data, found = refs.dumps(value)
        to_persist = [(r.blob_key, [r.object_ref]) for r in found
                      if r.object_ref is not None and not r.persisted]
        cancel = await self.store.record_step(self.lease_of(ctx), key, data, to_persist,
                                              ctx.step_elapsed_s)
        for r in found:
            r.persisted = True
            r.store = r.store or self.store
        ctx.cancel_requested = ctx.cancel_requested or cancel
        return value

    async def call_agent(self, ctx: Context, role: str, key: str, payload: Any) -> Any:
        mailbox = self.mailboxes.get(role)
        if mailbox is None:
            raise AgentNotFound(role, tuple(sorted(self.mailboxes)))
        msg = AgentMessage(id=uuid.uuid4().hex, role=role, task_id=ctx.task_id, step_key=key,
                           priority=ctx.priority, tenant=ctx.tenant, payload=payload,
                           reply_to=self._reply_to)
        return await self._replies.ask(mailbox, msg)

    async def publish(self, ctx: Context, topic: str, data: Any, key: str | None,
                      event_id: str) -> TopicEvent:
        event = new_event(topic, data, key=key, event_id=event_id, tenant=ctx.tenant,
                          source=f"task:{ctx.task_id}", max_bytes=self.settings.max_input_bytes)
        ((kept, _),) = await publish(self.store, self.settings.namespace, [event])
        return kept

    async def call_tool(self, ctx: Context, name: str, key: str, args: dict[str, Any]) -> Any:
        return await self.tools.call(name, args, Caller(ctx.task_id, key, ctx.tenant, ctx.priority))

    async def await_signal(self, ctx: Context, name: str, key: str,
                           wake_at: float | None) -> tuple[str, Any]:
        return await self.store.await_signal(self.lease_of(ctx), name, key, wake_at)

    async def deliver(self, message_id: str, ok: bool, value: Any) -> bool:
        """An agent's reply; False if nobody waits for it any more (timed out, task gone)."""
        return self._replies.deliver(message_id, ok, value)

    async def chat(self, ctx: Context, request: ChatRequest) -> Completion:
        step = (request.request_id or "").rpartition("/")[2]
        in_flight = self._llm_requests.setdefault(ctx.task_id, set())
        entry = (request.model, request.request_id or "")
        in_flight.add(entry)
        try:
            completion = await self.router.chat(
                request, TokenSink(self.store, ctx.task_id, step, lease=self.lease_of(ctx)))
        finally:
            in_flight.discard(entry)
        if ctx.cancel_requested:  # aborted by a cancel: never record a cut-off completion
            raise TaskCancelled(ctx.task_id)
        return completion

    async def cancel(self, task_id: str) -> bool:
        """The task was cancelled: stop at its next step boundary, and abort its LLM requests now."""
        entry = self._tasks.get(task_id)
        if entry is None:
            return False
        entry[1].cancel_requested = True
        for model, request_id in list(self._llm_requests.get(task_id, ())):
            await self.router.abort(model, request_id)
        return True

    def emit(self, ctx: Context, kind: str, data: dict[str, Any]) -> None:
        entry = self._tasks.get(ctx.task_id)
        if entry is not None and entry[1] is ctx:
            self.store.post_event(ctx.task_id, kind, data, entry[2])

    async def info(self) -> dict[str, Any]:
        return {"id": self.id, "active": sorted(self._tasks), "completed": self.completed,
                "pending_replies": len(self._replies)}


class WorkerHandle(ActorHandle):
    """One workflow worker actor, typed. A worker is replaced, not restarted: its calls fail fast."""

    async def run(self) -> int:
        return await self.via(WorkflowWorker.run, idempotent=False)()

    async def stop(self) -> None:
        self._send("stop")

    async def cancel(self, task_id: str) -> bool:
        return await self.via(WorkflowWorker.cancel, idempotent=False)(task_id)

    async def deliver(self, message_id: str, ok: bool, value: Any) -> bool:
        return await self.via(WorkflowWorker.deliver, idempotent=False)(message_id, ok, value)

    async def info(self) -> dict[str, Any]:
        return await self.via(WorkflowWorker.info, idempotent=False)()

    async def load(self) -> dict[str, Any]:
        return await self.via(WorkflowWorker.load, idempotent=False)()


class WorkerMember(Protocol):
    """What the pool needs of a worker: its loop, its load, ways to end it (asked, or killed)."""

    async def run(self) -> int: ...
    async def stop(self) -> None: ...
    async def load(self) -> dict[str, Any]: ...
    async def kill(self) -> None: ...


Spawner = Callable[[str], WorkerMember]


class WorkerPool:
    """Keeps the workflow workers running: replaces the dead (releasing their leases at once) and,
    when ``workers_max`` is above ``workers``, sizes the pool to the backlog as the agent pools do:
    one worker per ``worker_target_backlog`` queued or running tasks, grown at once, shrunk by the
    workers idle for ``worker_idle_s``. A worker no node has room for waits as a pending actor
    (which asks an autoscaling cluster for a node) and is the first to go when the pool shrinks."""

    def __init__(self, settings: Settings, apps: list[str], store: StoreService,
                 dispatcher: DispatcherService, mailboxes: dict[str, MailboxService], router: Router,
                 tools: ToolRouter, spawner: Spawner | None = None) -> None:
        self.settings = settings
        self.apps = apps
        self.store = store
        self.dispatcher = dispatcher
        self.mailboxes = mailboxes
        self.router = router
        self.tools = tools
        self._spawner = spawner or self._spawn_actor
        self.members = Members(self._on_exit)
        self.started = 0
        self._stopping = False
        self._loop: asyncio.Task[None] | None = None
        self._sizing = asyncio.Lock()  # one tick at a time: two would both grow for one backlog
        self.min = settings.workers
        self.max = settings.workers_max or settings.workers
        self.target = settings.worker_target_backlog or settings.tasks_per_worker
        if restarted():  # our workers died with us: start new ones and free the old ones' tasks
            asyncio.get_running_loop().create_task(self.start())

    async def start(self) -> list[str]:
        for _ in range(self.min):
            self._spawn()
        live = list(self.members.live)
        released = await self.dispatcher.workers_replaced(live)
        if released:
            log.warning("worker pool started: %d task(s) of workers gone before it queued again",
                        released)
        if self.max > self.min and self._loop is None:
            self._loop = asyncio.create_task(self._supervise())
        return live

    async def _supervise(self) -> None:
        while not self._stopping:
            try:
                await self.tick()
            except Exception:  # noqa: BLE001 - a failed tick is retried on the next one
                log.warning("worker pool: sizing tick failed", exc_info=True)
            await asyncio.sleep(SCALE_EVERY_S)

    async def tick(self) -> int:
        """Size the pool to the backlog (queued + running tasks); returns the size wanted."""
        async with self._sizing:
            return await self._size()

    async def _size(self) -> int:
        depth = int((await self.dispatcher.stats())["depth"])
        live = [m for m in self.members.live.values() if not m.stopping]
        loads = await probe(live, lambda m: m.handle.load())
        running = sum(int(a["active"]) for a in loads if isinstance(a, dict))
        wanted = max(self.min, min(self.max, math.ceil((depth + running) / self.target)))
        for _ in range(wanted - len(live)):
            self._spawn()
        if len(live) > wanted and depth == 0:
            await retire(live, loads, len(live) - wanted,
                         lambda a: a["active"] == 0 and a["idle_s"] >= self.settings.worker_idle_s)
        return wanted

    def _spawn(self) -> None:
        self.started += 1
        worker_id = f"worker-{self.started}-{uuid.uuid4().hex[:6]}"
        member = self._spawner(worker_id)
        self.members.add(Member(worker_id, member), member.run())

    def _spawn_actor(self, worker_id: str) -> WorkerHandle:
        actor = (
            ray.remote(WorkflowWorker)
            .options(**member_actor_options(self.settings, names.worker(worker_id),
                                            self.settings.worker_num_cpus,
                                            self.settings.worker_resources, max_concurrency=10_000))
            .remote(worker_id, self.settings, self.apps, self.store, self.dispatcher,
                    self.mailboxes, self.router, self.tools)
        )
        return WorkerHandle(actor, names.worker(worker_id), self.settings.namespace)

    async def _on_exit(self, member: Member, error: BaseException | None) -> None:
        if not self._stopping and not member.stopping:
            self._spawn()  # first: a replacement does not wait on the dispatcher
        released = await self.dispatcher.worker_lost(member.id, crashed=not member.stopping)
        if released:
            log.warning("worker %s gone: %d task(s) queued again", member.id, released)
        if member.stopping:
            await member.handle.kill()  # its loop has ended: free its process and resources

    async def workers(self) -> list[str]:
        return sorted(self.members.live)

    async def stop(self) -> None:
        self._stopping = True
        if self._loop is not None:
            self._loop.cancel()
        for member in list(self.members.live.values()):
            member.stopping = True
            await member.handle.stop()


class WorkerPoolHandle(ActorHandle):
    """The worker pool actor, typed."""

    async def start(self) -> list[str]:
        return await self.via(WorkerPool.start, idempotent=False)()

    async def workers(self, deadline_s: float | None = None) -> list[str]:
        return await self.via(WorkerPool.workers, deadline_s=deadline_s)()

    async def stop(self) -> None:
        await self.via(WorkerPool.stop)()


