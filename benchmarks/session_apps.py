"""The workflow the agent sessions benchmark runs: one agent step holding a conversation of several
turns with the LLM, a tool's result added between turns (benchmarks/agent_sessions.py)."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

from pydantic import BaseModel, Field

from runtime import Agent, AgentContext, AgentMessage, Context, workflow
from runtime.tools import tool

# What every conversation starts with: the agent's instructions (about 300 tokens).
SYSTEM = " ".join([
    "You are a field researcher in a team of agents that writes briefings for a city council.",
    "Each turn you receive the result of a lookup in the city's archive; read it, say in two or",
    "three sentences what it adds to the briefing, and name the next thing to look up.",
    "Rules: quote figures exactly as the archive gives them; never invent a source; when two",
    "results disagree, say so and prefer the more recent one; keep a neutral tone; write for a",
    "reader who has not seen the archive; do not repeat what an earlier turn already said; if a",
    "result is off the topic, say that it is and move on; mention the district a figure is for;",
    "round money to the nearest thousand; give dates as day, month and year; never give advice",
    "on how to vote; flag any figure that changed by more than a tenth since the year before;",
    "say when a result is older than five years; and end every answer with the word NEXT and",
    "the next lookup in a few words. The council's topics this year are transport, housing,",
    "water, schools, parks, waste, lighting, libraries, markets, bridges, clinics and flood",
    "defences; the archive holds minutes, budgets, surveys, inspection reports and letters",
    "from residents, each with its district, date and author. Your briefings are read aloud at",
    "the start of each session, so keep sentences short and avoid lists and tables.",
])

TOPICS = ["the tram extension", "social housing repairs", "the water main renewal", "school meals",
          "the riverside park", "waste collection rounds", "street lighting", "library hours",
          "the covered market", "the old stone bridge", "the east clinic", "flood defences",
          "cycle lanes", "bus shelters", "the swimming pool", "public toilets"]

WORDS = ("budget survey district residents inspection minutes letter figure council contract "
         "repair estimate delay vote report year month cost plan route site works").split()


@tool
async def archive_lookup(topic: str, turn: int, words: int = 110, latency_s: float = 0.0) -> str:
    """A deterministic archive excerpt about ``topic`` (the tool result a turn adds), after a
    delay between 0 and twice ``latency_s``, as a real lookup takes (fixed per topic and turn)."""
    seed = hashlib.sha256(f"{topic}/{turn}".encode()).digest()
    await asyncio.sleep(latency_s * 2 * seed[7] / 255)
    picked = [WORDS[(seed[i % len(seed)] + 7 * i) % len(WORDS)] for i in range(words)]
    return (f"Archive record {seed[:3].hex()} on {topic}, district {seed[3] % 9 + 1}, "
            f"{seed[4] % 28 + 1}/{seed[5] % 12 + 1}/20{seed[6] % 10 + 15}: " + " ".join(picked) + ".")


class SessionIn(BaseModel):
    topic: str
    turns: int = Field(6, ge=1)
    max_tokens: int = Field(48, ge=1)
    tool_words: int = Field(110, ge=1)
    tool_latency_s: float = Field(0.0, ge=0)


class Researcher(Agent):
    """Holds one conversation: ``turns`` chats, each followed by an archive lookup whose result is
    the next turn's new message; the history grows every turn."""

    role = "bench-researcher"
    min_replicas = 1
    max_replicas = 1
    concurrency = 64  # every conversation at once: the agent holds none back

    async def handle(self, msg: AgentMessage, ctx: AgentContext) -> dict[str, Any]:
        inp = SessionIn.model_validate(msg.payload)
        lookup = {"topic": inp.topic, "words": inp.tool_words, "latency_s": inp.tool_latency_s}
        first = await ctx.tool("archive_lookup", turn=0, **lookup)
        messages: list[dict[str, Any]] = [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": f"Today's briefing is on {inp.topic}. The first lookup: {first}"}]
        tokens, prompts = 0, []
        for turn in range(1, inp.turns + 1):
            completion = await ctx.chat(messages, max_tokens=inp.max_tokens)
            tokens += completion.usage.completion_tokens
            prompts.append(completion.usage.prompt_tokens)
            if turn == inp.turns:
                break
            found = await ctx.tool("archive_lookup", turn=turn, **lookup)
            messages += [{"role": "assistant", "content": completion.text},
                         {"role": "user", "content": f"Result of the lookup: {found}"}]
        return {"completion_tokens": tokens, "prompt_tokens": prompts}


@workflow
async def agent_session(ctx: Context, inp: SessionIn) -> dict[str, Any]:
    """One agent step: a conversation of ``turns`` turns."""
    return dict(await ctx.agent("bench-researcher").run(inp.model_dump()))
