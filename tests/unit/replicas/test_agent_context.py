"""``AgentContext`` over an in-memory ``AgentServices``, and a replica handling a message in-process
(its ``Handling``: the handler's services, the reply, the acknowledgement)."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from runtime.authoring.agent import Agent
from runtime.core.calls import ModelPlan
from runtime.core.config import Settings
from runtime.core.errors import AgentError, ConfigError
from runtime.core.models import (
    AgentMessage,
    ChatRequest,
    Completion,
    SubmitRequest,
    TopicEvent,
    Usage,
)
from runtime.flow.queue import QueueActor
from runtime.llm.engine import EngineActor, Router
from runtime.replicas.replica import AgentContext, AgentReplica
from runtime.store.actor import StoreActor


class FakeAgentServices:
    """AgentServices in memory: records what the context asks for."""

    def __init__(self) -> None:
        self.chats: list[ChatRequest] = []
        self.plans: list[ModelPlan] = []
        self.tools: list[tuple[str, dict[str, Any]]] = []
        self.delegations: list[tuple[str, str, Any, float | None]] = []
        self.published: list[tuple[str, Any, str | None, str]] = []
        self.events: list[tuple[str, dict[str, Any]]] = []

    async def chat(self, request: ChatRequest, plan: Any = None) -> Completion:
        self.chats.append(request)
        self.plans.append(plan)
        return Completion(model=request.model, text="ok",
                          usage=Usage(prompt_tokens=1, completion_tokens=1))

    async def call_tool(self, name: str, args: dict[str, Any], call_id: str | None = None) -> Any:
        self.tools.append((name, args))
        return {"tool": name}

    async def call_agent(self, role: str, step_key: str, payload: Any,
                         timeout_s: float | None) -> Any:
        self.delegations.append((role, step_key, payload, timeout_s))
        return f"{role} did it"

    async def publish(self, topic: str, data: Any, key: str | None, event_id: str) -> TopicEvent:
        self.published.append((topic, data, key, event_id))
        return TopicEvent(id=event_id, topic=topic, key=key, data=data, created_at=time.time())

    def emit(self, kind: str, data: dict[str, Any]) -> None:
        self.events.append((kind, data))


def message(**more: Any) -> AgentMessage:
    fields: dict[str, Any] = {"id": "m1", "role": "writer", "task_id": "t1",
                              "step_key": "agent:writer", "priority": 4, "tenant": "acme"}
    return AgentMessage(**{**fields, **more})


def test_an_agent_context_names_what_it_sends_after_its_message() -> None:
    services = FakeAgentServices()
    ctx = AgentContext(message(), services, "sim-small")

    async def handler() -> None:
        await ctx.chat("one")
        await ctx.chat([{"role": "user", "content": "two"}], model="other", max_tokens=9)
        await ctx.publish("docs.new", {"n": 1}, key="k")
        await ctx.publish("docs.new", {"n": 2}, id="mine")
        await ctx.publish("docs.new")
        assert await ctx.agent("reviewer").run({"draft": 1}) == "reviewer did it"
        await ctx.agent("reviewer").run(None, timeout_s=3.0)
        assert await ctx.tool("http_fetch", url="https://example.org/") == {"tool": "http_fetch"}
        ctx.emit(progress=0.5)

    asyncio.run(handler())
    assert [(r.request_id, r.model, r.max_tokens, r.priority, r.tenant) for r in services.chats] == [
        ("t1/agent:writer/1", "sim-small", 128, 4, "acme"),
        ("t1/agent:writer/2", "other", 9, 4, "acme")]
    # One conversation: the step's turns carry its key, for affinity routing.
    assert [r.session for r in services.chats] == ["t1/agent:writer", "t1/agent:writer"]
    assert [p[3] for p in services.published] == [
        "t1/agent:writer/publish/1", "mine", "t1/agent:writer/publish/3"]
    assert services.delegations == [
        ("reviewer", "agent:writer/agent:reviewer#1", {"draft": 1}, None),
        ("reviewer", "agent:writer/agent:reviewer#2", None, 3.0)]
    assert services.tools == [("http_fetch", {"url": "https://example.org/"})]
    assert services.events == [("agent", {"step": "agent:writer", "progress": 0.5})]


class Careful(Agent):
    role = "careful"
    instructions = "Answer."
    model = "m1"
    fallback_models = ["m2", "m3"]
    cache = True


def test_an_agents_calls_fall_back_and_use_the_memo_as_it_declares() -> None:
    services = FakeAgentServices()
    ctx = AgentContext(message(role="careful"), services, "sim-small", Careful())

    async def handler() -> None:
        await ctx.run_loop("hi")  # the loop's call: the agent's declarations
        await ctx.chat("own", fallback_models=["m9"], cache=False)  # the call's own
        await ctx.chat("sampled", temperature=0.7)  # the agent's memo skips a sampled call
        with pytest.raises(ConfigError):
            await ctx.chat("sampled", temperature=0.7, cache=True)
        await ctx.run_loop("again", fallback_models=(), cache=False)  # a loop's overrides

    asyncio.run(handler())
    assert [(p.fallback_models, p.cache) for p in services.plans] == [
        (("m2", "m3"), True), (("m9",), False), (("m2", "m3"), False), ((), False)]
    assert [r.model for r in services.chats] == ["m1", "sim-small", "sim-small", "m1"]


def test_without_declarations_the_deployment_decides_the_memo() -> None:
    services = FakeAgentServices()
    ctx = AgentContext(message(), services, "sim-small", llm_cache=True)

    async def handler() -> None:
        await ctx.chat("one")
        await ctx.chat("two", cache=False)

    asyncio.run(handler())
    assert [(p.fallback_models, p.cache) for p in services.plans] == [((), True), ((), False)]


def test_an_events_handler_publishes_under_the_event_and_logs_its_progress() -> None:
    event = TopicEvent(id="e7", topic="docs.new", tenant="acme", created_at=time.time())
    services = FakeAgentServices()
    ctx = AgentContext(message(task_id="", step_key="e7", event=event), services, "sim-small")

    async def handler() -> None:
        await ctx.publish("docs.indexed")
        ctx.emit(progress=1.0)

    asyncio.run(handler())
    assert [p[3] for p in services.published] == ["event/acme/e7/writer/publish/1"]
    assert services.events == []  # no task: the log only


class Writer(Agent):
    role = "writer"

    async def handle(self, msg: AgentMessage, ctx: AgentContext) -> str:
        if msg.payload == "fail":
            raise ValueError("no words")
        ctx.emit(progress=0.5)
        return (await ctx.chat(str(msg.payload), max_tokens=4)).text


class Caller:
    """Stands in for the workflow worker the replies go to."""

    def __init__(self) -> None:
        self.replies: dict[str, tuple[bool, Any]] = {}

    async def deliver(self, message_id: str, ok: bool, value: Any) -> bool:
        self.replies[message_id] = (ok, value)
        return True


def test_a_replica_handles_a_message_replies_and_acknowledges_it(tmp_path: Path) -> None:
    async def body() -> None:
        settings = Settings(data_dir=tmp_path / "state", default_model="sim-small")
        store = StoreActor(settings)
        (submitted,) = await store.submit_tasks(
            [(uuid.uuid4().hex, SubmitRequest(workflow="echo", input={}))])
        assert not isinstance(submitted, BaseException)
        task = submitted[0]
        mailbox = QueueActor("agent:writer", 100, 0.0)
        router = Router({"sim-small": [EngineActor(settings, "sim-small")]})
        replica = AgentReplica("writer-1", "writer", Writer, settings, mailbox, store, router)
        caller = Caller()
        sent = [message(id=f"m{i}", task_id=task.id, payload=p, reply_to=caller)
                for i, p in enumerate(["hello", "fail"])]
        await mailbox.put_batch([(m.id, 0, m) for m in sent])
        loop = asyncio.create_task(replica.run(2))
        deadline = time.monotonic() + 10
        while replica.handled < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        await replica.stop()
        await loop
        ok, text = caller.replies["m0"]
        assert ok and isinstance(text, str) and text
        failed, error = caller.replies["m1"]
        assert not failed and isinstance(error, AgentError) and "no words" in str(error)
        assert (await mailbox.stats())["in_flight"] == 0  # both acknowledged
        kinds = [e.kind for e in await store.wait_events(task.id, timeout_s=0.1)]
        assert "agent" in kinds and "tokens" in kinds

    asyncio.run(body())


class Looker(Agent):
    role = "looker"

    async def handle(self, msg: AgentMessage, ctx: AgentContext) -> Any:
        return await ctx.tool("http_fetch", url="https://example.org/")


class CapturingTools:
    """The tool executors as far as a replica calls them: who called, under which key."""

    def __init__(self) -> None:
        self.callers: list[Any] = []

    async def call(self, name: str, args: dict[str, Any], caller: Any) -> Any:
        self.callers.append(caller)
        return {"status": 200}


def test_an_agents_tool_call_names_its_own_key_to_the_executors(tmp_path: Path) -> None:
    """A dead letter of the call is filed under ``agent:<role>/tool:<name>``: replayed, its result is
    recorded as that call (which the handler replays), not as the whole agent step's answer."""
    async def body() -> None:
        settings = Settings(data_dir=tmp_path / "state", default_model="sim-small")
        tools = CapturingTools()
        replica = AgentReplica("looker-1", "looker", Looker, settings,
                               QueueActor("agent:looker", 10, 0.0), StoreActor(settings),
                               Router({}), tools)  # type: ignore[arg-type]
        mailbox = replica.mailbox
        await mailbox.put_batch([("m0", 0, message(id="m0", role="looker", task_id="t1",
                                                  step_key="agent:looker", reply_to=Caller()))])
        loop = asyncio.create_task(replica.run(1))
        deadline = time.monotonic() + 10
        while replica.handled < 1 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        await replica.stop()
        await loop
        (caller,) = tools.callers
        assert (caller.task_id, caller.step_key) == ("t1", "agent:looker/tool:http_fetch")

    asyncio.run(body())
