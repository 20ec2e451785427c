"""Agents: the context a handler sees, the replica actor that runs one, and the pool of a role
(``Agent``, what users subclass, is in ``runtime.authoring.agent``).

A role is a pool of replica actors consuming one mailbox (a QueueActor). A replica takes messages in
batches, handles up to ``concurrency`` at once (a ``Handling`` each: the handler's ``AgentContext``
goes through it, as a workflow's ``Context`` goes through its run), sends each result to the
workflow worker that asked, then acknowledges it. A message taken by a replica that dies goes back
to the mailbox, so a new replica handles it again. Pools grow with the mailbox's backlog up to
``max_replicas``, shrink after ``idle_s`` without work, down to ``min_replicas`` (zero allowed), and
wake when work arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import Any, Protocol

import ray

from runtime.actors import names
from runtime.actors.cluster import member_actor_options
from runtime.actors.handles import ActorHandle, restarted
from runtime.actors.members import Member, Members, probe, retire
from runtime.actors.processes import titled
from runtime.authoring.agent import Agent
from runtime.authoring.workflow import Messages, chat_request, numbered
from runtime.core import refs
from runtime.core.calls import ModelPlan, want_memo
from runtime.core.config import AgentPoolConfig, Settings
from runtime.core.errors import (
    ActorUnavailable,
    AgentError,
    AgentNotFound,
    ApprovalNeeded,
    ModelFailed,
    TaskCancelled,
)
from runtime.core.models import AgentMessage, ChatRequest, Completion, ToolCall, TopicEvent
from runtime.core.refs import Ref
from runtime.core.sizes import approx_size
from runtime.events.bus import new_event, publish
from runtime.flow.queue import MailboxHandle, MailboxService, Replies
from runtime.llm.calls import call_model
from runtime.llm.engine import Router, TokenSink
from runtime.llm.usage import charge
from runtime.replicas.loop import LoopSpec, LoopState, run_loop
from runtime.store.service import StoreService
from runtime.tools.executor import Caller, ToolRouter
from runtime.tools.mcp import mcp_tools
from runtime.tools.registry import DEFINED, defined_tool

log = logging.getLogger(__name__)
WATCH_S = 1.0  # an agent pool looks at its mailbox at least this often


class AgentServices(Protocol):
    """What an AgentContext needs from the replica handling its message (``Handling``, one per
    message, which knows the message; a test can supply its own)."""

    async def chat(self, request: ChatRequest, plan: ModelPlan) -> Completion:
        """Run one chat completion as ``plan`` says (the memo, fallback models), its text streamed
        to the task's events."""

    async def call_tool(self, name: str, args: dict[str, Any], call_id: str | None = None) -> Any:
        """Run a tool call (with its gate, timeout and retries) and return its result; ``call_id``
        names it for an approval (the model's id for the call)."""

    async def call_agent(self, role: str, step_key: str, payload: Any,
                         timeout_s: float | None) -> Any:
        """Send ``payload`` to the role's mailbox as ``step_key`` and wait for the reply, at most
        ``timeout_s`` (else the settings' agent timeout)."""

    async def publish(self, topic: str, data: Any, key: str | None, event_id: str) -> TopicEvent:
        """Publish an event (kept once per ``event_id``) and return it as kept."""

    def emit(self, kind: str, data: dict[str, Any]) -> None:
        """Append an event to the task's log, without waiting (not fenced)."""


