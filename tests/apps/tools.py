"""Workflows and tools the tool and gate tests run, against HTTP servers the tests start on loopback."""

from __future__ import annotations

import asyncio

import httpx
from pydantic import BaseModel, Field

from runtime import Agent, Context, workflow
from runtime.core.errors import ToolFailed
from runtime.tools import Batch, tool


class FetchLoopIn(BaseModel):
    url: str
    n: int = 1
    headers: dict[str, str] | None = None


@workflow
async def fetch_loop(ctx: Context, inp: FetchLoopIn) -> list[int]:
    """``n`` sequential http_fetch calls of one URL; returns their statuses."""
    statuses = []
    for _ in range(inp.n):
        result = await ctx.tool("http_fetch", url=inp.url)
        statuses.append(result.status)
    return statuses


class FetchOut(BaseModel):
    ok: bool
    status: int | None = None
    error: str | None = None
    dead_letter: str | None = None


@workflow
async def fetch_once(ctx: Context, inp: FetchLoopIn) -> FetchOut:
    """One http_fetch; a call that fails for good is reported, not raised."""
    try:
        result = await ctx.tool("http_fetch", url=inp.url, headers=inp.headers)
    except Exception as e:  # noqa: BLE001 - the step's error carries the ToolFailed's text
        cause = e.__cause__
        letter = cause.dead_letter if isinstance(cause, ToolFailed) else None
        return FetchOut(ok=False, error=str(e), dead_letter=letter or None)
    return FetchOut(ok=True, status=result.status)


class LookupArgs(BaseModel):
    url: str
    key: str


@tool(batch=Batch(max_size=4, max_wait_s=0.5))
async def lookup(requests: list[LookupArgs]) -> list[str]:
    """Look up many keys in one upstream request (the test server answers value-<key> for each)."""
    async with httpx.AsyncClient(trust_env=False) as client:
        response = await client.post(requests[0].url, json=[r.key for r in requests])
        response.raise_for_status()
        values: list[str] = response.json()
    return values


class LookupIn(BaseModel):
    url: str
    keys: list[str]


@workflow
async def lookup_all(ctx: Context, inp: LookupIn) -> list[str]:
    """Look every key up at once: the batching tool folds the calls into few upstream requests."""
    return list(await asyncio.gather(*(ctx.tool("lookup", url=inp.url, key=k) for k in inp.keys)))



# -- a declared agent whose tool waits for a person (the status page's approval panel) ------------

@tool(requires_approval=True)
def refund(order_id: str, amount: float = Field(ge=0, le=1000)) -> str:
    """Refund an order (a person approves each call first)."""
    return f"refunded {amount:.2f} on {order_id}"


class Refunder(Agent):
    """Refunds the order it is asked about, once a person approves; then says it is done."""

    role = "refunder"
    min_replicas = 0  # started when a message arrives: an idle test runtime has no replica
    instructions = "Refund the order the customer names."
    tools = ["refund"]


class RefundIn(BaseModel):
    request: str


@workflow
async def refund_order(ctx: Context, inp: RefundIn) -> str:
    return str(await ctx.agent("refunder").run(inp.request))
