"""Workflows and an agent that call the LLM, for the engine tests."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from runtime import Agent, AgentContext, AgentMessage, Context, workflow
from runtime.tools import tool


class Asker(Agent):
    """Answers a question with the LLM."""

    role = "asker"
    min_replicas = 1
    max_replicas = 1
    concurrency = 32

    async def handle(self, msg: AgentMessage, ctx: AgentContext) -> dict[str, Any]:
        completion = await ctx.chat([{"role": "user", "content": msg.payload["question"]}],
                                    max_tokens=msg.payload.get("max_tokens", 32))
        return {"text": completion.text, "tokens": completion.usage.completion_tokens}


class Converser(Agent):
    """Holds a conversation: ``turns`` chats, the history growing each turn."""

    role = "converser"
    min_replicas = 1
    max_replicas = 1

    async def handle(self, msg: AgentMessage, ctx: AgentContext) -> dict[str, Any]:
        messages = [{"role": "system", "content": msg.payload["system"]},
                    {"role": "user", "content": msg.payload["question"]}]
        prompts = []
        for turn in range(msg.payload["turns"]):
            completion = await ctx.chat(messages, max_tokens=8)
            prompts.append(completion.usage.prompt_tokens)
            messages += [{"role": "assistant", "content": completion.text},
                         {"role": "user", "content": f"Go on ({turn + 1})."}]
        return {"prompt_tokens": prompts}


class ConverseIn(BaseModel):
    system: str
    question: str
    turns: int = 3


@workflow
async def converse(ctx: Context, inp: ConverseIn) -> dict[str, Any]:
    """One agent step holding a conversation of several turns."""
    return dict(await ctx.agent("converser").run(inp.model_dump()))


class AskIn(BaseModel):
    question: str
    max_tokens: int = 32


@workflow
async def ask(ctx: Context, inp: AskIn) -> dict[str, Any]:
    """One agent call: the agent asks the LLM."""
    return dict(await ctx.agent("asker").run(inp.model_dump()))


@workflow
async def generate(ctx: Context, inp: AskIn) -> dict[str, Any]:
    """One checkpointed LLM call from the workflow itself."""
    completion = await ctx.llm.chat(inp.question, max_tokens=inp.max_tokens)
    return {"text": completion.text, "tokens": completion.usage.completion_tokens,
            "finish": completion.finish_reason}


class Ticket(BaseModel):
    """A support ticket as the model must classify it (a response_format)."""

    category: Literal["billing", "shipping", "other"]
    urgency: int = Field(ge=1, le=5)
    summary: str = Field(max_length=80)


@tool
def order_status(order_id: str, include_items: bool = False) -> dict[str, Any]:
    """Look up the status of an order by its id."""
    return {"order_id": order_id, "status": "shipped"}


class ConstrainedIn(BaseModel):
    question: str
    mode: Literal["tool", "format"]
    max_tokens: int = 160


@workflow
async def constrained(ctx: Context, inp: ConstrainedIn) -> dict[str, Any]:
    """One chat held to a tool call (tool_choice="required") or to the Ticket schema."""
    if inp.mode == "tool":
        completion = await ctx.llm.chat(inp.question, tools=["order_status"],
                                        tool_choice="required", max_tokens=inp.max_tokens)
    else:
        completion = await ctx.llm.chat(inp.question, response_format=Ticket,
                                        max_tokens=inp.max_tokens)
    return {"tool_calls": [c.model_dump() for c in completion.tool_calls],
            "parsed": completion.parsed, "text": completion.text,
            "finish": completion.finish_reason, "tokens": completion.usage.completion_tokens}
