"""Pydantic AI agents made durable by raysquad, through Pydantic AI's durable-execution interface
(``pydantic_ai.durable_exec``: a capability whose operation backend runs each operation once as a
recorded step). The optional extra ``raysquad[pydantic-ai]`` brings Pydantic AI.

    from pydantic_ai import Agent
    from runtime.authoring.pydantic_ai import RaysquadDurability, RaysquadModel, run_agent

    agent = Agent(RaysquadModel(), name="support", capabilities=[RaysquadDurability()])

    @workflow
    async def support(ctx: Context, inp: Question) -> str:
        return (await run_agent(ctx, agent, inp.text)).output

- **Every call recorded.** Inside ``run_agent`` each model request, each tool call and each MCP call
  of the agent is a step of the task, keyed by the agent's run step and the model's tool call id
  (``pai:support__model.request@2``, ``pai:support__function_toolset__<support>.call_tool:add@2/c1``):
  a task resumed after its worker died replays them and makes only the rest. The run's id is a
  step too, so it is the same on every replay. Outside ``run_agent`` the same agent runs as
  Pydantic AI runs it, with no raysquad at all.
- **raysquad's engines.** ``RaysquadModel(model=None)`` is a Pydantic AI model served by raysquad's
  engines (the task's model by default): its requests go through the engine router with the task's
  priority and tenant, past the gates, and count against the task's token budget, like every
  ``ctx.llm.chat``. Any other Pydantic AI model (``FunctionModel``, an OpenAI model) works too.
- **raysquad's tools.** ``raysquad_tools(["search_corpus", "files.read_file"])`` is a toolset of tools
  the runtime defines (MCP servers' included): the agent's calls of them run on the tool executors,
  with their gates, retries and dead letters.

A step here is made once: its callee's own retries (Pydantic AI's, the OpenAI client's) are the
retries, and a failure fails the step (the task's retry runs it again from its last record).
"""

from __future__ import annotations

import contextvars
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from pydantic_ai import RunContext
from pydantic_ai.durable_exec import (
    JSON_CODEC,
    BaseDurabilityCapability,
    DurabilityEngineSpec,
    JournalCallableOperationBackend,
    RoleBasedOperationConfig,
)
from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    RetryPromptPart,
    SystemPromptPart,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
    UserPromptPart,
)
from pydantic_ai.models import Model, ModelRequestParameters
from pydantic_ai.settings import ModelSettings
from pydantic_ai.tools import Tool, ToolDefinition
from pydantic_ai.toolsets import FunctionToolset
from pydantic_ai.usage import RequestUsage

from runtime.authoring.workflow import ONE_ATTEMPT, Context, Parked
from runtime.core.errors import TaskCancelled
from runtime.core.models import ChatMessage, ChatRequest, ToolCall, ToolSpec
from runtime.core.structured import wire_name
from runtime.tools.registry import defined_tool

#: The workflow context of the agent run in progress (set by ``run_agent``).
CURRENT: contextvars.ContextVar[Context | None] = contextvars.ContextVar("raysquad_pydantic_ai",
                                                                        default=None)


def _current() -> Context:
    ctx = CURRENT.get()
    if ctx is None:
        raise RuntimeError("a raysquad model or toolset runs inside run_agent(ctx, agent, ...) "
                           "in a raysquad workflow")
    return ctx


class _Steps(JournalCallableOperationBackend[None]):
    """Each operation of the agent is one step of the task, run once."""

    async def execute(self, *, operation_id: Any, name: str, body: Callable[[], Awaitable[object]],
                      cache_key: tuple[object, ...], config: None) -> object:
        run = next((part for part in cache_key if isinstance(part, RunContext)), None)
        if run is not None:  # keys that do not depend on the order parallel calls end in
            name += f"@{run.run_step}" + (f"/{run.tool_call_id}" if run.tool_call_id else "")
        return await _current().step(f"pai:{name}", body, retry=ONE_ATTEMPT)


class RaysquadDurability(BaseDurabilityCapability[Any]):
    """Pydantic AI's durability capability on raysquad: attach it to the agent
    (``Agent(..., name=..., capabilities=[RaysquadDurability()])``) and run it with ``run_agent``."""

    engine_spec = DurabilityEngineSpec(
        engine_name="raysquad", durable_unit_noun="step", durable_container_noun="workflow",
        codec=JSON_CODEC, cancellation_error_types=(TaskCancelled,),
        control_flow_error_types=(Parked,), sequential_tools_in_durable_context=False)

    @property
    def in_durable_context(self) -> bool:
        return CURRENT.get() is not None

    def get_durable_operation_backend(self) -> _Steps:
        return _Steps(agent_name=self.name or "agent",
                      config=RoleBasedOperationConfig(model=None, event=None, capability=None,
                                                      tool=None))


