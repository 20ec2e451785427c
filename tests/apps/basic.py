"""Workflows and agents the tests run. Side effects go to files so a test can count them."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from pydantic import BaseModel

from runtime import Agent, AgentContext, AgentMessage, Context, RetryPolicy, workflow


def mark(directory: str, name: str) -> int:
    """Append one line to DIR/NAME (a side effect the test counts); returns the new count."""
    path = Path(directory) / name
    with open(path, "a") as f:
        f.write("x\n")
    return sum(1 for _ in open(path))


def gate_open(directory: str, name: str) -> bool:
    return (Path(directory) / name).exists()


async def wait_gate(directory: str, name: str, timeout_s: float = 120.0) -> None:
    """Wait until the test opens a gate (creates a file). Polls, since it stands in for slow work."""
    for _ in range(int(timeout_s / 0.05)):
        if gate_open(directory, name):
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"gate {name} never opened")


class StepsIn(BaseModel):
    dir: str
    steps: int = 5
    gate_at: int | None = None
    sleep_s: float = 0.0


class StepsOut(BaseModel):
    done: int


@workflow
async def five_steps(ctx: Context, inp: StepsIn) -> StepsOut:
    for i in range(1, inp.steps + 1):
        async def body(i: int = i) -> int:
            mark(inp.dir, f"{ctx.task_id}.step{i}")
            if inp.sleep_s:
                await asyncio.sleep(inp.sleep_s)  # stands in for real work
            if inp.gate_at == i:
                mark(inp.dir, f"{ctx.task_id}.at_gate")
                await wait_gate(inp.dir, f"{ctx.task_id}.open")
            return i

        await ctx.step(f"s{i}", body)
        ctx.emit(progress=i / inp.steps, message=f"step {i}")
    return StepsOut(done=inp.steps)


class EchoIn(BaseModel):
    text: str = ""
    dir: str = ""


@workflow
async def echo(ctx: Context, inp: EchoIn) -> str:
    return await ctx.step("echo", lambda: inp.text)


class FlakyIn(BaseModel):
    dir: str
    fail_times: int
    attempts: int = 3


@workflow
async def flaky(ctx: Context, inp: FlakyIn) -> int:
    await ctx.step("before", mark, inp.dir, f"{ctx.task_id}.before")

    def sometimes() -> int:
        n = mark(inp.dir, f"{ctx.task_id}.flaky")
        if not gate_open(inp.dir, f"{ctx.task_id}.heal") and n <= inp.fail_times:
            raise ConnectionError(f"upstream down (attempt {n})")
        return n

    policy = RetryPolicy(max_attempts=inp.attempts, initial_backoff_s=0.05, jitter=0.1)
    return await ctx.step("flaky", sometimes, retry=policy)


class Slow(Agent):
    """Holds a message until the test opens its gate; counts how often it started on each message."""

    role = "slow"
    min_replicas = 0  # started when a message arrives: an idle test runtime has no replica
    max_replicas = 2

    async def handle(self, msg: AgentMessage, ctx: AgentContext) -> str:
        directory = msg.payload["dir"]
        # The pid goes first, and whole (written aside, then renamed): a test that sees the file, or
        # sees a start counted, reads the pid of the process that made it.
        pid_file = Path(directory, f"{msg.task_id}.slow_pid")
        partial = pid_file.with_name(f"{pid_file.name}.partial")
        partial.write_text(str(os.getpid()))
        partial.replace(pid_file)
        mark(directory, f"{msg.task_id}.slow_started")
        await wait_gate(directory, f"{msg.task_id}.open")
        return "handled"


@workflow
async def agent_once(ctx: Context, inp: EchoIn) -> str:
    reply = await ctx.agent("slow").run({"dir": inp.dir})
    return str(reply)


class BigIn(BaseModel):
    dir: str
    size_mb: int = 20


class BigOut(BaseModel):
    sha256: str
    consumer_saw: dict[str, str]
    verified: bool


class Producer(Agent):
    """Makes a large value; the runtime hands it back by reference (a Ref in the object store)."""

    role = "producer"
    min_replicas = 0

    async def handle(self, msg: AgentMessage, ctx: AgentContext) -> bytes:
        import random

        return random.Random(msg.payload["seed"]).randbytes(msg.payload["size_mb"] * 1024 * 1024)


class Consumer(Agent):
    """Receives the large value as a Ref inside its payload and reads it from the object store."""

    role = "consumer"
    min_replicas = 0

    async def handle(self, msg: AgentMessage, ctx: AgentContext) -> dict[str, str]:
        import hashlib

        from runtime import Ref

        ref = msg.payload["blob"]
        data = await ref.get()
        return {"type": type(ref).__name__, "object_id": str(ref.object_id) if isinstance(ref, Ref) else "",
                "sha256": hashlib.sha256(data).hexdigest()}


@workflow
async def big_handoff(ctx: Context, inp: BigIn) -> BigOut:
    import hashlib

    ref = await ctx.agent("producer").run({"seed": 7, "size_mb": inp.size_mb})
    mark(inp.dir, f"{ctx.task_id}.producer_ref.{type(ref).__name__}")
    if getattr(ref, "object_id", None):
        Path(inp.dir, f"{ctx.task_id}.producer_oid").write_text(ref.object_id)
    saw = await ctx.agent("consumer").run({"blob": ref})
    await ctx.step("gate", wait_gate, inp.dir, f"{ctx.task_id}.open")

    async def verify() -> bool:
        return hashlib.sha256(await ref.get()).hexdigest() == saw["sha256"]

    verified = await ctx.step("verify", verify)
    return BigOut(sha256=saw["sha256"], consumer_saw=saw, verified=verified)


class ApprovalIn(BaseModel):
    dir: str
    timeout_s: float | None = None


@workflow
async def approval(ctx: Context, inp: ApprovalIn) -> dict[str, object]:
    from runtime import SignalTimeout

    await ctx.step("draft", mark, inp.dir, f"{ctx.task_id}.draft")
    try:
        decision = await ctx.wait_for_signal("approve", timeout_s=inp.timeout_s)
    except SignalTimeout:
        return {"approved": False, "reason": "timed out"}
    await ctx.step("publish", mark, inp.dir, f"{ctx.task_id}.publish")
    return {"approved": True, "decision": decision}


@workflow
async def chatty(ctx: Context, inp: EchoIn) -> str:
    completion = await ctx.llm.chat([{"role": "user", "content": inp.text}], max_tokens=40)
    return completion.text


class Elastic(Agent):
    """Holds each message until the test opens the shared gate; sized by the test's configuration."""

    role = "elastic"
    min_replicas = 0

    async def handle(self, msg: AgentMessage, ctx: AgentContext) -> int:
        await wait_gate(msg.payload["dir"], "elastic.open")
        return os.getpid()


@workflow
async def elastic_call(ctx: Context, inp: EchoIn) -> int:
    return int(await ctx.agent("elastic").run({"dir": inp.dir}))
