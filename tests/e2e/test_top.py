"""`raysquad top` in a real terminal: a tmux pane on the shared server's cluster, over Ray and over
HTTP (`--url`, an operator's key), with a known load (three tasks held at a gate), captured until
the numbers show it; the capture is saved."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.conftest import ROOT, wait_for
from tests.e2e.live import Api, SharedServer

HELD = 3


def capture(session: str) -> str:
    return subprocess.run(["tmux", "capture-pane", "-p", "-t", session], capture_output=True,
                          text=True, check=True).stdout


def head_row(screen: str) -> list[str] | None:
    """The numbers under the header (queued, claimed, workers, running, ...)."""
    lines = screen.splitlines()
    for i, line in enumerate(lines):
        if "queued" in line and "running" in line:
            for row in lines[i + 1:i + 4]:
                numbers = re.findall(r"\b(\d+|down)\b", row)
                if len(numbers) >= 4:
                    return numbers
    return None


def status_row(screen: str) -> dict[str, int] | None:
    """The tasks by status, from the row under "queued running waiting succeeded ..."."""
    lines = screen.splitlines()
    for i, line in enumerate(lines):
        if "succeeded" in line and "cancelled" in line:
            names = re.findall(r"[a-z]+", line)[:6]
            for row in lines[i + 1:i + 3]:
                numbers = re.findall(r"\b(\d+)\b", row)
                if len(numbers) >= 6:
                    return dict(zip(names, map(int, numbers[:6]), strict=True))
    return None


@pytest.mark.parametrize("over", ["ray", "http"])
def test_top_shows_a_known_load_in_a_tmux_pane(api: Api, shared_server: SharedServer,
                                               tmp_path: Path, over: str) -> None:
    address = (shared_server.workdir / "state" / "ray_address").read_text()
    where = (f"--address {shlex.quote(address)}" if over == "ray"
             else f"--url {shlex.quote(api.url)} --api-key key-a")
    client = api.client("key-a")
    ids = [client.post("/v1/tasks", json={"workflow": "five_steps", "input": {
        "dir": str(api.dir), "steps": 2, "gate_at": 1}}).json()["id"] for _ in range(HELD)]
    session = f"top-{uuid.uuid4().hex[:8]}"
    command = (f"cd {shlex.quote(str(tmp_path))} && env PYTHONPATH={shlex.quote(str(ROOT))} "
               f"RAY_ADDRESS= {shlex.quote(sys.executable)} -m serve.cli top {where} --interval 0.5")
    # The pane's own size: a COLUMNS or LINES inherited from the test runner would override it.
    env = {**{k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")},
           "TERM": "xterm-256color"}
    try:
        wait_for(lambda: all((api.dir / f"{i}.at_gate").exists() for i in ids), timeout_s=90,
                 what="the tasks to reach their gate")
        subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "200", "-y", "60",
                        command], check=True, env=env)
        try:
            row = wait_for(lambda: (r := head_row(capture(session))) and r[3] == str(HELD) and r,
                           timeout_s=90, what=f"top to show {HELD} running tasks")
        except AssertionError as e:
            raise AssertionError(f"{e}; the pane shows:\n{capture(session)}") from None
        screen = capture(session)
        (tmp_path / f"top-{over}.txt").write_text(screen)
        assert row[0] == "0"  # nothing queued: the three are running, held at their gate
        assert "agent role" in screen and "model" in screen and "gate" in screen
        assert ("namespace raysquad" if over == "ray" else api.url) in screen
        # The tasks by status: the three held are running (tenant-a's over HTTP, every tenant's
        # over Ray: the shared server's other tasks have ended), none queued.
        counts = status_row(screen)
        assert counts is not None, screen
        assert counts["running"] == HELD and counts["queued"] == 0, screen
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
        for i in ids:
            (api.dir / f"{i}.open").touch()
