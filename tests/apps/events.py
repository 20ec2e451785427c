"""The event-driven half under test: workflows started by events (with a filter and each kind of
flow control), agent roles that subscribe, a workflow that publishes, an agent that delegates.
Every event's data names the directory where side effects go, so a test can count them."""

from __future__ import annotations

import json
import time
from pathlib import Path

from pydantic import BaseModel

from runtime import Agent, AgentContext, AgentMessage, Context, on_event, on_schedule, workflow
from tests.apps.basic import mark, wait_gate


class Doc(BaseModel):
    dir: str
    url: str
    lang: str = "en"
    n: int = 0
    gate: str | None = None  # the task waits for this gate file before it ends


def note(directory: str, name: str, **fields: object) -> None:
    """Append one JSON line to DIR/NAME."""
    with open(Path(directory) / name, "a") as f:
        f.write(json.dumps({**fields, "at": time.time()}) + "\n")


@workflow(triggers=[on_event("docs.new", where={"lang": "en"})])
async def index_doc(ctx: Context, inp: Doc) -> str:
    await ctx.step("index", lambda: mark(inp.dir, f"index_doc.{inp.url}"))
    return inp.url


@workflow(triggers=[on_event("digest.*")])
async def digest(ctx: Context, inp: Doc) -> int:
    return await ctx.step("count", lambda: mark(inp.dir, f"digest.{inp.url}"))


@workflow(triggers=[on_event("edits.made", debounce_s=1.0)])
async def debounced(ctx: Context, inp: Doc) -> int:
    await ctx.step("run", lambda: note(inp.dir, "debounced", url=inp.url, n=inp.n))
    return inp.n


@workflow(triggers=[on_event("jobs.queued", one_per_key=True)])
async def one_at_a_time(ctx: Context, inp: Doc) -> int:
    await ctx.step("start", lambda: note(inp.dir, "one_at_a_time", n=inp.n, phase="start"))
    if inp.gate:
        await ctx.step("wait", wait_gate, inp.dir, inp.gate)
    await ctx.step("end", lambda: note(inp.dir, "one_at_a_time", n=inp.n, phase="end"))
    return inp.n


@workflow(triggers=[on_event("prices.changed", cancel_running=True)])
async def latest_only(ctx: Context, inp: Doc) -> int:
    await ctx.step("start", lambda: note(inp.dir, "latest_only", n=inp.n, phase="start"))
    if inp.gate:
        await ctx.step("wait", wait_gate, inp.dir, inp.gate)
    await ctx.step("end", lambda: note(inp.dir, "latest_only", n=inp.n, phase="end"))
    return inp.n


class PublishIn(BaseModel):
    dir: str
    url: str


@workflow
async def announce(ctx: Context, inp: PublishIn) -> str:
    """Publishes an event that starts index_doc (a checkpointed step), then one more step."""
    event = await ctx.publish("docs.new", {"dir": inp.dir, "url": inp.url, "lang": "en"},
                              key=inp.url)
    await ctx.step("after", lambda: mark(inp.dir, f"announce.{inp.url}"))
    return event.id


class Indexer(Agent):
    """Subscribes to every docs event; fails the first delivery of a doc whose url says so."""

    role = "indexer"
    subscribes = ["docs.**"]
    min_replicas = 0  # scale to zero: the first event starts a replica

    async def handle(self, msg: AgentMessage, ctx: AgentContext) -> None:
        assert msg.event is not None
        data = msg.event.data
        note(data["dir"], "indexer", event=msg.event.id, topic=msg.event.topic,
             attempt=msg.attempt, redelivered=ctx.redelivered)
        if data.get("gate"):  # slow work: held until the test opens the gate
            await wait_gate(data["dir"], data["gate"])
        if "fail-first" in data["url"] and not msg.redelivered:
            raise RuntimeError("first delivery fails on purpose")
        if "publish" in data["url"]:
            await ctx.publish("digest.indexed", {"dir": data["dir"], "url": data["url"]})


class Chief(Agent):
    """Delegates to the helper role through its mailbox and returns what it says."""

    role = "chief"
    min_replicas = 0

    async def handle(self, msg: AgentMessage, ctx: AgentContext) -> str:
        reply = await ctx.agent("helper").run({"word": msg.payload["word"]})
        return f"chief heard: {reply}"


class Helper(Agent):
    role = "helper"
    min_replicas = 0

    async def handle(self, msg: AgentMessage, ctx: AgentContext) -> str:
        return msg.payload["word"].upper()


class AskIn(BaseModel):
    word: str


@workflow
async def ask_chief(ctx: Context, inp: AskIn) -> str:
    return await ctx.agent("chief").run({"word": inp.word})


class TickIn(BaseModel):
    dir: str
    gate: str | None = None  # the task holds at this gate file until the test opens it


@workflow
async def tick(ctx: Context, inp: TickIn) -> str:
    """Started by schedules: notes its task, and holds at its gate if it has one."""
    await ctx.step("note", lambda: note(inp.dir, f"tick.{ctx.task_id}", task=ctx.task_id))
    if inp.gate:
        await ctx.step("wait", wait_gate, inp.dir, inp.gate)
    return ctx.task_id


class Nothing(BaseModel):
    pass


@workflow(triggers=[on_schedule("0 3 * * *", timezone="Europe/Paris", id="nightly")])
async def nightly(ctx: Context, inp: Nothing) -> str:
    return "ran"


@workflow
async def always_fails(ctx: Context, inp: Nothing) -> str:
    raise ValueError("this workflow always fails")
