"""The app of ``benchmarks/agent_loop.py``: a declared agent offered ``TOOLS`` trivial tools; on the
simulated engine's policy its loop calls each once, then answers (``TOOLS + 1`` turns a message)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from runtime import Agent, Context, workflow
from runtime.tools import tool

TOOLS = 7


def _noop(i: int) -> Callable[..., Any]:
    def noop(note: str = "") -> str:
        """Does nothing, at once."""
        return f"ok {i}"
    return noop


NOOPS = [tool(_noop(i), name=f"noop_{i}") for i in range(TOOLS)]
globals().update({t.name: t for t in NOOPS})  # module attributes: the catalogue finds them there


class Looper(Agent):
    role = "looper"
    instructions = "Call each tool once, then answer."
    tools = [t.name for t in NOOPS]
    max_turns = TOOLS + 2
    concurrency = 64


class LoopIn(BaseModel):
    text: str


@workflow
async def loop_task(ctx: Context, inp: LoopIn) -> str:
    """One message to the looper: its loop is TOOLS + 1 turns."""
    return str(await ctx.agent("looper").run(inp.text))
