"""A small app for a runtime on a cluster: one workflow of three checkpointed steps and one agent.

Run it detached on a Ray cluster and drive it from a script (see ``examples/driver.py``)::

    ray start --head
    raysquad up --detach --app examples.hello
    ray job submit --working-dir . -- python examples/driver.py Ada Grace
    raysquad down
"""

from __future__ import annotations

from pydantic import BaseModel

from runtime import Agent, AgentContext, AgentMessage, Context, workflow


class HelloIn(BaseModel):
    name: str


class HelloOut(BaseModel):
    greeting: str
    length: int


class Greeter(Agent):
    """Turns a name into a greeting (an agent: a Ray actor fed by its mailbox)."""

    role = "greeter"
    min_replicas = 0

    async def handle(self, msg: AgentMessage, ctx: AgentContext) -> str:
        return f"Hello, {msg.payload['name']}!"


@workflow
async def hello(ctx: Context, inp: HelloIn) -> HelloOut:
    """Greet someone: clean the name, ask the greeter, measure the greeting (three checkpoints)."""
    name = await ctx.step("clean", lambda: inp.name.strip().title())
    greeting = await ctx.agent("greeter").run({"name": name})
    length = await ctx.step("measure", lambda: len(greeting))
    return HelloOut(greeting=greeting, length=length)
