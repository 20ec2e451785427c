"""Workflow workers: actors that claim tasks and start a run of each; and their pool.

A worker runs up to ``tasks_per_worker`` runs at once (``runtime.durable.run``: each run owns its Context's
services and its lease), renews their leases in one batched call every ``lease_s / 3``, stops a run
whose lease is gone, passes cancels on, and takes the replies of agents to its runs' agent steps
(``deliver``). The pool replaces a worker that dies and releases its leases at once; when the pool
itself restarts (its workers die with it), it starts new ones and releases every other lease.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
import uuid
from collections.abc import Callable
from typing import Any, Protocol

import ray

from runtime.actors import names
from runtime.actors.cluster import member_actor_options
from runtime.actors.handles import ActorHandle, restarted
from runtime.actors.members import Member, Members, probe, retire
from runtime.authoring.catalog import Catalog, load_catalog
from runtime.authoring.workflow import StepDefaults
from runtime.core import refs, tracing
from runtime.core.config import Settings
from runtime.core.errors import ActorUnavailable, RaysquadError
from runtime.core.models import Claim, Lease, TaskRecord
from runtime.durable.dispatch import DispatcherService
from runtime.durable.run import Run, RunDetails, RunPeers, Subscribed
from runtime.flow.queue import MailboxService, Replies
from runtime.llm.engine import Router
from runtime.store.service import StoreService
from runtime.tools.executor import ToolRouter

log = logging.getLogger(__name__)

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
        self._runs: dict[str, Run] = {}
        self._replies = Replies()
        tracing.configure(settings.tracing)
        self._peers = RunPeers(store, self.catalog, mailboxes, router, tools, self._replies,
                               reply_to=self,
                               subscribed=Subscribed(self.catalog, settings.webhooks_out))
        self._slot_free = asyncio.Event()
        self._stopping = False
        self.completed = 0
        self.last_active = time.monotonic()

    # -- the loop -------------------------------------------------------------------------------

    async def run(self) -> int:
        if ray.is_initialized() and ray.get_runtime_context().get_actor_id():
            self._peers = dataclasses.replace(
                self._peers, reply_to=WorkerHandle(ray.get_runtime_context().current_actor))
        renewer = asyncio.create_task(self._renew_leases())
        try:
            while not self._stopping:
                free = self.settings.tasks_per_worker - len(self._runs)
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
            await asyncio.gather(*(run.runner for run in list(self._runs.values()) if run.runner),
                                 return_exceptions=True)
        finally:
            renewer.cancel()
        return self.completed

    async def stop(self) -> None:
        self._stopping = True

    async def load(self) -> dict[str, Any]:
        """Tasks running here, and how long this worker has run none (the pool's sizing input)."""
        active = len(self._runs)
        return {"active": active, "idle_s": 0.0 if active else time.monotonic() - self.last_active}

    async def _start(self, claim: Claim) -> None:
        task, lease = claim.task, claim.lease
        stale = self._runs.pop(task.id, None)
        if stale is not None:  # our earlier run of it lost its lease: it must not run on beside this one
            log.warning("task %s: claimed again (run %d); stopping the earlier run", task.id,
                        lease.token)
            stale.stop()
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
        run = Run(self._details(task, lease, recorded))
        self._runs[task.id] = run
        run.start().add_done_callback(lambda _: self._ended(run))

    def _details(self, task: TaskRecord, lease: Lease, recorded: dict[str, Any]) -> RunDetails:
        settings = self.settings
        wf = self.catalog.workflows.get(task.workflow)
        defaults = StepDefaults(
            retry=wf.retry if wf and wf.retry else settings.retry, model=settings.default_model,
            step_timeout_s=settings.step_timeout_s, agent_timeout_s=settings.agent_timeout_s,
            tool_timeout_s=settings.tools.step_timeout_s, llm_cache=settings.llm_cache)
        return RunDetails(task, lease, recorded, defaults, settings.namespace,
                          settings.inline_limit_bytes, settings.max_input_bytes, self._peers,
                          settings.task_token_budget)

    def _ended(self, run: Run) -> None:
        if run.finished is not None:
            self.completed += 1
        if self._runs.get(run.task.id) is run:  # not a newer run of the same task
            del self._runs[run.task.id]
        self.last_active = time.monotonic()
        self._slot_free.set()

    async def _renew_leases(self) -> None:
        while True:
            await asyncio.sleep(self.settings.lease_s / 3)
            await self.renew_once()

    async def renew_once(self) -> None:
        """Renew every lease this worker holds; stop the runs whose lease is gone."""
        if not self._runs:
            return
        leases = {task_id: run.lease.token for task_id, run in self._runs.items()}
        try:
            held = await self.store.renew(self.id, leases, self.settings.lease_s)
        except RaysquadError:  # try again next round, well within the lease
            log.warning("worker %s: lease renewal failed", self.id)
            return
        for task_id, run in list(self._runs.items()):
            if leases.get(task_id) != run.lease.token:
                continue  # claimed again while the renewal was in flight
            if task_id not in held:
                run.stop()
            elif held[task_id]:
                run.cancel_at_next_step()

    async def cancel(self, task_id: str) -> bool:
        """The task was cancelled: stop at its next step boundary, and abort its LLM requests now."""
        run = self._runs.get(task_id)
        if run is None:
            return False
        await run.cancel()
        return True

    async def deliver(self, message_id: str, ok: bool, value: Any) -> bool:
        """An agent's reply; False if nobody waits for it any more (timed out, task gone)."""
        return self._replies.deliver(message_id, ok, value)

    async def info(self) -> dict[str, Any]:
        return {"id": self.id, "active": sorted(self._runs), "completed": self.completed,
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