class AgentContext:
    """What a handler sees besides its message: the LLM, tools, progress events, publishing events
    and delegating to other roles.

    A handler runs at least once per message: a replica that dies mid-handler, or (for an event) a
    handler that raises, means it runs again. What it sends should therefore be safe to send twice:
    ``publish`` gives each event an id made from the message and the order of the publish, so a
    handler that runs again the same way publishes nothing new; a delegation (``agent(role).run``)
    is part of this handler's work, not a step of its own, and runs again with it."""

    def __init__(self, msg: AgentMessage, services: AgentServices, default_model: str,
                 agent: Agent | None = None, llm_cache: bool = False) -> None:
        self.task_id = msg.task_id
        self.step_key = msg.step_key
        self.priority = msg.priority
        self.tenant = msg.tenant
        self.event = msg.event
        self.redelivered = msg.redelivered
        self._msg = msg
        self._services = services
        self._default_model = default_model
        self._agent = agent
        self._llm_cache = llm_cache  # the deployment's memo, where the call and the agent say nothing
        self._calls = 0
        #: The last ``run_loop``'s conversation and the results of its calls (what the model found).
        self.loop = LoopState()
        #: True after a call replayed from an earlier run's record (until a call is made anew): the
        #: progress the handler emits then was emitted by that run, and is not repeated.
        self.replaying = False
        self._published = 0
        self._delegated = 0

    def _origin(self) -> str:
        """What this handler's work is part of, for the ids of what it sends."""
        if self._msg.event is not None:
            return f"event/{self._msg.event.tenant}/{self._msg.event.id}/{self._msg.role}"
        return f"{self.task_id}/{self.step_key}"

    async def publish(self, topic: str, data: Any = None, *, key: str | None = None,
                      id: str | None = None) -> TopicEvent:  # noqa: A002 - the API's name
        """Publish an event (tenant: this message's). Without an ``id``, a run of this handler
        again publishes the same ids in the same order, which the Store keeps once."""
        self._published += 1
        return await self._services.publish(
            topic, data, key, id or f"{self._origin()}/publish/{self._published}")

    def agent(self, role: str) -> Delegate:
        """Another role, for ``await ctx.agent("reviewer").run(payload)``: the message goes through
        that role's mailbox with this one's priority and tenant, and its reply comes back here."""
        return Delegate(self, role)

    async def chat(self, messages: Messages, *, model: str | None = None, max_tokens: int = 128,
                   temperature: float = 0.0, tools: Sequence[Any] = (), tool_choice: str = "auto",
                   response_format: Any = None, cache: bool | None = None,
                   fallback_models: Sequence[str] | None = None) -> Completion:
        """One chat completion (part of the agent's step, recorded under it).
        ``tools``, ``tool_choice`` and ``response_format`` as in a workflow's ``ctx.llm.chat``.
        It is tried on its model under the deployment's retry policy, then on each of
        ``fallback_models`` (default: the agent's); a call that runs out of every model raises
        ``ModelFailed`` naming its dead letter, and fails the task's agent step. ``cache``: answer
        from the Store's memo (default: the agent's ``cache``, else ``RAYSQUAD_LLM_CACHE``;
        temperature 0 only)."""
        agent = self._agent
        memo = want_memo(cache, agent.cache if agent is not None else None, self._llm_cache,
                         temperature=temperature)
        if fallback_models is None:
            fallback_models = agent.fallback_models if agent is not None else ()
        self._calls += 1
        request = chat_request(
            model or self._default_model, messages, max_tokens=max_tokens, temperature=temperature,
            tools=tools, tool_choice=tool_choice, response_format=response_format,
            priority=self.priority, tenant=self.tenant,
            request_id=f"{self.task_id}/{self.step_key}/{self._calls}",
            session=self._origin())  # the same at every turn, and when the step is handled again
        return await self._services.chat(
            request, ModelPlan(fallback_models=tuple(fallback_models), cache=memo))

    async def run_loop(self, input: Any = None, **overrides: Any) -> Any:  # noqa: A002
        """Run the agent loop on ``input`` (``runtime.replicas.loop``) with this role's declared
        instructions, tools, output type, handoffs, turns and model; ``overrides`` replace any of
        them (``instructions=``, ``tools=``, ``output_type=``, ``handoffs=``, ``max_turns=``,
        ``max_tool_errors=``, ``model=``, ``max_tokens=``, ``fallback_models=``, ``cache=``).
        Returns the output type's value as a dict, else the final text."""
        agent = self._agent
        declared: dict[str, Any] = {} if agent is None else {
            "instructions": agent.instructions_for(self._msg), "tools": tuple(agent.tools),
            "output_type": agent.output_type, "handoffs": tuple(agent.handoffs),
            "max_turns": agent.max_turns, "max_tool_errors": agent.max_tool_errors,
            "model": agent.model}
        spec = LoopSpec(role=self._msg.role, **{**declared, **overrides})
        self.loop = LoopState()
        return await run_loop(self, spec, input, self.loop)

    async def tool(self, name: str, /, **args: Any) -> Any:
        """Call a tool (with its gate, timeout and retries); part of the agent's step, like chat.
        A tool that requires approval parks the task until a person decides on the call."""
        return await self._services.call_tool(name, args)

    async def tool_call(self, call: ToolCall) -> Any:
        """A tool call the model made (its id names it for an approval), under the tool's own name
        (a model calls an MCP tool ``files.read_file`` as ``files__read_file``)."""
        known = DEFINED.get(call.name)
        name = known.name if known is not None else call.name
        return await self._services.call_tool(name, dict(call.arguments), call.id)

    def emit(self, **data: Any) -> None:
        """A progress event on the task (not fenced: a handler may run again for the same step; what
        follows a replayed call is not emitted again). An event's handler has no task: its progress
        goes to the log only."""
        if not self.task_id:
            log.info("agent %s (event %s): %s", self._msg.role, self.step_key, data)
            return
        if not self.replaying:
            self._services.emit("agent", {"step": self.step_key, **data})


