"""Model calls beyond one engine's answer: the LLM memo and fallback models.

Its engines: ``sim-small`` (the default), and the models its agents name, ``flaky`` and ``steady``.
Run with ``simulated.script`` ``tests.apps.scripts:flaky_models_fail`` a model named ``flaky...``
fails every request (add ``flaky-2`` to ``models`` for ``fragile``'s fallback).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from runtime import Agent, Context, workflow


class Summarizer(Agent):
    """A declared agent whose model calls the memo may answer."""

    role = "summarizer"
    instructions = "Summarize the text in one line."
    cache = True
    max_replicas = 1


class Steadfast(Agent):
    """A declared agent on a model that may fail, with one to fall back on."""

    role = "steadfast"
    instructions = "Answer briefly."
    model = "flaky"
    fallback_models = ["steady"]
    max_replicas = 1


class Stubborn(Agent):
    """A declared agent on a model that may fail, and no other."""

    role = "stubborn"
    instructions = "Answer briefly."
    model = "flaky"
    max_replicas = 1


class Topic(BaseModel):
    topic: str


@workflow
async def memo_run(ctx: Context, inp: Topic) -> dict[str, Any]:
    """A temperature-0 call of the workflow's own (memo asked for), then an agent whose calls the
    memo may answer."""
    answer = await ctx.llm.chat(f"Tell me about {inp.topic}.", cache=True, max_tokens=24)
    summary = await ctx.agent("summarizer").run(answer.text)
    return {"answer": answer.text, "cached": answer.cached, "summary": summary}


class Question(BaseModel):
    question: str


@workflow
async def ask_steadfast(ctx: Context, inp: Question) -> dict[str, Any]:
    """The agent on ``flaky``, which falls back on ``steady``."""
    return {"reply": await ctx.agent("steadfast").run(inp.question)}


@workflow
async def ask_stubborn(ctx: Context, inp: Question) -> dict[str, Any]:
    """The agent on ``flaky`` alone: its call runs out of models."""
    return {"reply": await ctx.agent("stubborn").run(inp.question)}


@workflow
async def fragile(ctx: Context, inp: Question) -> dict[str, Any]:
    """A workflow's own call on ``flaky``, falling back on ``flaky-2``: both fail, so the call is
    a dead letter, and the task resumes past it when the letter is replayed."""
    before = await ctx.step("before", lambda: "done")
    answer = await ctx.llm.chat(inp.question, model="flaky", fallback_models=["flaky-2"])
    return {"before": before, "answer": answer.text, "model": answer.model}
