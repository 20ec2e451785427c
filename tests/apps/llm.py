"""Workflows and an agent that call the LLM, for the engine tests."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from runtime import Agent, AgentContext, AgentMessage, Context, workflow


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