class Delegate:
    """A role that a handler hands work to (``AgentContext.agent``)."""

    def __init__(self, ctx: AgentContext, role: str) -> None:
        self._ctx = ctx
        self.role = role

    async def run(self, payload: Any = None, *, timeout_s: float | None = None) -> Any:
        ctx = self._ctx
        ctx._delegated += 1
        step_key = f"{ctx.step_key}/agent:{self.role}#{ctx._delegated}"
        return await ctx._services.call_agent(self.role, step_key, payload, timeout_s)


class Handling:
    """One message handled by a replica: runs the role's handler on it with an AgentContext whose
    services it is, then sends the result back (for an event: finishes its delivery)."""

    def __init__(self, msg: AgentMessage, replica: AgentReplica) -> None:
        self.msg = msg
        self._replica = replica
        self.context = AgentContext(msg, self, replica.settings.default_model, replica.agent,
                                    llm_cache=replica.settings.llm_cache)
        self._recorded: dict[str, bytes] | None = None  # this step's calls recorded before
        self._counts: dict[str, int] = {}

    def _call_key(self, what: str) -> str:
        """The key a call is recorded under: ``<step>/llm``, ``<step>/tool:<name>``, then ``#2``,
        ``#3`` ... in the order the handler makes them (as a workflow's step keys)."""
        return f"{self.msg.step_key}/{numbered(self._counts, what)}"

    async def _once(self, key: str, call: Callable[[], Awaitable[Any]],
                    charge: Callable[[Any], Awaitable[None]] | None = None) -> Any:
        """Run a model or tool call of a task's handler once: what an earlier run of this step
        recorded is replayed, what it did not is made and recorded (fenced by the run's lease).
        ``charge``, given what the call made, adds its cost to the task beside the record (both
        writes leave in one group commit)."""
        msg, replica = self.msg, self._replica
        if msg.lease is None or not replica.settings.agent_record_calls:
            value = await call()  # an event's handler (no task to record under), or recording off
            if charge is not None:
                await charge(value)
            return value
        if self._recorded is None:
            self._recorded = await replica.store.steps_under(msg.task_id, f"{msg.step_key}/")
        if key in self._recorded:
            self.context.replaying = True  # what follows from it was said before: not again
            return refs.loads(self._recorded[key], replica.store)
        self.context.replaying = False
        value = await call()
        recording = refs.record(replica.store, msg.lease, key, value,
                                replica.settings.inline_limit_bytes)
        if charge is None:
            value, cancel = await recording
        else:  # a budget overrun raises once the call is recorded: its tokens were spent
            (value, cancel), _ = await asyncio.gather(recording, charge(value))
        if cancel:  # the task is being cancelled: its handler goes no further
            raise TaskCancelled(msg.task_id)
        return value

    async def run(self) -> None:
        msg, replica = self.msg, self._replica
        if msg.event is not None:
            await self._run_for_event()
            return
        try:
            value = await replica.agent.handle(msg, self.context)
            size = approx_size(value)
            if size > replica.settings.inline_limit_bytes and not isinstance(value, Ref):
                value = Ref.put(value, f"{msg.task_id}/{msg.step_key}", size, replica.store)
            ok = True
        except ApprovalNeeded as e:  # not a failure: the task's run parks on it
            value, ok = e, False
        except ModelFailed as e:  # as itself: the step fails at once, its dead letter resumes it
            log.info("task %s step %s: agent %s's model call failed (dead letter %s)",
                     msg.task_id, msg.step_key, replica.role, e.dead_letter or "-")
            value, ok = e, False
        except Exception as e:  # noqa: BLE001 - the handler's failure is the step's to retry
            log.info("task %s step %s: agent %s raised %s", msg.task_id, msg.step_key,
                     replica.role, type(e).__name__)
            value, ok = AgentError(replica.role, str(e), type(e).__name__), False
        try:
            await msg.reply_to.deliver(msg.id, ok, value)
        except Exception:  # noqa: BLE001 - the worker is gone; the task re-sends when it resumes
            log.info("task %s step %s: worker gone, reply dropped", msg.task_id, msg.step_key)

    async def _run_for_event(self) -> None:
        """An event this role subscribes to: handled, the delivery is finished; a handler that
        raises leaves it to come again (the bus redelivers it after ``event_retry_s``)."""
        msg, replica = self.msg, self._replica
        event = msg.event
        assert event is not None
        try:
            await replica.agent.handle(msg, self.context)
            await replica.store.finish_delivery(event.seq, f"agent:{replica.role}", "handled")
        except Exception as e:  # noqa: BLE001 - the delivery comes due again
            log.warning("agent %s: handling event %s raised %s; it will be delivered again",
                        replica.role, event.id, type(e).__name__)

    # -- the AgentContext's services ----------------------------------------------------------------

    async def chat(self, request: ChatRequest, plan: ModelPlan) -> Completion:
        msg, replica = self.msg, self._replica
        key = self._call_key("llm")
        # A task's call is retried on each model as the deployment says, and kept as a dead letter
        # when every model ran out (a replay records it under ``key`` and resumes the task).
        plan = replace(plan, retry=replica.settings.retry, dead_letter=msg.lease is not None)

        async def on_engine(asked: ChatRequest) -> Completion:
            return await replica.router.chat(
                asked, TokenSink(replica.store, msg.task_id, msg.step_key))

        async def call() -> Completion:
            return await call_model(request, plan, on_engine, replica.store, task_id=msg.task_id,
                                    step_key=key, emit=self.emit if msg.task_id else None)

        async def charged(completion: Completion) -> None:
            # A task's call: its tokens count against its budget (a memo's answer spent none).
            if msg.lease is not None and not completion.cached:
                await charge(replica.store, msg.lease, completion,
                             replica.settings.task_token_budget)

        completion: Completion = await self._once(key, call, charged)
        return completion

    async def call_tool(self, name: str, args: dict[str, Any], call_id: str | None = None) -> Any:
        msg, tools = self.msg, self._replica.tools
        if tools is None:
            raise RuntimeError("this agent context has no tool executors")
        key = self._call_key(f"tool:{name}")

        async def call() -> Any:
            arguments = args
            if msg.lease is not None and (defined_tool(name).requires_approval
                                          or name in self._replica.agent.approve):
                decision = await self._decision(call_id or key.rpartition("/")[2], name, args)
                if decision.get("decision") != "approve":  # the model hears why, as the result
                    return {"denied": True, "reason": decision.get("reason") or "denied"}
                arguments = decision.get("arguments") or args
            # The call's own key: a dead letter of it, replayed, is recorded as this call (which
            # the handler replays), never as the whole agent step's answer.
            return await tools.call(name, arguments, Caller(msg.task_id, key, msg.tenant,
                                                            msg.priority))

        return await self._once(key, call)

    async def _decision(self, call_id: str, tool: str, args: dict[str, Any]) -> dict[str, Any]:
        """A person's decision on this call, recorded by the task's run under this step
        (``<step>/approval:<call_id>``); ApprovalNeeded (the task parks) while there is none."""
        msg = self.msg
        key = f"{msg.step_key}/approval:{call_id}"
        recorded = self._recorded or {}
        if key not in recorded:
            raise ApprovalNeeded(msg.task_id, msg.step_key, call_id, tool, args)
        _, payload = refs.loads(recorded[key], self._replica.store)
        return dict(payload or {})

    async def call_agent(self, role: str, step_key: str, payload: Any,
                         timeout_s: float | None) -> Any:
        msg, replica = self.msg, self._replica
        delegation = AgentMessage(id=uuid.uuid4().hex, role=role, task_id=msg.task_id,
                                  step_key=step_key, priority=msg.priority, tenant=msg.tenant,
                                  payload=payload, reply_to=replica.reply_to(), lease=msg.lease)
        mailbox = replica.mailbox_of(role)
        return await asyncio.wait_for(replica.replies.ask(mailbox, delegation),
                                      timeout_s or replica.settings.agent_timeout_s)

    async def publish(self, topic: str, data: Any, key: str | None, event_id: str) -> TopicEvent:
        settings = self._replica.settings
        event = new_event(topic, data, key=key, event_id=event_id, tenant=self.msg.tenant,
                          source=f"agent:{self.msg.role}", max_bytes=settings.max_input_bytes)
        ((kept, _),) = await publish(self._replica.store, settings.namespace, [event])
        return kept

    def emit(self, kind: str, data: dict[str, Any]) -> None:
        self._replica.store.post_event(self.msg.task_id, kind, data)


