"""A workflow that holds a worker slot: submit_latency.py's ``raysquad-held`` target runs one worker
with one slot and puts this task in it first, so that the tasks it then submits stay queued and what
is measured is the submit path alone, without their execution on the same cores."""

from __future__ import annotations

import asyncio

from pydantic import BaseModel

from runtime import Context, workflow


class HoldIn(BaseModel):
    seconds: float = 3600.0


@workflow
async def hold(ctx: Context, inp: HoldIn) -> None:
    """Sleep inside one step for ``inp.seconds``, holding the worker slot it runs in."""
    await ctx.step("hold", asyncio.sleep, inp.seconds)
