"""One run of a task: what a workflow worker starts for each claim (Temporal's rule: a run is an
object built from frozen details, and it owns its services).

A task's path, once claimed: ``Run(details)`` builds the workflow's ``Context`` with itself as its
``Services``; ``start`` runs the workflow function in a span; each step comes back to ``record`` (and
an agent, LLM, tool, signal or publish step to the call it names); ``_finish`` records the end under
the lease and ``_announce`` publishes ``task.<status>``. Every Store write carries the run's lease
(owner and fencing token): once the task has been claimed again elsewhere, the write fails with
LeaseLost and the run stops there. The worker that started it only renews its lease, cancels it,
and stops it when the lease is gone.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import ray

from runtime.authoring.catalog import Catalog
from runtime.authoring.workflow import Context, Parked, StepDefaults
from runtime.core import metrics, refs, tracing
from runtime.core.calls import ModelPlan
from runtime.core.config import WebhookTarget
from runtime.core.errors import (
    ActorUnavailable,
    AgentError,
    AgentNotFound,
    ApprovalNeeded,
    LeaseLost,
    RaysquadError,
    TaskCancelled,
    TokenBudgetExceeded,
)
from runtime.core.models import (
    AgentMessage,
    ChatRequest,
    Completion,
    Lease,
    TaskRecord,
    TaskStatus,
    TopicEvent,
)
from runtime.events.bus import new_event, publish, wants
from runtime.flow.queue import MailboxService, Replies
from runtime.llm.calls import call_model
from runtime.llm.engine import Router, TokenSink
from runtime.llm.usage import charge
from runtime.store.service import StoreService
from runtime.tools.executor import Caller, ToolRouter

log = logging.getLogger(__name__)

#: A task's output rides in its ``task.<status>`` event up to this size (fetch the task for more).
ANNOUNCED_OUTPUT_BYTES = 64 * 1024


class Subscribed:
    """Whether anything subscribes to a topic (``bus.wants``: a workflow trigger, an agent role, an
    outbound webhook), worked out once per topic for every run of a worker."""

    def __init__(self, catalog: Catalog, outbound: dict[str, WebhookTarget]) -> None:
        self._catalog = catalog
        self._outbound = outbound
        self._known: dict[str, bool] = {}

    def __call__(self, topic: str) -> bool:
        known = self._known.get(topic)
        if known is None:
            known = self._known[topic] = wants(topic, self._catalog, self._outbound)
        return known


@dataclass(frozen=True)
class RunPeers:
    """What the runs of one worker call, the same for each of them."""

    store: StoreService
    catalog: Catalog
    mailboxes: Mapping[str, MailboxService]
    router: Router
    tools: ToolRouter
    replies: Replies  #: the worker's: agents reply to ``reply_to``, which delivers here
    reply_to: Any  #: the worker's actor handle (the worker itself, in-process)
    subscribed: Subscribed


@dataclass(frozen=True)
class RunDetails:
    """Everything one run needs, made by the worker from a claim."""

    task: TaskRecord
    lease: Lease
    recorded: dict[str, Any]  #: the steps recorded by earlier runs, read back
    defaults: StepDefaults
    namespace: str
    inline_limit_bytes: int  #: a step's value past this goes to the object store (a Ref)
    max_input_bytes: int  #: the most an event's data may weigh
    peers: RunPeers
    token_budget: int | None = None  #: the runtime's default token budget of a task


class Run:
    """One run of one task: its lease, its Context, its LLM requests in flight; the Context's
    services. Made by the worker for a claim, started once."""

    def __init__(self, details: RunDetails) -> None:
        self.details = details
        self.task = details.task
        self.lease = details.lease
        self._peers = details.peers
        task = self.task
        self.context = Context(task.id, task.workflow, task.priority, task.tenant,
                               dict(details.recorded), self, details.defaults)
        self.context.cancel_requested = task.cancel_requested
        self._llm_requests: set[tuple[str, str]] = set()  # (model, request id)
        self._live = True  # until it ends or its lease is gone: no write of it leaves after
        self.runner: asyncio.Task[None] | None = None
        self.finished: TaskRecord | None = None  # its end as recorded

    # -- its life, as the worker sees it ------------------------------------------------------------

    def start(self) -> asyncio.Task[None]:
        self.runner = asyncio.create_task(self._run())
        return self.runner

    def stop(self) -> None:
        """Its lease is gone (not renewed, or the task claimed again): stop where it is."""
        self._live = False
        if self.runner is not None:
            self.runner.cancel()

    def cancel_at_next_step(self) -> None:
        self.context.cancel_requested = True

    async def cancel(self) -> None:
        """The task was cancelled: stop at its next step boundary, and abort its LLM requests now."""
        self.cancel_at_next_step()
        for model, request_id in list(self._llm_requests):
            await self._peers.router.abort(model, request_id)

    # -- the path: run the workflow, record its end, announce it ------------------------------------

    async def _run(self) -> None:
        task = self.task
        try:
            with tracing.span(f"task {task.workflow}", parent=task.trace_parent, **{
                    "raysquad.task_id": task.id, "raysquad.workflow": task.workflow,
                    "raysquad.run": self.lease.token}) as span:
                status = await self._run_to_end()
                if span is not None and status is not None:
                    span.set_attribute("raysquad.status", status.value)
        finally:
            self._live = False

    async def _run_to_end(self) -> TaskStatus | None:
        """Run the task to its end and record it; its status, or None if it stopped short."""
        task, ctx = self.task, self.context
        status, output, error = TaskStatus.SUCCEEDED, None, None
        started = time.monotonic()
        try:
            wf = self._peers.catalog.workflow(task.workflow)
            result = await wf.fn(ctx, wf.validate_input(task.input))
            output = wf.dump_output(result)
        except TaskCancelled:
            status = TaskStatus.CANCELLED
        except Parked as parked:
            log.info("task %s: waiting for signal %s", task.id, parked.name)
            return None
        except (LeaseLost, asyncio.CancelledError):
            log.info("task %s: lease lost (run %d), stopping here", task.id, self.lease.token)
            return None
        except (ActorUnavailable, ray.exceptions.RayActorError) as e:
            # The control plane, not the workflow, failed: the lease runs out and the task resumes.
            log.warning("task %s: %s; it resumes once its lease runs out", task.id, e)
            return None
        except RaysquadError as e:
            status, error = TaskStatus.FAILED, str(e)
        except Exception as e:  # noqa: BLE001 - workflow code failed outside any step
            status, error = TaskStatus.FAILED, f"{type(e).__name__}: {e}"
        await self._finish(status, output, error, started)
        return status

    async def _finish(self, status: TaskStatus, output: Any, error: str | None,
                      started: float) -> None:
        task = self.task
        try:
            self.finished = await self._peers.store.finish(self.lease, status, output, error)
            metrics.inc("raysquad_tasks_finished", workflow=task.workflow, status=status.value)
            metrics.observe("raysquad_task_seconds", time.monotonic() - started,
                            workflow=task.workflow)
            await self._announce(self.finished)
        except LeaseLost:
            log.info("task %s: lease lost before it could finish", task.id)
        except RaysquadError:  # the Store stayed unreachable: the lease runs out, it resumes
            log.exception("task %s: could not record its end", task.id)

    async def _announce(self, task: TaskRecord) -> None:
        """Publish ``task.<status>`` for a task that ended, if anything subscribes to it (a
        workflow trigger, an agent role, an outbound webhook). Its id is the task's and the run's,
        so a finish sent again announces nothing new."""
        topic = f"task.{task.status.value}"
        if not self._peers.subscribed(topic):
            return
        data: dict[str, Any] = {"task_id": task.id, "workflow": task.workflow,
                                "status": task.status.value, "error": task.error,
                                "runs": task.runs, "finished_at": task.finished_at}
        if len(json.dumps(task.output, default=str)) <= ANNOUNCED_OUTPUT_BYTES:
            data["output"] = task.output
        try:
            event = new_event(topic, data, key=task.id, event_id=f"task/{task.id}/{task.runs}",
                              tenant=task.tenant, source=f"task:{task.id}",
                              max_bytes=self.details.max_input_bytes, runtime=True)
            await publish(self._peers.store, self.details.namespace, [event])
        except RaysquadError:
            log.warning("task %s: its end could not be announced on %s", task.id, topic,
                        exc_info=True)

    def _held_lease(self) -> Lease:
        """The lease, for a write that must be fenced; LeaseLost once this run is over."""
        if not self._live:
            raise LeaseLost(self.task.id, self.lease.owner)
        return self.lease

    # -- the Context's services ---------------------------------------------------------------------

    async def record(self, key: str, value: Any) -> Any:
        value, cancel = await refs.record(self._peers.store, self._held_lease(), key, value,
                                          self.details.inline_limit_bytes,
                                          self.context.step_elapsed_s)
        if cancel:
            self.cancel_at_next_step()
        return value

    async def call_agent(self, role: str, key: str, payload: Any) -> Any:
        mailboxes = self._peers.mailboxes
        mailbox = mailboxes.get(role)
        if mailbox is None:
            raise AgentNotFound(role, tuple(sorted(mailboxes)))
        while True:
            msg = AgentMessage(id=uuid.uuid4().hex, role=role, task_id=self.task.id, step_key=key,
                               priority=self.task.priority, tenant=self.task.tenant,
                               payload=payload, reply_to=self._peers.reply_to,
                               lease=self._held_lease())
            try:
                return await self._ask_agent(mailbox, msg)
            except ApprovalNeeded as wait:
                await self._wait_for_approval(wait)  # parks the task, or the decision is in

    async def _wait_for_approval(self, wait: ApprovalNeeded) -> None:
        """A call of the agent waits for a person: park the task on ``approval:<call_id>`` (its
        decision, once sent, is recorded under the agent's step, where the replica finds it when
        the message is handled again)."""
        name = f"approval:{wait.call_id}"
        # Logged in the park's own transaction: only when the task parks (a run resumed by the
        # decision finds it and asks no one again), and never after the park (fenced out).
        requested = ("approval.requested", {"call_id": wait.call_id, "tool": wait.tool,
                                            "arguments": wait.arguments, "step": wait.step_key})
        kind, _ = await self.await_signal(name, f"{wait.step_key}/{name}", None, requested)
        if kind == "parked":
            raise Parked(self.task.id, name)

    async def _ask_agent(self, mailbox: MailboxService, msg: AgentMessage) -> Any:
        try:
            reply = await self._peers.replies.ask(mailbox, msg)
        except ApprovalNeeded:
            raise
        except Exception as e:
            if self.context.cancel_requested:  # the agent stopped for the cancel
                raise TaskCancelled(self.task.id) from None
            if isinstance(e, AgentError) and e.error_type == TokenBudgetExceeded.__name__:
                # Not the agent's to retry: every try would spend more of the task's tokens.
                task = await self._peers.store.get_task(self.task.id)
                raise TokenBudgetExceeded(self.task.id, task.tokens_used, task.token_budget
                                          or self.details.token_budget or 0) from None
            raise
        if self.context.cancel_requested:  # it finished regardless: the task is cancelled all the same
            raise TaskCancelled(self.task.id)
        return reply

    async def chat(self, request: ChatRequest, plan: ModelPlan) -> Completion:
        step = (request.request_id or "").rpartition("/")[2]

        async def on_engine(asked: ChatRequest) -> Completion:
            entry = (asked.model, asked.request_id or "")
            self._llm_requests.add(entry)
            try:
                completion = await self._peers.router.chat(
                    asked, TokenSink(self._peers.store, self.task.id, step,
                                     lease=self._held_lease()))
            finally:
                self._llm_requests.discard(entry)
            if self.context.cancel_requested:  # aborted by a cancel: never record a cut-off one
                raise TaskCancelled(self.task.id)
            return completion

        completion = await call_model(request, plan, on_engine, self._peers.store,
                                      task_id=self.task.id, step_key=step, emit=self.emit)
        if not completion.cached:  # a memo's answer spent nothing now
            await charge(self._peers.store, self._held_lease(), completion,
                         self.details.token_budget)
        return completion

    async def call_tool(self, name: str, key: str, args: dict[str, Any]) -> Any:
        task = self.task
        return await self._peers.tools.call(name, args,
                                            Caller(task.id, key, task.tenant, task.priority))

    async def await_signal(self, name: str, key: str, wake_at: float | None,
                           announce: tuple[str, dict[str, Any]] | None = None) -> tuple[str, Any]:
        return await self._peers.store.await_signal(self._held_lease(), name, key, wake_at,
                                                    announce)

    async def publish(self, topic: str, data: Any, key: str | None, event_id: str) -> TopicEvent:
        event = new_event(topic, data, key=key, event_id=event_id, tenant=self.task.tenant,
                          source=f"task:{self.task.id}", max_bytes=self.details.max_input_bytes)
        ((kept, _),) = await publish(self._peers.store, self.details.namespace, [event])
        return kept

    def emit(self, kind: str, data: dict[str, Any]) -> None:
        if self._live:
            self._peers.store.post_event(self.task.id, kind, data, self.lease)