class AgentReplica:
    def __init__(self, replica_id: str, role: str, agent_cls: type[Agent], settings: Settings,
                 mailbox: MailboxService, store: StoreService, router: Router,
                 tools: ToolRouter | None = None) -> None:
        self.id = replica_id
        self.role = role
        mcp_tools(settings)  # the MCP servers' tools defined here too: a role's tools may name them
        self.agent = agent_cls()
        self.settings = settings
        self.mailbox = mailbox
        self.store = store
        self.router = router
        self.tools = tools
        self._stopping = False
        self._active: set[asyncio.Task[None]] = set()
        self.last_active = time.monotonic()
        self.handled = 0
        self.replies = Replies()  # this replica's delegations to other roles
        self._mailboxes: dict[str, MailboxService] = {role: mailbox}
        self._reply_to: Any = None

    def reply_to(self) -> Any:
        """Where replies to this replica's delegations go: its own actor (or itself in-process)."""
        if self._reply_to is None:
            actor = ray.get_runtime_context().current_actor if ray.is_initialized() else None
            self._reply_to = ReplicaHandle(actor, f"agent:{self.id}", self.settings.namespace) \
                if actor is not None else self
        return self._reply_to

    def __repr__(self) -> str:
        """How Ray prefixes this replica's log lines: ``(AgentReplica(researcher-1-ab12cd) pid=...)``."""
        return f"AgentReplica({self.id})"

    def mailbox_of(self, role: str) -> MailboxService:
        mailbox = self._mailboxes.get(role)
        if mailbox is None:
            try:
                mailbox = MailboxHandle.named(names.agent_mailbox(role), self.settings.namespace)
            except ValueError:
                raise AgentNotFound(role, tuple(sorted(self._mailboxes))) from None
            self._mailboxes[role] = mailbox
        return mailbox

    async def deliver(self, message_id: str, ok: bool, value: Any) -> bool:
        """The reply to one of this replica's delegations."""
        return self.replies.deliver(message_id, ok, value)

    async def run(self, concurrency: int) -> int:
        await self.agent.setup()
        while not self._stopping:
            free = concurrency - len(self._active)
            if free <= 0:
                await asyncio.wait(self._active, return_when=asyncio.FIRST_COMPLETED)
                continue
            try:
                batch = await self.mailbox.get_batch(self.id, free, 0.5)
            except ActorUnavailable:
                continue  # the mailbox stays down past the handle's deadline: ask again
            for item_id, msg in batch:
                task = asyncio.create_task(self._handle(item_id, msg))
                self._active.add(task)
                task.add_done_callback(self._active.discard)
        if self._active:
            await asyncio.wait(self._active)
        return self.handled

    async def _handle(self, item_id: str, msg: AgentMessage) -> None:
        self.last_active = time.monotonic()
        await Handling(msg, self).run()
        self.handled += 1
        self.last_active = time.monotonic()
        with contextlib.suppress(ActorUnavailable):  # a mailbox that restarted holds it no more
            await self.mailbox.ack([item_id])

    async def idle_s(self) -> float:
        return 0.0 if self._active else time.monotonic() - self.last_active

    async def stop(self) -> None:
        self._stopping = True


