"""The agent loop: model call, the turn's tool calls, model call, until a final answer.

``run_loop`` drives it over an ``AgentContext``: each model call goes through ``ctx.chat`` (the
engines, with tools offered and the answer held to the output type where the engine can), each tool
call through ``ctx.tool`` (the tool executors, with their gates, retries and dead letters); the
calls of one turn run concurrently; the last of ``max_turns`` offers no tool, so a model that would
call tools for ever answers then. A call the model makes with a tool it was not offered, with
arguments that do not fit, or that fails goes back to the model as the tool's result (``{"error":
...}``), up to ``max_tool_errors``; a final answer that does not fit ``output_type`` goes back the
same way. A handoff (``transfer_to_<role>``) sends the conversation's last request to that role's
mailbox and its reply is the answer; a role offered as a tool (``"agent:<role>"`` in ``tools``,
``ask_<role>`` to the model) gets the call's request the same way, and its reply is the call's
result. Each turn (with the calls the model made), failed call and handoff is an ``agent`` event of
the task; each call made shows as its step's record (``Handling._once``).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from runtime.core.errors import (
    AgentLoopFailed,
    ApprovalNeeded,
    LeaseLost,
    RaysquadError,
    TaskCancelled,
)
from runtime.core.models import ChatMessage, ChatRequest, Completion, ToolCall, ToolSpec
from runtime.core.structured import call_problems, schema_problems, tool_specs
from runtime.tools.registry import defined_tool

if TYPE_CHECKING:
    from runtime.replicas.replica import AgentContext

HANDOFF_PREFIX = "transfer_to_"
#: ``"agent:<role>"`` in an agent's ``tools`` offers that role as a tool, ``ask_<role>``: its reply
#: is the call's result and the loop goes on (a handoff's reply would end it).
AGENT_TOOL = "agent:"
ASK_PREFIX = "ask_"


@dataclass(frozen=True)
class LoopSpec:
    """What a loop runs with: an agent's declarations, or a custom handler's."""

    role: str
    instructions: str | None = None
    tools: tuple[Any, ...] = ()
    output_type: type[BaseModel] | None = None
    handoffs: tuple[str, ...] = ()
    max_turns: int = 10
    max_tool_errors: int = 3
    model: str | None = None
    max_tokens: int = 256
    fallback_models: tuple[str, ...] | None = None  #: None: the agent's
    cache: bool | None = None  #: None: the agent's, else the deployment's


@dataclass
class LoopState:
    """The conversation so far and what it cost."""

    messages: list[ChatMessage] = field(default_factory=list)
    turns: int = 0
    tool_errors: int = 0
    tools_used: list[str] = field(default_factory=list)
    #: Each call that succeeded: (tool, its result), in the order they ended. A handler reads what
    #: its loop found here (``AgentContext.loop``).
    results: list[tuple[str, Any]] = field(default_factory=list)


def handoff_spec(role: str) -> ToolSpec:
    return ToolSpec(name=f"{HANDOFF_PREFIX}{role}"[:64],
                    description=f"Hand the conversation to the {role} agent, whose answer is final.",
                    parameters={"type": "object", "properties": {"request": {"type": "string"}},
                                "required": ["request"]})


def ask_spec(role: str) -> ToolSpec:
    return ToolSpec(name=f"{ASK_PREFIX}{role}"[:64],
                    description=f"Ask the {role} agent; its answer is this call's result.",
                    parameters={"type": "object", "properties": {"request": {"type": "string"}},
                                "required": ["request"]})


def offered(spec: LoopSpec) -> tuple[tuple[ToolSpec, ...], dict[str, str]]:
    """The tools the model is offered (the declared tools, the roles offered as tools, a handoff
    tool per role it may hand off to), and the roles by the name of their ``ask_`` tool."""
    roles = [t.removeprefix(AGENT_TOOL) for t in spec.tools
             if isinstance(t, str) and t.startswith(AGENT_TOOL)]
    plain = [t for t in spec.tools if not (isinstance(t, str) and t.startswith(AGENT_TOOL))]
    asks = {ask_spec(r).name: r for r in roles}
    return (*tool_specs(plain, defined_tool), *(ask_spec(r) for r in roles),
            *(handoff_spec(r) for r in spec.handoffs)), asks


def opening(spec: LoopSpec, input: Any) -> list[ChatMessage]:  # noqa: A002 - the loop's input
    text = input if isinstance(input, str) else json.dumps(input, default=str)
    system = [ChatMessage(role="system", content=spec.instructions)] if spec.instructions else []
    return [*system, ChatMessage(role="user", content=text)]


async def run_loop(ctx: AgentContext, spec: LoopSpec, input: Any,  # noqa: A002
                   state: LoopState | None = None) -> Any:
    """Run the loop to a final answer: the ``output_type``'s value as a dict, else the text.
    ``state``, if given, is filled in as the loop goes (the conversation, the calls' results)."""
    state = state if state is not None else LoopState()
    state.messages = opening(spec, input)
    tools, asks = offered(spec)
    request = ChatRequest(model="-", messages=[], tools=tools)  # what calls are checked against
    while state.turns < spec.max_turns:
        state.turns += 1
        # The last turn offers no tool: the model answers (an engine that constrains it must).
        last = state.turns == spec.max_turns
        completion = await ctx.chat(state.messages, model=spec.model, max_tokens=spec.max_tokens,
                                    tools=tools, tool_choice="none" if last and tools else "auto",
                                    response_format=spec.output_type, cache=spec.cache,
                                    fallback_models=spec.fallback_models)
        if completion.tool_calls:
            state.messages.append(ChatMessage(role="assistant", content=completion.text,
                                              tool_calls=completion.tool_calls))
            ctx.emit(turn=state.turns, tool_calls=[c.name for c in completion.tool_calls])
            handoff = next((c for c in completion.tool_calls
                            if c.name.startswith(HANDOFF_PREFIX)), None)
            if handoff is not None:
                return await _hand_off(ctx, spec, state, handoff)
            results = await asyncio.gather(*(_call(ctx, spec, state, request, asks, c)
                                             for c in completion.tool_calls))
            state.messages += [ChatMessage(role="tool", tool_call_id=c.id, name=c.name,
                                           content=json.dumps(r, default=str))
                               for c, r in zip(completion.tool_calls, results, strict=True)]
            continue
        answer = _final(spec, state, completion)
        if answer is not None:
            ctx.emit(turn=state.turns, answer=True, tools_used=state.tools_used)
            return answer[0]
    raise AgentLoopFailed(spec.role, f"no final answer in {spec.max_turns} turn(s)")


async def _call(ctx: AgentContext, spec: LoopSpec, state: LoopState, request: ChatRequest,
                asks: dict[str, str], call: ToolCall) -> Any:
    """One tool call of the model (a role offered as a tool: a message to its mailbox); its result,
    or the problem that goes back to the model."""
    problems = call_problems(request, call)
    if not problems:
        try:
            role = asks.get(call.name)
            result = await (ctx.agent(role).run(call.arguments["request"]) if role is not None
                            else ctx.tool_call(call))
            state.tools_used.append(call.name)
            state.results.append((call.name, result))
            return result
        except (TaskCancelled, LeaseLost, ApprovalNeeded):
            raise  # the task's end, its run's, or a wait for a person: not the tool's failure
        except RaysquadError as e:
            problems = [f"{type(e).__name__}: {e}"]
    state.tool_errors += 1
    ctx.emit(turn=state.turns, tool=call.name, call_id=call.id, ok=False, error=problems[0])
    if state.tool_errors > spec.max_tool_errors:
        raise AgentLoopFailed(spec.role, f"{state.tool_errors} bad tool calls, the last "
                                         f"{call.name}: {'; '.join(problems)}")
    return {"error": "; ".join(problems)}


async def _hand_off(ctx: AgentContext, spec: LoopSpec, state: LoopState, call: ToolCall) -> Any:
    role = call.name.removeprefix(HANDOFF_PREFIX)
    if role not in spec.handoffs:
        raise AgentLoopFailed(spec.role, f"handed off to {role!r}, not one of {list(spec.handoffs)}")
    request = call.arguments.get("request") or next(
        (m.content for m in reversed(state.messages) if m.role == "user"), "")
    ctx.emit(turn=state.turns, handoff=role)
    return await ctx.agent(role).run(request)


def _final(spec: LoopSpec, state: LoopState, completion: Completion) -> tuple[Any] | None:
    """The final answer (in a 1-tuple), or None after telling the model why it does not fit."""
    if spec.output_type is None:
        return (completion.text,)
    value = completion.parsed
    if value is None:
        try:
            value = json.loads(completion.text)
        except json.JSONDecodeError:
            value = completion.text
    problems = schema_problems(spec.output_type.model_json_schema(), value)
    if not problems:
        return (spec.output_type.model_validate(value).model_dump(mode="json"),)
    state.tool_errors += 1
    if state.tool_errors > spec.max_tool_errors:
        raise AgentLoopFailed(spec.role, f"its answer does not fit {spec.output_type.__name__}: "
                                         + "; ".join(problems[:3]))
    state.messages += [ChatMessage(role="assistant", content=completion.text),
                       ChatMessage(role="user", content="That answer does not fit the schema: "
                                   + "; ".join(problems[:3]) + ". Answer again.")]
    return None
