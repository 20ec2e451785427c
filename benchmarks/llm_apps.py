"""The workflow the LLM throughput benchmark runs: one agent call, the agent asks the LLM once."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from runtime import Agent, AgentContext, AgentMessage, Context, workflow


class BenchAsker(Agent):
    """Sends its question to the LLM and returns the text and the completion tokens counted by the engine."""

    role = "bench-asker"
    min_replicas = 1
    max_replicas = 1
    concurrency = 64  # above the benchmark's highest level: the agent never holds requests back

    async def handle(self, msg: AgentMessage, ctx: AgentContext) -> dict[str, Any]:
        completion = await ctx.chat([{"role": "user", "content": msg.payload["question"]}],
                                    max_tokens=msg.payload["max_tokens"])
        return {"text": completion.text, "tokens": completion.usage.completion_tokens,
                "finish": completion.finish_reason}


class AskIn(BaseModel):
    question: str
    max_tokens: int = 64


@workflow
async def bench_ask(ctx: Context, inp: AskIn) -> dict[str, Any]:
    """One agent call: the agent asks the LLM."""
    return dict(await ctx.agent("bench-asker").run(inp.model_dump()))
