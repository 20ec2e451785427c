"""MCP servers as raysquad tools, on the ``mcp`` SDK's client.

Each tool of each configured server (``Settings.mcp_servers``) is the raysquad tool
``<server>.<tool>`` with the server's JSON schema (a model sees it as ``<server>__<tool>``: models
take no dot). The tools are listed once, when the runtime starts (``discover``, in the process that
starts it), and travel to every process in ``Settings.mcp_tools``, where ``mcp_tools`` makes them
``Tool``s. Their calls run in the tool executors like any tool's: the gate ``mcp:<server>``, the
server's ``timeout_s`` per call (``start_timeout_s`` for a session to start), the tools' retries, a
dead letter when they run out, a record when an agent or a workflow makes them.

An executor holds one session per server (``Sessions``), opened on its first call and opened again
after a call failed on it: a stdio server whose process died is started again on the next attempt.
A result the server marks ``isError`` is the call's result, ``{"error": <its text>}``, not a
failure: an agent's model reads it and may try otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from runtime.core.config import McpServer, McpTool, Settings
from runtime.core.errors import McpServerUnavailable
from runtime.core.structured import wire_name
from runtime.tools.registry import DEFINED, SchemaArgs, Tool, ToolContext

log = logging.getLogger(__name__)


def client_for(server: McpServer) -> Any:
    """An ``mcp.Client`` (not entered) for the server."""
    import httpx2
    from mcp import Client
    from mcp.client.stdio import StdioServerParameters
    from mcp.client.streamable_http import streamable_http_client

    if server.command is not None:
        command, *args = server.command
        # The SDK passes a minimal environment (HOME, PATH, ...) and ``env`` over it: not ours.
        params = StdioServerParameters(command=command, args=args, env=dict(server.env) or None,
                                       cwd=server.cwd)
        # The initialize handshake every server speaks; "auto" first probes for the 2026 protocol.
        return Client(params, read_timeout_seconds=_read_timeout_s(server), mode="legacy",
                      cache=None)
    assert server.url is not None
    http = httpx2.AsyncClient(headers=server.headers, timeout=server.timeout_s)
    return Client(streamable_http_client(server.url, http_client=http),
                  read_timeout_seconds=_read_timeout_s(server), cache=None)


def _read_timeout_s(server: McpServer) -> float:
    """The SDK's bound on any one answer, the handshake's included: the longer of the start's and a
    call's (each is also bounded on its own, by ``Sessions`` and by ``mcp_tool``)."""
    return max(server.start_timeout_s, server.timeout_s)


async def list_tools(name: str, server: McpServer) -> list[McpTool]:
    """The server's tools, as raysquad knows them."""
    async with asyncio.timeout(server.start_timeout_s + server.timeout_s), \
            client_for(server) as client:
        listed = await client.list_tools()
    return [McpTool(server=name, name=t.name, description=t.description or "",
                    input_schema=t.input_schema or {"type": "object"}) for t in listed.tools]


async def discover(servers: dict[str, McpServer]) -> list[McpTool]:
    """Every server's tools; a server that cannot be listed is left out, with a warning (its tools
    are then unknown to this runtime until it is started again)."""
    found: list[McpTool] = []
    for name, server in servers.items():
        try:
            found += await list_tools(name, server)
        except Exception as e:  # noqa: BLE001 - one server down does not stop the runtime
            log.warning("MCP server %s could not be listed (%s: %s); its tools are left out",
                        name, type(e).__name__, e)
    return found


def with_mcp_tools(settings: Settings) -> Settings:
    """``settings`` with its MCP servers' tools listed (``mcp_tools``), unless already given."""
    if not settings.mcp_servers or settings.mcp_tools:
        return settings
    return settings.model_copy(update={"mcp_tools": tuple(asyncio.run(
        discover(settings.mcp_servers)))})


class Sessions:
    """One open session per server in this process, each held by a task of its own (the SDK's
    client is entered and left in one task)."""

    def __init__(self) -> None:
        self._open: dict[str, tuple[asyncio.Future[Any], asyncio.Event]] = {}

    async def client(self, name: str, server: McpServer) -> Any:
        held = self._open.get(name)
        if held is None:
            ready: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            done = asyncio.Event()
            held = self._open[name] = (ready, done)
            task = asyncio.create_task(self._hold(name, server, ready, done))
            task.add_done_callback(lambda _: self._forget(name, held))
        return await asyncio.shield(held[0])

    async def _hold(self, name: str, server: McpServer, ready: asyncio.Future[Any],
                    done: asyncio.Event) -> None:
        try:
            async with asyncio.timeout(server.start_timeout_s):
                client = await client_for(server).__aenter__()
        except BaseException as e:  # noqa: BLE001 - handed to every caller waiting for it
            ready.set_exception(McpServerUnavailable(name, f"{type(e).__name__}: {e}"))
            return
        ready.set_result(client)
        try:
            await done.wait()
        finally:
            with contextlib.suppress(BaseException):
                await client.__aexit__(None, None, None)

    def _forget(self, name: str, held: tuple[asyncio.Future[Any], asyncio.Event]) -> None:
        if self._open.get(name) is held:
            del self._open[name]

    def drop(self, name: str) -> None:
        """Close the server's session: the next call opens a new one (a stdio server restarts)."""
        held = self._open.pop(name, None)
        if held is not None:
            held[1].set()


SESSIONS = Sessions()


def result_value(result: Any) -> Any:
    """A ``CallToolResult`` as the call's value: its structured content, else its text; an
    ``isError`` result as ``{"error": text}``."""
    text = "\n".join(getattr(block, "text", "") for block in result.content
                     if getattr(block, "type", "") == "text")
    if result.is_error:
        return {"error": text or "the tool failed"}
    if result.structured_content is not None:
        return result.structured_content
    return text


def mcp_tool(spec: McpTool, server: McpServer) -> Tool:
    """The raysquad tool for one MCP tool: its call goes over this process's session."""
    name = f"{spec.server}.{spec.name}"

    async def call(arguments: dict[str, Any], ctx: ToolContext) -> Any:
        client = await SESSIONS.client(spec.server, server)  # bounded by start_timeout_s
        try:
            async with asyncio.timeout(server.timeout_s):
                result = await client.call_tool(spec.name, arguments)
        except BaseException:
            SESSIONS.drop(spec.server)  # dead, hung or confused: the next attempt starts anew
            raise
        ctx.reached()
        return result_value(result)

    # The attempt's bound: a session to start (on the first call, or after a dropped one) within
    # start_timeout_s, then the call itself within timeout_s; a slow start does not eat the call's.
    return Tool(call, name, spec.description, SchemaArgs,
                timeout_s=server.start_timeout_s + server.timeout_s,
                gate=f"mcp:{spec.server}", context_param="ctx", input_schema=spec.input_schema)


def mcp_tools(settings: Settings) -> dict[str, Tool]:
    """The MCP servers' tools listed in ``settings``, by name and by the name a model sees; each
    also defined in this process (``defined_tool``), so an agent's ``tools`` may name it."""
    tools: dict[str, Tool] = {}
    for spec in settings.mcp_tools:
        server = settings.mcp_servers.get(spec.server)
        if server is None:
            continue
        made = mcp_tool(spec, server)
        tools[made.name] = tools[wire_name(made.name)] = made
    DEFINED.update(tools)
    return tools
