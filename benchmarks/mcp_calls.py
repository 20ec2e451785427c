"""MCP tool calls through raysquad against the same calls made directly with the ``mcp`` client, in
one run, over stdio and over streamable HTTP.

The server is the tests' (``tests/mcp_server.py``, written with the ``mcp`` SDK); the call is its
``count_words`` tool (no side effect, a structured result). For each transport:

- ``direct``: one ``mcp.Client`` session in this process, ``--concurrency`` calls at once;
- ``raysquad``: the same calls through raysquad's tool path, ``ToolRouter.call`` from this process:
  the arguments checked against the tool's schema, the call sent to a tool executor actor, through
  its gate, its retry loop and its session to the server (a stdio server runs in the executor).

The overhead per call is the difference of the mean latencies (ms). Writes JSON.

    .venv/bin/python benchmarks/mcp_calls.py [--calls 400] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from benchmarks.common import write_result  # noqa: E402
from runtime import Runtime, Settings  # noqa: E402
from runtime.control.peers import find_peers  # noqa: E402
from runtime.core.config import McpServer  # noqa: E402
from runtime.tools.executor import Caller  # noqa: E402
from runtime.tools.mcp import client_for  # noqa: E402

TEXT = "the quick brown fox jumps over the lazy dog"


async def timed(call: Any, calls: int, concurrency: int) -> dict[str, float]:
    """``calls`` calls, ``concurrency`` at once: calls per second and the mean latency (ms)."""
    latencies: list[float] = []
    gate = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with gate:
            start = time.perf_counter()
            result = await call()
            latencies.append(time.perf_counter() - start)
            assert result == {"words": 9}, result

    await asyncio.gather(*(one() for _ in range(concurrency)))  # warm: sessions open
    latencies.clear()
    start = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(calls)))
    elapsed = time.perf_counter() - start
    return {"calls_per_s": calls / elapsed, "mean_ms": 1000 * sum(latencies) / len(latencies)}


async def direct(server: McpServer, calls: int, concurrency: int) -> dict[str, float]:
    async with client_for(server) as client:
        async def call() -> Any:
            return (await client.call_tool("count_words", {"text": TEXT})).structured_content

        return await timed(call, calls, concurrency)


async def through_raysquad(rt: Runtime, name: str, calls: int, concurrency: int
                           ) -> dict[str, float]:
    router = find_peers(rt.settings, ["tests.apps.mcp_apps"]).tools

    async def call() -> Any:
        return await router.call(f"{name}.count_words", {"text": TEXT}, Caller())

    return await timed(call, calls, concurrency)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--json", default=str(ROOT / "benchmarks/results/mcp_calls.json"))
    args = parser.parse_args(argv)
    console = Console()
    work = Path(tempfile.mkdtemp(prefix="mcp-bench-"))
    env = {"MCP_NOTES": str(work / "notes"), "PYTHONPATH": str(ROOT)}
    port = free_port()
    http = subprocess.Popen([sys.executable, "-m", "tests.mcp_server", "http", str(port)], cwd=ROOT,
                            env={**os.environ, **env}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    servers = {"stdio": McpServer(command=(sys.executable, "-m", "tests.mcp_server"), env=env,
                                  cwd=str(ROOT)),
               "http": McpServer(url=f"http://127.0.0.1:{port}/mcp")}
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/mcp", timeout=1)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or http.poll() is not None:
                    raise RuntimeError("the MCP server over HTTP did not start") from None
                time.sleep(0.2)
        settings = Settings(data_dir=str(work / "state"), namespace="mcp-bench", ray_num_cpus=2,
                            mcp_servers=servers, ray_object_store_memory=150 * 1024**2)
        rows: dict[str, dict[str, dict[str, float]]] = {}
        with Runtime.start(settings, apps=["tests.apps.mcp_apps"]) as rt:
            for name, server in servers.items():
                console.print(f"{name}: direct, then through raysquad ...")
                rows[name] = {
                    "direct": asyncio.run(direct(server, args.calls, args.concurrency)),
                    "raysquad": asyncio.run(through_raysquad(rt, name, args.calls,
                                                             args.concurrency))}
    finally:
        http.kill()
        http.wait(10)
    table = Table(title=f"MCP tool calls: {args.calls} calls, {args.concurrency} at once")
    for column in ("transport", "path", "calls/s", "mean ms", "overhead ms per call"):
        table.add_column(column, justify="right")
    for name, sides in rows.items():
        for side, m in sides.items():
            overhead = m["mean_ms"] - sides["direct"]["mean_ms"] if side == "raysquad" else 0.0
            table.add_row(name, side, f"{m['calls_per_s']:.0f}", f"{m['mean_ms']:.2f}",
                          f"{overhead:.2f}" if side == "raysquad" else "")
    console.print(table)
    return write_result(console, args.json, {
        "calls": args.calls, "concurrency": args.concurrency, "rows": rows,
        "overhead_ms": {name: sides["raysquad"]["mean_ms"] - sides["direct"]["mean_ms"]
                        for name, sides in rows.items()}})


if __name__ == "__main__":
    main()
