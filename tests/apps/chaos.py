"""The workflow the fault tests and the chaos soak run: one step of every kind the runtime checkpoints.

``chaos_steps`` makes a plain step, an agent call, a tool call, an LLM call and a last plain step.
Each step that runs code of ours appends a line ``<task_id> <step key> <time> <pid>`` to a log in
``inp.dir``, so a test can count how often each step ran, and when:

- ``steps.log``: the workflow's own ``ctx.step`` functions. A step recorded as completed must never
  run again, so no line of it may be written after the Store recorded it.
- ``agent.log``, ``tool.log``: the agent handler and the tool. These are at least once by design (a
  replica or executor killed mid-call runs the call again), so they are counted, not held to once.

The LLM call runs on the engine (simulated), which writes nothing here.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from pydantic import BaseModel

from runtime import Agent, AgentContext, AgentMessage, Context, workflow
from runtime.tools import tool

STEPS_LOG = "steps.log"
AGENT_LOG = "agent.log"
TOOL_LOG = "tool.log"
ROLE = "chaos_agent"
TOOL = "chaos_note"
#: The keys of chaos_steps' steps, in order (what the Store records them under).
STEP_KEYS = ("prepare", f"agent:{ROLE}", f"tool:{TOOL}", "llm:sim-small", "finish")
#: The keys whose lines go to steps.log (plain ctx.step: held to exactly once once recorded).
PLAIN_KEYS = ("prepare", "finish")


def append_line(directory: str, log: str, task_id: str, key: str) -> None:
    """One line, one write, O_APPEND: lines from several processes never interleave."""
    line = f"{task_id} {key} {time.time():.6f} {os.getpid()}\n".encode()
    fd = os.open(Path(directory) / log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


class ChaosIn(BaseModel):
    dir: str
    sleep_s: float = 0.05


class ChaosOut(BaseModel):
    prepared: str
    agent: str
    tool: str
    llm_words: int
    finished: str


class ChaosAgent(Agent):
    """Notes the message in agent.log, then takes a little while, as real work would."""

    role = ROLE
    min_replicas = 1
    max_replicas = 1  # one replica: a killed one is always replaced (a test waits for that)
    concurrency = 32

    async def handle(self, msg: AgentMessage, ctx: AgentContext) -> str:
        append_line(msg.payload["dir"], AGENT_LOG, msg.task_id, msg.step_key)
        await asyncio.sleep(msg.payload["sleep_s"])
        return f"handled {msg.task_id}"


@tool
async def chaos_note(dir: str, task_id: str, sleep_s: float = 0.0) -> str:
    """Note the call in tool.log, take a little while, and say so."""
    append_line(dir, TOOL_LOG, task_id, f"tool:{TOOL}")
    await asyncio.sleep(sleep_s)
    return f"noted {task_id}"


async def _plain(directory: str, task_id: str, key: str, sleep_s: float) -> str:
    append_line(directory, STEPS_LOG, task_id, key)
    await asyncio.sleep(sleep_s)
    return f"{key} {task_id}"


@workflow
async def chaos_steps(ctx: Context, inp: ChaosIn) -> ChaosOut:
    """A plain step, an agent call, a tool call, an LLM call and a last plain step."""
    prepared = await ctx.step("prepare", _plain, inp.dir, ctx.task_id, "prepare", inp.sleep_s)
    reply = await ctx.agent(ROLE).run({"dir": inp.dir, "sleep_s": inp.sleep_s})
    noted = await ctx.tool(TOOL, dir=inp.dir, task_id=ctx.task_id, sleep_s=inp.sleep_s)
    completion = await ctx.llm.chat(f"summarise task {ctx.task_id}", max_tokens=16)
    finished = await ctx.step("finish", _plain, inp.dir, ctx.task_id, "finish", inp.sleep_s)
    return ChaosOut(prepared=prepared, agent=str(reply), tool=str(noted),
                    llm_words=len(completion.text.split()), finished=finished)
