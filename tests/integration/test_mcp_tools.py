"""MCP servers as tools, on a real runtime: the test MCP server (``tests/mcp_server.py``, written with
the ``mcp`` SDK) over stdio, run by the tool executors, and over streamable HTTP, run by the test.
Killed by pid mid-call, a stdio server is started again and the call retried; an HTTP server the
test starts again is reached again."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from runtime import RetryPolicy, Runtime, TaskStatus
from runtime.core import refs
from runtime.core.config import ToolSettings
from tests.conftest import ROOT, wait_for
from tests.e2e.live import free_port
from tests.faults import query


def stdio_server(notes: Path) -> dict[str, Any]:
    return {"command": [sys.executable, "-m", "tests.mcp_server"], "cwd": str(ROOT),
            "env": {"MCP_NOTES": str(notes), "PYTHONPATH": str(ROOT)}, "timeout_s": 30}


def notes_of(path: Path) -> list[tuple[str, int]]:
    """The server's side effects: (what, the pid of the server process that did it)."""
    if not path.exists():
        return []
    return [(what, int(pid)) for what, pid in (line.rsplit(" ", 1) for line in path.read_text().splitlines())]


def step_output(rt: Runtime, task_id: str, key: str) -> Any:
    rows = query(Path(rt.settings.database_path),
                 f"SELECT key, output FROM steps WHERE task_id = '{task_id}'")
    (out,) = [refs.loads(bytes(o)) for k, o in rows if k == key]
    return out


def test_an_agent_calls_a_stdio_servers_tools_and_hears_its_error_result(
        make_runtime: Callable[..., Runtime], tmp_path: Path) -> None:
    notes = tmp_path / "notes"
    rt = make_runtime(["tests.apps.mcp_apps"], mcp_servers={"notes": stdio_server(notes)})
    listed = {t["name"]: t for t in asyncio.run(rt.tool_executors[0].schemas())}
    assert {"notes.write_note", "notes.slow_note", "notes.count_words", "notes.refuse"} <= set(listed)
    assert listed["notes.write_note"]["parameters"]["required"] == ["text"]
    client = rt.client()
    task = client.submit("note_it", {"text": "ship the order today"})
    done = client.wait(task.id, timeout_s=120)
    assert done.status is TaskStatus.SUCCEEDED, done.error
    # The simulated engine made the note's text from the conversation: one note, written once.
    assert [what.split(":")[0] for what, _ in notes_of(notes)] == ["note"]
    turns = [e.data for e in client.events(task.id) if e.kind == "agent"]
    assert [t["tool_calls"] for t in turns if "tool_calls" in t] == [
        ["notes__write_note"], ["notes__count_words"], ["notes__refuse"]]
    # Recorded under the tools' own names; the server's isError is the call's result.
    assert isinstance(step_output(rt, task.id, "agent:noter/tool:notes.count_words")["words"], int)
    refused = step_output(rt, task.id, "agent:noter/tool:notes.refuse")
    assert "refused" in refused["error"]
    assert turns[-1].get("answer") is True


def test_a_stdio_server_killed_mid_call_is_started_again_and_the_call_retried(
        make_runtime: Callable[..., Runtime], tmp_path: Path) -> None:
    notes = tmp_path / "notes"
    rt = make_runtime(["tests.apps.mcp_apps"], mcp_servers={"notes": stdio_server(notes)})
    client = rt.client()
    task = client.submit("slow_note", {"text": "k", "seconds": 4})
    (_, pid), = wait_for(lambda: [n for n in notes_of(notes) if n[0] == "started:k"] or None,
                         timeout_s=90, what="the slow call to start on the server")
    os.kill(pid, signal.SIGKILL)
    done = client.wait(task.id, timeout_s=120)
    assert done.status is TaskStatus.SUCCEEDED, done.error
    seen = notes_of(notes)
    started = [p for what, p in seen if what == "started:k"]
    finished = [p for what, p in seen if what == "finished:k"]
    assert len(started) == 2 and started[0] == pid and started[1] != pid, seen
    assert finished == [started[1]], seen  # the second server process finished it, once


def _answers(url: str) -> bool:
    try:
        httpx.get(url, timeout=2)
        return True
    except httpx.HTTPError:
        return False


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[Callable[[], subprocess.Popen[bytes]]]:
    """Starts the test server over streamable HTTP on one port (again, after it was killed)."""
    port = free_port()
    procs: list[subprocess.Popen[bytes]] = []

    def start() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([sys.executable, "-m", "tests.mcp_server", "http", str(port)],
                                cwd=ROOT, env={**os.environ, "MCP_NOTES": str(tmp_path / "notes")},
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(proc)
        wait_for(lambda: _answers(f"http://127.0.0.1:{port}/mcp") or proc.poll() is not None,
                 timeout_s=60, what="the MCP server to listen")
        assert proc.poll() is None
        return proc

    start.port = port  # type: ignore[attr-defined]
    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_a_streamable_http_servers_tools_and_a_restart_of_it(
        make_runtime: Callable[..., Runtime], tmp_path: Path,
        http_server: Callable[[], subprocess.Popen[bytes]]) -> None:
    first = http_server()
    url = f"http://127.0.0.1:{http_server.port}/mcp"  # type: ignore[attr-defined]
    # Retries that outlast the server's restart below (a Python process: seconds).
    retry = RetryPolicy(max_attempts=8, initial_backoff_s=0.5, max_backoff_s=4)
    rt = make_runtime(["tests.apps.mcp_apps"], mcp_servers={"web": {"url": url, "timeout_s": 30}},
                      tools=ToolSettings(retry=retry))
    client = rt.client()
    counted = client.wait(client.submit("count_words", {"text": "a b c", "server": "web"}).id, 120)
    assert counted.status is TaskStatus.SUCCEEDED and counted.output == {"words": 3}, counted
    task = client.submit("slow_note", {"text": "h", "seconds": 4, "server": "web"})
    notes = tmp_path / "notes"
    wait_for(lambda: any(what == "started:h" for what, _ in notes_of(notes)), timeout_s=90,
             what="the slow call to start on the server")
    first.kill()
    first.wait(10)
    http_server()  # the same port again: the next attempt opens a new session to it
    done = client.wait(task.id, timeout_s=120)
    assert done.status is TaskStatus.SUCCEEDED, done.error
    assert [what for what, _ in notes_of(notes)].count("finished:h") == 1


def test_a_call_that_hangs_past_the_servers_timeout_is_retried_then_dead_lettered(
        make_runtime: Callable[..., Runtime], tmp_path: Path) -> None:
    notes = tmp_path / "notes"
    server = {**stdio_server(notes), "timeout_s": 6}
    retry = RetryPolicy(max_attempts=2, initial_backoff_s=0.1, max_backoff_s=0.2)
    rt = make_runtime(["tests.apps.mcp_apps"], mcp_servers={"notes": server},
                      tools=ToolSettings(retry=retry))
    client = rt.client()
    task = client.submit("slow_note", {"text": "stuck", "seconds": 60})
    done = client.wait(task.id, timeout_s=120)
    assert done.status is TaskStatus.FAILED
    assert "notes.slow_note" in (done.error or "") and "dead letter" in (done.error or "")
    (letter,) = [d for d in rt.ops().dead_letters(tool="notes.slow_note") if d.task_id == task.id]
    assert letter.attempts == 2 and letter.args == {"text": "stuck", "seconds": 60}
    # Each attempt started the call on a server of its own (the hung session was dropped).
    starts = [pid for what, pid in notes_of(notes) if what == "started:stuck"]
    assert len(starts) == 2 and len(set(starts)) == 2, starts
