"""The agent loop (``runtime.replicas.loop``) in-process: an AgentContext whose model is the
simulated engine (its policy, or a script) and whose tools run here, recording what they do."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pydantic import BaseModel, Field

from runtime.authoring.agent import Agent
from runtime.core.config import SimulatedEngineConfig
from runtime.core.errors import AgentLoopFailed
from runtime.core.models import AgentMessage, ChatRequest, Completion, TopicEvent
from runtime.llm.simulated import SimulatedEngine
from runtime.replicas.replica import AgentContext
from runtime.tools import tool
from runtime.tools.registry import defined_tool
from tests.apps import scripts  # noqa: F401 - the scripts the engine loads by name

EFFECTS: list[tuple[str, dict[str, Any]]] = []


@tool
def find_order(order_id: str) -> dict[str, Any]:
    """Find an order."""
    return {"order_id": order_id, "status": "shipped"}


@tool
def refund(order_id: str, amount: float = Field(ge=0, le=500)) -> str:
    """Refund part of an order."""
    return f"refunded {amount}"


@tool
def look_up_fact(query: str) -> str:
    """Look something up."""
    return query


@tool
def notify(message: str) -> str:
    """Tell the customer."""
    return "sent"


class Resolution(BaseModel):
    status: str
    refunded: bool


class Services:
    """AgentServices with the simulated engine as the model and tools run in this process."""

    def __init__(self, script: str | None = None) -> None:
        self.engine = SimulatedEngine("m", SimulatedEngineConfig(ttft_s=0, tpot_s=0, script=script))
        self.chats: list[ChatRequest] = []
        self.events: list[dict[str, Any]] = []
        self.delegations: list[tuple[str, Any]] = []

    async def chat(self, request: ChatRequest, plan: Any = None) -> Completion:
        self.chats.append(request)
        return await self.engine.chat(request)

    async def call_tool(self, name: str, args: dict[str, Any], call_id: str | None = None) -> Any:
        EFFECTS.append((name, args))
        made = defined_tool(name)
        return made.fn(**made.validate(args).model_dump())

    async def call_agent(self, role: str, step_key: str, payload: Any,
                         timeout_s: float | None) -> Any:
        self.delegations.append((role, payload))
        return {"reviewed": payload}

    async def publish(self, topic: str, data: Any, key: str | None, event_id: str) -> TopicEvent:
        raise AssertionError("not published here")

    def emit(self, kind: str, data: dict[str, Any]) -> None:
        self.events.append(data)


class Support(Agent):
    role = "support"
    instructions = "Resolve the customer's problem with the tools."
    tools = ["find_order", refund, notify]
    output_type = Resolution


def run(agent: Agent, services: Services, payload: Any) -> Any:
    msg = AgentMessage(id="m", role=agent.role, task_id="t", step_key="agent:support",
                       payload=payload)
    ctx = AgentContext(msg, services, "m", agent)
    return asyncio.run(agent.handle(msg, ctx))


def test_a_declared_agent_calls_each_tool_then_answers_in_its_output_type() -> None:
    EFFECTS.clear()
    services = Services()
    answer = run(Support(), services, "order 17 arrived broken, please refund 20")
    assert Resolution.model_validate(answer)
    assert [name for name, _ in EFFECTS] == ["find_order", "refund", "notify"]
    assert 0 <= EFFECTS[1][1]["amount"] <= 500  # arguments made to fit the tool's schema
    first = services.chats[0]
    assert first.messages[0].content == Support.instructions
    assert [t.name for t in first.tools] == ["find_order", "refund", "notify"]
    assert len(services.chats) == 4  # three tool turns, then the answer
    assert [m.role for m in services.chats[-1].messages] == [
        "system", "user", "assistant", "tool", "assistant", "tool", "assistant", "tool"]
    assert services.events[-1] == {"step": "agent:support", "turn": 4, "answer": True,
                                   "tools_used": ["find_order", "refund", "notify"]}


def test_a_bad_call_goes_back_to_the_model_as_the_tools_error() -> None:
    class Looker(Agent):
        role = "looker"
        tools = ["look_up_fact"]

    services = Services("tests.apps.scripts:bad_then_good")
    assert run(Looker(), services, "find it") == 'answer: "right"'
    told = services.chats[1].messages[-1]
    assert told.role == "tool" and "'query' is a required property" in told.content
    assert any(e.get("ok") is False for e in services.events)


def test_the_loop_fails_after_too_many_bad_calls_or_turns() -> None:
    class Stubborn(Agent):
        role = "stubborn"
        tools = ["look_up_fact"]
        max_tool_errors = 2

    with pytest.raises(AgentLoopFailed, match="3 bad tool calls, the last no_such_tool"):
        run(Stubborn(), Services("tests.apps.scripts:always_bad"), "x")

    class Chatty(Agent):
        role = "chatty"
        tools = ["look_up_fact"]
        max_turns = 3

    with pytest.raises(AgentLoopFailed, match="no final answer in 3 turn"):
        run(Chatty(), Services("tests.apps.scripts:chatter"), "x")


def test_a_handoff_sends_the_request_to_that_role_whose_reply_is_the_answer() -> None:
    class Triage(Agent):
        role = "triage"
        instructions = "Hand anything hard to the reviewer."
        handoffs = ["reviewer"]

    services = Services("tests.apps.scripts:hand_to_reviewer")
    assert run(Triage(), services, "hard question") == {"reviewed": "check this"}
    assert services.delegations == [("reviewer", "check this")]
    assert [t.name for t in services.chats[0].tools] == ["transfer_to_reviewer"]
    assert {"step": "agent:support", "turn": 1, "handoff": "reviewer"} in services.events


def test_a_role_offered_as_a_tool_answers_the_call_and_the_loop_goes_on() -> None:
    class Writer(Agent):
        role = "writer"
        instructions = "Ask the reviewer before you answer."
        tools = ["look_up_fact", "agent:reviewer"]

    services = Services("tests.apps.scripts:ask_reviewer_then_answer")
    answer = run(Writer(), services, "draft")
    assert answer == 'the reviewer said {"reviewed": "is this right?"}'
    assert services.delegations == [("reviewer", "is this right?")]
    assert [t.name for t in services.chats[0].tools] == ["look_up_fact", "ask_reviewer"]
    assert len(services.chats) == 2  # the reply went back to the model, which then answered


def test_instructions_may_be_a_method_of_the_message_and_a_handler_may_call_the_loop() -> None:
    class Custom(Agent):
        role = "custom"

        def instructions(self, msg: AgentMessage) -> str:  # type: ignore[override]
            return f"Answer for {msg.payload['who']}."

        async def handle(self, msg: AgentMessage, ctx: AgentContext) -> Any:
            return {"said": await ctx.run_loop(msg.payload["q"], max_turns=2)}

    services = Services()
    assert run(Custom(), services, {"who": "Ada", "q": "hi"})["said"]
    assert services.chats[0].messages[0].content == "Answer for Ada."

    class Silent(Agent):
        role = "silent"

    with pytest.raises(NotImplementedError, match="declares no instructions"):
        run(Silent(), Services(), "x")
