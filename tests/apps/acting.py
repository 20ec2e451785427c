"""A declared agent that acts: the model picks its tools (the simulated engine's policy calls each
offered tool once, then answers in the output type). Each tool appends a line to a file of its task
(``effects_dir``), so a test counts what ran."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from runtime import Agent, Context, workflow
from runtime.core.errors import ToolDenied
from runtime.tools import ToolContext, tool

REFUND_S = 2.0


def effects_dir(task_id: str) -> Path:
    return Path(tempfile.gettempdir()) / "raysquad-acting" / task_id


def _effect(ctx: ToolContext, what: str) -> None:
    path = effects_dir(ctx.task_id)
    path.mkdir(parents=True, exist_ok=True)
    with open(path / "effects", "a") as f:
        f.write(f"{what} {os.getpid()}\n")


@tool
def find_order(order_id: str, ctx: ToolContext) -> dict[str, Any]:
    """Find an order by its id."""
    _effect(ctx, "find_order")
    return {"order_id": order_id, "status": "delivered damaged"}


@tool
def refund(order_id: str, amount: float = Field(ge=0, le=500), *, ctx: ToolContext) -> str:
    """Refund part of an order (slowly: a test kills the agent's replica while it runs)."""
    _effect(ctx, "refund")
    time.sleep(REFUND_S)
    _effect(ctx, "refund_done")
    return f"refunded {amount:.2f} on {order_id}"


@tool
def notify(message: str, ctx: ToolContext) -> str:
    """Send the customer a message."""
    _effect(ctx, "notify")
    return "sent"


class Resolution(BaseModel):
    status: str
    refunded: bool


class Support(Agent):
    """Resolves a customer's problem with its tools, and answers with a Resolution."""

    role = "support"
    instructions = "Resolve the customer's problem. Use the tools, then answer."
    tools = ["find_order", "refund", "notify"]
    output_type = Resolution


class ProblemIn(BaseModel):
    problem: str


@workflow
async def resolve(ctx: Context, inp: ProblemIn) -> dict[str, Any]:
    """One call of the support agent, whose loop picks its tools."""
    return dict(await ctx.agent("support").run(inp.problem))


@tool
def look_up_fact(query: str) -> str:
    """Look something up."""
    return f"nothing on {query}"


class Runaway(Agent):
    """Keeps calling lookup (on a script that never answers): only a budget stops it."""

    role = "runaway"
    tools = ["look_up_fact"]
    max_turns = 1000
    max_tool_errors = 1000


class Triage(Agent):
    """Hands every problem to support (the simulated policy calls the first offered tool)."""

    role = "triage"
    instructions = "Hand the problem to support."
    handoffs = ["support"]


@workflow
async def run_away(ctx: Context, inp: ProblemIn) -> str:
    return str(await ctx.agent("runaway").run(inp.problem))


@workflow
async def triage(ctx: Context, inp: ProblemIn) -> dict[str, Any]:
    """A chat of the workflow's own, then triage, which hands the problem to support."""
    await ctx.llm.chat(f"Summarise: {inp.problem}", max_tokens=16)
    return dict(await ctx.agent("triage").run(inp.problem))


@tool(requires_approval=True)
def wire_money(order_id: str, amount: float = Field(ge=0, le=10_000), *, ctx: ToolContext) -> str:
    """Send money to the customer (a person approves each call first)."""
    _effect(ctx, "wire_money")
    return f"wired {amount:.2f} for {order_id}"


class Cautious(Agent):
    """Looks the order up, wires money (after a person approves), tells the customer."""

    role = "cautious"
    instructions = "Resolve the problem; wiring money needs a person's approval."
    tools = ["find_order", "wire_money", "notify"]


@workflow
async def cautious(ctx: Context, inp: ProblemIn) -> str:
    return str(await ctx.agent("cautious").run(inp.problem))


class PayIn(BaseModel):
    order_id: str
    amount: float


@workflow
async def pay_out(ctx: Context, inp: PayIn) -> str:
    """A workflow's own call of a tool that needs approval; a denial is caught and said."""
    try:
        return str(await ctx.tool("wire_money", order_id=inp.order_id, amount=inp.amount))
    except ToolDenied as e:
        return f"not paid: {e.reason}"


class Careful(Agent):
    """Looks the order up and tells the customer, but its own policy has a person approve each
    message to a customer first (``notify`` needs no approval elsewhere)."""

    role = "careful"
    instructions = "Look the order up, then tell the customer."
    tools = ["find_order", "notify"]
    approve = ["notify"]


@workflow
async def careful(ctx: Context, inp: ProblemIn) -> str:
    return str(await ctx.agent("careful").run(inp.problem))