class ReplicaMember(Protocol):
    """What a pool needs of a replica: its loop, its idle time, ways to end it (asked, or killed)."""

    async def run(self, concurrency: int) -> int: ...
    async def idle_s(self) -> float: ...
    async def stop(self) -> None: ...
    async def kill(self) -> None: ...


class ReplicaHandle(ActorHandle):
    """One agent replica actor, typed. A replica is replaced, not restarted: its calls fail fast."""

    async def run(self, concurrency: int) -> int:
        return await self.via(AgentReplica.run, idempotent=False)(concurrency)

    async def idle_s(self) -> float:
        return await self.via(AgentReplica.idle_s, idempotent=False)()

    async def stop(self) -> None:
        self._send("stop")

    async def deliver(self, message_id: str, ok: bool, value: Any) -> bool:
        return await self.via(AgentReplica.deliver, idempotent=False)(message_id, ok, value)


class AgentPool:
    """Keeps a role's replicas alive and sized to its mailbox's backlog.

    Its replicas die with it; after a restart it frees what they held in the mailbox and grows again
    from the backlog, like at its first start."""

    def __init__(self, role: str, agent_cls: type[Agent], config: AgentPoolConfig,
                 settings: Settings, mailbox: MailboxService, store: Any, router: Router,
                 tools: ToolRouter | None = None,
                 spawner: Callable[[str], ReplicaMember] | None = None) -> None:
        self.role = role
        self.agent_cls = agent_cls
        self.config = config
        self.settings = settings
        self.mailbox = mailbox
        self.store = store
        self.router = router
        self.tools = tools
        self._spawner = spawner or self._spawn_actor
        self.members = Members(self._on_exit)
        self.started = 0
        self.replaced = 0  # replicas that died and were replaced
        self._loop: asyncio.Task[None] | None = None
        self._sizing = asyncio.Lock()
        if restarted():
            asyncio.get_running_loop().create_task(self.start())

    async def start(self) -> None:
        # Replicas of an earlier life of this pool are gone: what they held goes back to the mailbox.
        returned = await self.mailbox.requeue_all_but([])
        if returned:
            log.warning("agent %s: %d message(s) of replicas gone before this pool go back to the "
                        "mailbox", self.role, len(returned))
            self._tell_redelivered(returned, None, None, "the agent pool restarted")
        for _ in range(self.config.min_replicas):
            self._spawn()
        if self._loop is None:
            self._loop = asyncio.create_task(self._supervise())

    def _spawn(self) -> str:
        self.started += 1
        replica_id = names.agent_replica_id(self.role, self.started, uuid.uuid4().hex[:6])
        replica = self._spawner(replica_id)
        self.members.add(Member(replica_id, replica), replica.run(self.config.concurrency))
        return replica_id

    def _spawn_actor(self, replica_id: str) -> ReplicaHandle:
        name = names.agent_replica(replica_id)
        actor = (
            ray.remote(titled(AgentReplica, f"AgentReplica({self.role})"))
            .options(**member_actor_options(self.settings, name, self.config.num_cpus,
                                            self.config.resources, max_concurrency=1000))
            .remote(replica_id, self.role, self.agent_cls, self.settings, self.mailbox, self.store,
                    self.router, self.tools)
        )
        return ReplicaHandle(actor, name, self.settings.namespace)

    async def _on_exit(self, member: Member, error: BaseException | None) -> None:
        returned = await self.mailbox.requeue_consumer(member.id)
        replacement = None
        if error is not None and not member.stopping:
            # Died: replaced at once (a later tick retires the replacement if it is not needed).
            async with self._sizing:
                replacement = self._spawn()
            self.replaced += 1
            log.warning("agent %s: replica %s died (%s); %s replaces it, and its %d message(s) go "
                        "to the mailbox again", self.role, member.id, type(error).__name__,
                        replacement, len(returned))
        elif returned:
            log.warning("agent %s: %d message(s) of replica %s go back to the mailbox",
                        self.role, len(returned), member.id)
        if returned:
            self._tell_redelivered(returned, member.id, replacement,
                                   "its replica died" if replacement else "its replica ended")
        if member.stopping:
            await member.handle.kill()  # its loop has ended: free its process and resources

    def _tell_redelivered(self, returned: list[tuple[str, Any]], replica: str | None,
                          replacement: str | None, reason: str) -> None:
        """Each task whose message went back to the mailbox is told, in its events: the replica
        that was replaced (``replica.replaced``), then the message (``redelivered``)."""
        told: set[str] = set()
        for message_id, msg in returned:
            if not isinstance(msg, AgentMessage) or msg.event is not None:
                continue  # an event's delivery has no task to tell
            if replacement and msg.task_id not in told:
                told.add(msg.task_id)
                self.store.post_event(msg.task_id, "replica.replaced", {
                    "role": self.role, "old_replica": replica, "new_replica": replacement})
            self.store.post_event(msg.task_id, "redelivered", {
                "role": self.role, "step": msg.step_key, "message_id": message_id,
                "replica": replica, "reason": reason})

    def _desired(self, backlog: int) -> int:
        wanted = math.ceil(backlog / self.config.target_backlog)
        return max(self.config.min_replicas, min(self.config.max_replicas, wanted))

    async def _supervise(self) -> None:
        seen: tuple[int, int] | None = None
        while True:
            try:
                # Wakes as soon as the backlog moves (a burst grows the pool at once), and at least
                # every WATCH_S to shrink idle replicas; an idle pool costs one call a second.
                stats = await self.mailbox.watch(seen, WATCH_S)
                seen = (stats["depth"], stats["in_flight"])
                await self.tick(stats)
            except Exception:  # noqa: BLE001 - a failed tick is retried on the next one
                log.warning("agent pool %s: supervision tick failed", self.role, exc_info=True)
                await asyncio.sleep(WATCH_S)

    async def tick(self, stats: dict[str, Any] | None = None) -> None:
        """Size the pool to the mailbox's backlog: grow at once, shrink replicas idle long enough."""
        async with self._sizing:  # one tick at a time: two would both act on one backlog
            await self._size(stats or await self.mailbox.stats())

    async def _size(self, stats: dict[str, Any]) -> None:
        backlog = stats["depth"] + stats["in_flight"]
        live = [m for m in self.members.live.values() if not m.stopping]
        desired = max(self._desired(backlog), 1 if stats["depth"] else 0)
        for _ in range(desired - len(live)):
            self._spawn()
        if len(live) > desired and stats["depth"] == 0:
            idle = await probe(live, lambda m: m.handle.idle_s())
            await retire(live, idle, len(live) - desired,
                         lambda idle_s: idle_s >= self.config.idle_s)

    async def stats(self) -> dict[str, Any]:
        return {"role": self.role, "replicas": len(self.members), "started": self.started,
                "replaced": self.replaced,
                "replica_ids": sorted(self.members.live), **self.config.model_dump()}


class AgentPoolHandle(ActorHandle):
    """An agent pool actor, typed."""

    async def start(self) -> None:
        await self.via(AgentPool.start, idempotent=False)()

    async def stats(self, deadline_s: float | None = None) -> dict[str, Any]:
        return await self.via(AgentPool.stats, deadline_s=deadline_s)()


