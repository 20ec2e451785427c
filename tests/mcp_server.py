"""A small MCP server for the tests, written with the ``mcp`` SDK: its tools leave side effects in
the file ``$MCP_NOTES`` (one line each) so a test can count them.

    python -m tests.mcp_server stdio
    python -m tests.mcp_server http PORT      (streamable HTTP at http://127.0.0.1:PORT/mcp)
"""

from __future__ import annotations

import os
import sys
import time

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

server = MCPServer("notes")


def _note(line: str) -> int:
    path = os.environ["MCP_NOTES"]
    with open(path, "a") as f:
        f.write(f"{line} {os.getpid()}\n")
    with open(path) as f:
        return sum(1 for _ in f)


@server.tool()
def write_note(text: str) -> str:
    """Write a note; says how many notes there are."""
    return f"{_note('note:' + text)} notes"


@server.tool()
def slow_note(text: str, seconds: float = 5.0) -> str:
    """Start a note, take ``seconds``, then finish it (a test kills the server in between)."""
    _note("started:" + text)
    time.sleep(seconds)
    return f"{_note('finished:' + text)} notes"


@server.tool()
def count_words(text: str) -> dict[str, int]:
    """Count the words of a text (a structured result)."""
    return {"words": len(text.split())}


@server.tool()
def refuse(reason: str) -> str:
    """Always fails, saying why (the server answers isError)."""
    raise ToolError(f"refused: {reason}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["http"]:
        server.run("streamable-http", host="127.0.0.1", port=int(sys.argv[2]))
    else:
        server.run("stdio")
