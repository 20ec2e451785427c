"""Pydantic AI agents run in raysquad workflows (``runtime.authoring.pydantic_ai``). Their model
calls and tool calls leave lines in ``<dir>/effects`` ("what pid") for the tests to count."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic_ai import Agent, RunContext
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart, ToolReturnPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from runtime import Context, workflow
from runtime.authoring.pydantic_ai import RaysquadDurability, RaysquadModel, raysquad_tools, run_agent
from runtime.tools import tool


def effect(directory: str, what: str) -> None:
    with open(Path(directory) / "effects", "a") as f:
        f.write(f"{what} {os.getpid()}\n")


def _dir_of(messages: list[ModelMessage]) -> str:
    said = " ".join(str(getattr(p, "content", "")) for m in messages for p in m.parts)
    found = re.search(r"dir=(\S+)", said)
    assert found, said
    return found.group(1)


def script(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    """Asks for ``add`` once, then (once the test opens ``<dir>/gate``) answers with its result."""
    directory = _dir_of(messages)
    returns = [p for m in messages for p in m.parts if isinstance(p, ToolReturnPart)]
    effect(directory, f"model:{len(returns) + 1}")
    if not returns:
        return ModelResponse(parts=[ToolCallPart("add", {"a": 2, "b": 3}, tool_call_id="c1")])
    deadline = time.monotonic() + 120
    while not (Path(directory) / "gate").exists() and time.monotonic() < deadline:
        time.sleep(0.05)  # stands in for a slow model: the test kills the worker meanwhile
    return ModelResponse(parts=[TextPart(f"the sum is {returns[0].content}")])


calculator = Agent(FunctionModel(script), name="calculator", capabilities=[RaysquadDurability()])


@calculator.tool
def add(ctx: RunContext[None], a: int, b: int) -> int:
    """Add two numbers."""
    effect(_dir_of(ctx.messages), "add")
    return a + b


class Question(BaseModel):
    dir: str
    text: str = "Add 2 and 3."


@workflow
async def calculate(ctx: Context, inp: Question) -> dict[str, Any]:
    result = await run_agent(ctx, calculator, f"{inp.text} dir={inp.dir}")
    return {"output": result.output, "requests": result.usage().requests}


@tool
def count_letters(text: str) -> int:
    """Count the letters of a text."""
    return sum(c.isalpha() for c in text)


# On raysquad's engine (the task's model: simulated in the tests) with raysquad's tools.
counter = Agent(RaysquadModel(), name="counter", capabilities=[RaysquadDurability()],
                toolsets=[raysquad_tools(["count_letters"])],
                instructions="Count the letters of the text with the tool, then say the count.")


@workflow
async def count(ctx: Context, inp: Question) -> str:
    return str((await run_agent(ctx, counter, inp.text)).output)
