"""Workflow workers: actors that claim tasks and run their workflow functions; and their pool.

A worker runs up to ``tasks_per_worker`` workflows at once as asyncio tasks, renews their leases in
one batched call every ``lease_s / 3``, and implements the Context's services: checkpointing through
the Store actor, agent calls through the role's mailbox (replies come back to ``deliver``), LLM calls
through the engine router. The pool replaces a worker that dies and releases its leases at once.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

import ray

from runtime import refs
from runtime.catalog import Catalog, load_catalog
from runtime.config import Settings
from runtime.engines.actor import Router, TokenSink
from runtime.errors import (
    AgentNotFound,
    LeaseLost,
    RaysquadError,
    TaskCancelled,
)
from runtime.models import AgentMessage, ChatRequest, Claim, Completion, TaskStatus
from runtime.pool import Member, Members
from runtime.tools.executor import Caller, ToolRouter
from runtime.workflow import Context, Parked

log = logging.getLogger(__name__)

# How long an agent call waits for its reply before checking that its mailbox still holds the message.
MAILBOX_CHECK_S = 10.0


class WorkflowWorker:
    def __init__(self, worker_id: str, settings: Settings, apps: list[str], store: Any,
                 dispatcher: Any, mailboxes: dict[str, Any], router: Router, tools: ToolRouter) -> None:
        self.id = worker_id
        self.settings = settings
        self.catalog: Catalog = load_catalog(apps)
        self.store = store
        self.dispatcher = dispatcher
        self.mailboxes = mailboxes
        self.router = router
        self.tools = tools
        self._tasks: dict[str, tuple[asyncio.Task[None], Context]] = {}
        self._replies: dict[str, asyncio.Future[tuple[bool, Any]]] = {}
        self._llm_requests: dict[str, set[tuple[str, str]]] = {}
        self._slot_free = asyncio.Event()
        self._stopping = False
        self._self_handle: Any = None
        self.completed = 0

    # -- the loop -------------------------------------------------------------------------------

    async def run(self) -> int:
        self._self_handle = ray.get_runtime_context().current_actor
        renewer = asyncio.create_task(self._renew_leases())
        try:
            while not self._stopping:
                free = self.settings.tasks_per_worker - len(self._tasks)
                if free <= 0:
                    self._slot_free.clear()
                    await self._slot_free.wait()
                    continue
                claims = await self.dispatcher.get_tasks.remote(self.id, free, 0.5)
                for claim in claims:
                    self._start(claim)
        finally:
            renewer.cancel()
        return self.completed

    async def stop(self) -> None:
        self._stopping = True

    def _start(self, claim: Claim) -> None:
        task = claim.task
        recorded = {key: refs.loads(data, self.store) for key, data in claim.steps.items()}
        wf = self.catalog.workflows.get(task.workflow)
        ctx = Context(
            task.id, task.workflow, task.priority, task.tenant, recorded, self,
            (wf.retry if wf and wf.retry else self.settings.retry), self.settings.step_timeout_s,
            self.settings.default_model,
        )
        ctx.cancel_requested = task.cancel_requested
        runner = asyncio.create_task(self._run_task(ctx, task.input))
        self._tasks[task.id] = (runner, ctx)

    async def _run_task(self, ctx: Context, raw_input: dict[str, Any]) -> None:
        status, output, error = TaskStatus.SUCCEEDED, None, None
        try:
            wf = self.catalog.workflow(ctx.workflow)
            result = await wf.fn(ctx, wf.validate_input(raw_input))
            output = wf.dump_output(result)
        except TaskCancelled:
            status = TaskStatus.CANCELLED
        except Parked as parked:
            log.info("task %s: waiting for signal %s", ctx.task_id, parked.name)
            self._forget(ctx.task_id)
            return
        except (LeaseLost, asyncio.CancelledError):
            log.info("task %s: lease lost, stopping here", ctx.task_id)
            self._forget(ctx.task_id)
            return
        except RaysquadError as e:
            status, error = TaskStatus.FAILED, str(e)
        except Exception as e:  # noqa: BLE001 - workflow code failed outside any step
            status, error = TaskStatus.FAILED, f"{type(e).__name__}: {e}"
        try:
            await self.store.finish.remote(ctx.task_id, self.id, status, output, error)
            self.completed += 1
        except LeaseLost:
            log.info("task %s: lease lost before it could finish", ctx.task_id)
        except Exception:  # noqa: BLE001 - the Store is unreachable: the lease runs out, it resumes
            log.exception("task %s: could not record its end", ctx.task_id)
        finally:
            self._forget(ctx.task_id)

    def _forget(self, task_id: str) -> None:
        self._tasks.pop(task_id, None)
        self._llm_requests.pop(task_id, None)
        self._slot_free.set()

    async def _renew_leases(self) -> None:
        while True:
            await asyncio.sleep(self.settings.lease_s / 3)
            if not self._tasks:
                continue
            try:
                held = await self.store.renew.remote(self.id, list(self._tasks), self.settings.lease_s)
            except Exception:  # noqa: BLE001 - try again next round, well within the lease
                log.exception("worker %s: lease renewal failed", self.id)
                continue
            for task_id, (runner, ctx) in list(self._tasks.items()):
                if task_id not in held:
                    runner.cancel()
                elif held[task_id]:
                    ctx.cancel_requested = True

    # -- the Context's services -------------------------------------------------------------------

    async def record(self, ctx: Context, key: str, value: Any) -> Any:
        data, found = refs.dumps(value)
        if len(data) > self.settings.inline_limit_bytes:
            value = refs.Ref.put(value, f"{ctx.task_id}/{key}", len(data), self.store)
            data, found = refs.dumps(value)
        to_persist = [(r.blob_key, [r.object_ref]) for r in found
                      if r.object_ref is not None and not r.persisted]
        cancel = await self.store.record_step.remote(ctx.task_id, self.id, key, data, to_persist)
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
                           reply_to=self._self_handle)
        reply: asyncio.Future[tuple[bool, Any]] = asyncio.get_running_loop().create_future()
        self._replies[msg.id] = reply
        try:
            await mailbox.put_batch.remote([(msg.id, ctx.priority, msg)])
            while True:
                try:
                    ok, value = await asyncio.wait_for(asyncio.shield(reply), MAILBOX_CHECK_S)
                    break
                except TimeoutError:
                    await self._resend_if_lost(mailbox, msg, reply)
        finally:
            self._replies.pop(msg.id, None)
        if not ok:
            raise value
        return value

    async def _resend_if_lost(self, mailbox: Any, msg: AgentMessage,
                              reply: asyncio.Future[tuple[bool, Any]]) -> None:
        """No reply yet: if the mailbox no longer holds the message (it restarted), send it again."""
        try:
            held = await mailbox.holds.remote(msg.id)
            if not held and not reply.done():
                log.warning("task %s step %s: message lost with its mailbox; sending it again",
                            msg.task_id, msg.step_key)
                await mailbox.put_batch.remote([(msg.id, msg.priority, msg)])
        except ray.exceptions.RayActorError:
            log.warning("task %s step %s: mailbox unreachable; will check again", msg.task_id,
                        msg.step_key)

    async def call_tool(self, ctx: Context, name: str, key: str, args: dict[str, Any]) -> Any:
        return await self.tools.call(name, args, Caller(ctx.task_id, key, ctx.tenant, ctx.priority))

    async def await_signal(self, ctx: Context, name: str, key: str,
                           wake_at: float | None) -> tuple[str, Any]:
        return await self.store.await_signal.remote(ctx.task_id, self.id, name, key, wake_at)  # type: ignore[no-any-return]

    async def deliver(self, message_id: str, ok: bool, value: Any) -> bool:
        """An agent's reply; False if nobody waits for it any more (timed out, task gone)."""
        reply = self._replies.get(message_id)
        if reply is None or reply.done():
            return False
        reply.set_result((ok, value))
        return True

    async def chat(self, ctx: Context, request: ChatRequest) -> Completion:
        step = (request.request_id or "").rpartition("/")[2]
        in_flight = self._llm_requests.setdefault(ctx.task_id, set())
        entry = (request.model, request.request_id or "")
        in_flight.add(entry)
        try:
            completion = await self.router.chat(request, TokenSink(self.store, ctx.task_id, step))
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
        self.store.append_event.remote(ctx.task_id, kind, data)

    async def info(self) -> dict[str, Any]:
        return {"id": self.id, "active": sorted(self._tasks), "completed": self.completed,
                "pending_replies": len(self._replies)}


