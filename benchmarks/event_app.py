"""What benchmarks/event_latency.py runs: a workflow and two agent roles started by events, each
noting when its first step (or handler) began, as seconds since the epoch, in a file per event."""

from __future__ import annotations

import time
from pathlib import Path

from pydantic import BaseModel

from runtime import Agent, AgentContext, AgentMessage, Context, on_event, workflow


class Ping(BaseModel):
    dir: str
    n: str


def note_start(directory: str, name: str) -> float:
    now = time.time()
    Path(directory, name).write_text(repr(now))
    return now


@workflow(triggers=[on_event("bench.task")])
async def on_ping(ctx: Context, inp: Ping) -> float:
    return await ctx.step("first", note_start, inp.dir, f"task-{inp.n}")


class WarmListener(Agent):
    role = "warm_listener"
    subscribes = ["bench.warm"]
    min_replicas = 1

    async def handle(self, msg: AgentMessage, ctx: AgentContext) -> None:
        await _note(msg, "warm")


class ColdListener(Agent):
    role = "cold_listener"
    subscribes = ["bench.cold"]
    min_replicas = 0  # scaled to zero between samples

    async def handle(self, msg: AgentMessage, ctx: AgentContext) -> None:
        await _note(msg, "cold")


async def _note(msg: AgentMessage, prefix: str) -> None:
    assert msg.event is not None
    note_start(msg.event.data["dir"], f"{prefix}-{msg.event.data['n']}")