async def run_agent(ctx: Context, agent: Any, prompt: Any = None, **options: Any) -> Any:
    """Run a Pydantic AI agent in a workflow, each of its calls a recorded step (the agent needs
    ``RaysquadDurability`` among its capabilities and a ``name``). Returns its run's result."""
    run_id = await ctx.step("pai:run_id", lambda: uuid.uuid4().hex)
    token = CURRENT.set(ctx)
    try:
        return await agent.run(prompt, run_id=run_id, **options)
    finally:
        CURRENT.reset(token)


# -- raysquad's engines as a Pydantic AI model ------------------------------------------------------

def chat_messages(messages: list[ModelMessage]) -> list[ChatMessage]:
    """Pydantic AI's conversation as raysquad's (the last request's instructions first)."""
    out: list[ChatMessage] = []
    instructions = next((m.instructions for m in reversed(messages)
                         if isinstance(m, ModelRequest) and m.instructions), None)
    if instructions:
        out.append(ChatMessage(role="system", content=instructions))
    for message in messages:
        if isinstance(message, ModelResponse):
            text = "".join(p.content for p in message.parts if isinstance(p, TextPart))
            calls = tuple(ToolCall(id=p.tool_call_id, name=wire_name(p.tool_name),
                                   arguments=p.args_as_dict())
                          for p in message.parts if isinstance(p, ToolCallPart))
            out.append(ChatMessage(role="assistant", content=text, tool_calls=calls))
            continue
        for part in message.parts:
            if isinstance(part, SystemPromptPart):
                out.append(ChatMessage(role="system", content=part.content))
            elif isinstance(part, UserPromptPart):
                content = part.content if isinstance(part.content, str) else " ".join(
                    str(c) for c in part.content if isinstance(c, str))
                out.append(ChatMessage(role="user", content=content))
            elif isinstance(part, ToolReturnPart):
                out.append(ChatMessage(role="tool", tool_call_id=part.tool_call_id,
                                       name=wire_name(part.tool_name),
                                       content=part.model_response_str()))
            elif isinstance(part, RetryPromptPart):
                said = part.model_response()
                out.append(ChatMessage(role="tool", tool_call_id=part.tool_call_id,
                                       name=wire_name(part.tool_name), content=said)
                           if part.tool_name else ChatMessage(role="user", content=said))
    return out


def tool_specs(params: ModelRequestParameters) -> tuple[ToolSpec, ...]:
    tools: list[ToolDefinition] = [*params.function_tools, *params.output_tools]
    return tuple(ToolSpec(name=wire_name(t.name), description=t.description or "",
                          parameters=t.parameters_json_schema) for t in tools)


class RaysquadModel(Model):
    """A Pydantic AI model served by raysquad's engines (``model``, else the task's default)."""

    def __init__(self, model: str | None = None, *, max_tokens: int = 256) -> None:
        super().__init__()
        self._model = model
        self._max_tokens = max_tokens

    @property
    def model_name(self) -> str:
        return self._model or "raysquad"

    @property
    def system(self) -> str:
        return "raysquad"

    async def request(self, messages: list[ModelMessage], model_settings: ModelSettings | None,
                      model_request_parameters: ModelRequestParameters) -> ModelResponse:
        ctx = _current()
        settings = model_settings or {}
        tools = tool_specs(model_request_parameters)
        request = ChatRequest(
            model=self._model or ctx.llm.default_model, messages=chat_messages(messages),
            max_tokens=int(settings.get("max_tokens") or self._max_tokens),
            temperature=float(settings.get("temperature") or 0.0), tools=tools,
            tool_choice="auto" if model_request_parameters.allow_text_output or not tools
            else "required")
        completion = await ctx.llm.complete(request)
        names = {wire_name(t.name): t.name for t in [*model_request_parameters.function_tools,
                                                     *model_request_parameters.output_tools]}
        parts: list[Any] = [TextPart(completion.text)] if completion.text else []
        parts += [ToolCallPart(names.get(c.name, c.name), c.arguments, tool_call_id=c.id)
                  for c in completion.tool_calls]
        return ModelResponse(parts=parts, model_name=completion.model,
                             usage=RequestUsage(input_tokens=completion.usage.prompt_tokens,
                                                output_tokens=completion.usage.completion_tokens))


# -- raysquad's tools as a Pydantic AI toolset -------------------------------------------------------

def raysquad_tools(names: Sequence[str], toolset_id: str = "raysquad") -> FunctionToolset[Any]:
    """The runtime's tools ``names`` (MCP servers' included) as a Pydantic AI toolset: give it to
    ``Agent(toolsets=[...])``. A call runs on the tool executors (its arguments checked against the
    tool's schema there); under ``RaysquadDurability`` it is a recorded step like the agent's own
    tools' calls."""
    tools = []
    for name in names:
        made = defined_tool(name)

        async def call(_name: str = made.name, **arguments: Any) -> Any:
            return await _current().tool_unrecorded(_name, arguments)

        tools.append(Tool.from_schema(call, wire_name(made.name), made.description,
                                      made.parameters()))
    return FunctionToolset(tools, id=toolset_id)