class WorkerPool:
    """Keeps ``settings.workers`` workflow workers running; replaces the dead, releasing their leases."""

    def __init__(self, settings: Settings, apps: list[str], store: Any, dispatcher: Any,
                 mailboxes: dict[str, Any], router: Router, tools: ToolRouter) -> None:
        self.settings = settings
        self.apps = apps
        self.store = store
        self.dispatcher = dispatcher
        self.mailboxes = mailboxes
        self.router = router
        self.tools = tools
        self.members = Members(self._on_exit)
        self.started = 0
        self._stopping = False

    async def start(self) -> list[str]:
        for _ in range(self.settings.workers):
            self._spawn()
        return list(self.members.live)

    def _spawn(self) -> None:
        self.started += 1
        worker_id = f"worker-{self.started}-{uuid.uuid4().hex[:6]}"
        handle = (
            ray.remote(WorkflowWorker)
            .options(name=f"worker:{worker_id}", namespace=self.settings.namespace,
                     num_cpus=self.settings.worker_num_cpus, max_restarts=0, max_concurrency=10_000)
            .remote(worker_id, self.settings, self.apps, self.store, self.dispatcher,
                    self.mailboxes, self.router, self.tools)
        )
        self.members.add(Member(worker_id, handle), handle.run.remote())  # type: ignore[attr-defined]

    async def _on_exit(self, member: Member, error: BaseException | None) -> None:
        released = await self.dispatcher.worker_lost.remote(member.id)
        if released:
            log.warning("worker %s gone: %d task(s) queued again", member.id, released)
        if not self._stopping and not member.stopping:
            self._spawn()

    async def workers(self) -> dict[str, Any]:
        return {m.id: m.handle for m in self.members.live.values()}

    async def stop(self) -> None:
        self._stopping = True
        for member in list(self.members.live.values()):
            member.stopping = True
            member.handle.stop.remote()


def start_worker_pool(settings: Settings, apps: list[str], store: Any, dispatcher: Any,
                      mailboxes: dict[str, Any], router: Router, tools: ToolRouter) -> Any:
    return (
        ray.remote(WorkerPool)
        .options(name="pool:workers", namespace=settings.namespace, num_cpus=0, max_restarts=0,
                 max_concurrency=1000)
        .remote(settings, apps, store, dispatcher, mailboxes, router, tools)
    )

