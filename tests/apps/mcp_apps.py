"""Agents and workflows that use the tools of the test MCP server (``tests/mcp_server.py``), named
``notes.<tool>`` (over stdio) or ``web.<tool>`` (over streamable HTTP)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from runtime import Agent, Context, workflow


class Noter(Agent):
    """Writes a note, counts the words of the request, and is refused once (the server answers
    isError): three MCP tools, called by the simulated engine's policy in this order."""

    role = "noter"
    min_replicas = 0
    instructions = "Note the request, count its words, then try to refuse it."
    tools = ["notes.write_note", "notes.count_words", "notes.refuse"]


class TextIn(BaseModel):
    text: str
    seconds: float = 0.0
    server: str = "notes"


@workflow
async def note_it(ctx: Context, inp: TextIn) -> str:
    return str(await ctx.agent("noter").run(inp.text))


@workflow
async def slow_note(ctx: Context, inp: TextIn) -> Any:
    """One slow MCP call from a workflow (a test kills the server during it)."""
    return await ctx.tool(f"{inp.server}.slow_note", text=inp.text, seconds=inp.seconds)


@workflow
async def count_words(ctx: Context, inp: TextIn) -> Any:
    return await ctx.tool(f"{inp.server}.count_words", text=inp.text)
