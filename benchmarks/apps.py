"""The workflows the benchmarks run: trivial steps, so that what is measured is the runtime's own cost."""

from __future__ import annotations

from pydantic import BaseModel

from runtime import Context, workflow


class StepsIn(BaseModel):
    k: int = 5


async def nothing() -> int:
    """A step that does no work: its cost is all checkpointing and scheduling."""
    return 1


@workflow
async def trivial_steps(ctx: Context, inp: StepsIn) -> int:
    """Run ``inp.k`` trivial steps, each checkpointed; return how many ran."""
    for i in range(inp.k):
        await ctx.step(f"s{i}", nothing)
    return inp.k


class CallsIn(BaseModel):
    k: int = 5


@workflow
async def llm_calls(ctx: Context, inp: CallsIn) -> int:
    """``inp.k`` LLM calls one after another, each checkpointed; they pass the model's gate."""
    for i in range(inp.k):
        await ctx.llm.chat(f"call {i} of task {ctx.task_id}", max_tokens=8)
    return inp.k
