"""The README's "Your first app", run as printed: its files written into an empty folder, its
commands run there one after the other in one shell (so `cd` and `ID=$(...)` carry over), without
PYTHONPATH, with this checkout's `raysquad` first on PATH; every output line it documents must show.

A documented output line matches a line of what the command printed, ``...`` standing for anything.
`raysquad up`, marked "in a second terminal", runs beside the others until the last command has
run; it is then stopped as Ctrl-C stops it, and must say so. (Its Ray dashboard is off: the only
setting made here, to spare two cores.)
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, wait_for

COMMAND_TIMEOUT_S = 240
BACKGROUND = "# in a second terminal"


@dataclass
class Command:
    line: str
    expected: list[str] = field(default_factory=list)


@dataclass
class Block:
    kind: str  # "file" or "console"
    name: str = ""
    text: str = ""
    commands: list[Command] = field(default_factory=list)


def first_app_blocks(readme: str) -> list[Block]:
    """The section's code blocks, in order: files (a python block whose first line is
    ``# name.py``) and console sessions (``$ command`` lines, each followed by its output)."""
    section = readme.split("## Your first app\n", 1)[1].split("\n## ", 1)[0]
    blocks = []
    for lang, body in re.findall(r"```(\w+)\n(.*?)```", section, flags=re.DOTALL):
        if lang == "python":
            first, _, rest = body.partition("\n")
            assert first.startswith("# ") and first.endswith(".py"), f"a file block: {first!r}"
            blocks.append(Block("file", first[2:], rest))
        elif lang == "console":
            commands: list[Command] = []
            for line in body.splitlines():
                if line.startswith("$ "):
                    commands.append(Command(line[2:]))
                elif line.strip():
                    commands[-1].expected.append(line)
            blocks.append(Block("console", commands=commands))
    return blocks


def matches(expected: str, output: str) -> bool:
    """Whether a line of ``output`` is ``expected``, each ``...`` in it standing for anything."""
    pattern = ".*?".join(re.escape(part) for part in expected.strip().split("..."))
    return any(re.fullmatch(pattern, line.strip()) for line in output.splitlines())


class Shell:
    """One bash, fed a command at a time; stderr goes with stdout."""

    END = "__first_app_end__"

    def __init__(self, cwd: Path, env: dict[str, str]) -> None:
        self.timings: list[tuple[str, float]] = []
        self.proc = subprocess.Popen(["bash", "--noprofile", "--norc"], cwd=cwd, env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, bufsize=1)

    def run(self, line: str, timeout_s: float = COMMAND_TIMEOUT_S) -> tuple[int, str]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        # The marker goes on a line of its own, after output that may not end its last line.
        self.proc.stdin.write(f"{line}\nprintf '\\n{self.END} %s\\n' $?\n")
        self.proc.stdin.flush()
        out: list[str] = []
        timer = _Deadline(self.proc, timeout_s)
        started = time.monotonic()
        try:
            for text in self.proc.stdout:
                if text.startswith(self.END):
                    self.timings.append((line, time.monotonic() - started))
                    return int(text.split()[1]), "".join(out)
                out.append(text)
        finally:
            timer.cancel()
        raise AssertionError(f"the shell ended during {line!r}:\n{''.join(out)}")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)


class _Deadline:
    """Kill the shell if a command runs past its time (the read then ends)."""

    def __init__(self, proc: subprocess.Popen[str], timeout_s: float) -> None:
        import threading

        self._timer = threading.Timer(timeout_s, proc.kill)
        self._timer.start()

    def cancel(self) -> None:
        self._timer.cancel()


@pytest.fixture
def newcomer_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RAYSQUAD_", "RAY_", "PYTHON", "PYTEST_"))}
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}"
    env["RAYSQUAD_RAY_INCLUDE_DASHBOARD"] = "false"
    yield env


def healthy() -> bool:
    try:
        return httpx.get("http://127.0.0.1:8000/healthz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def test_the_readmes_first_app_runs_as_printed(tmp_path: Path,
                                                newcomer_env: dict[str, str]) -> None:
    blocks = first_app_blocks((ROOT / "README.md").read_text())
    assert [b.name for b in blocks if b.kind == "file"] == [
        "support_app.py", "drive.py", "test_support_app.py"]
    shell = Shell(tmp_path, newcomer_env)
    up: subprocess.Popen[bytes] | None = None
    up_log = tmp_path / "up.log"
    try:
        for block in blocks:
            if block.kind == "file":
                cwd = Path(shell.run("pwd")[1].strip())
                (cwd / block.name).write_text(block.text)
                continue
            for command in block.commands:
                if command.line.endswith(BACKGROUND):
                    cwd = Path(shell.run("pwd")[1].strip())
                    up = start_up(command.line, cwd, newcomer_env, up_log)
                    code, output = 0, up_log.read_text()
                else:
                    if command.line.startswith("pytest") and up is not None:
                        stop_up(up, up_log)  # a test starts a runtime of its own: one at a time
                        up = None
                    code, output = shell.run(command.line)
                assert code == 0, f"{command.line!r} exited {code}:\n{output}"
                for expected in command.expected:
                    assert matches(expected, output), (
                        f"{command.line!r} did not print {expected!r}; it printed:\n{output}")
                if command.line.startswith("python drive.py"):
                    # A driver script's terminal holds its own output, no Ray notices.
                    assert "raylet" not in output and "WARNING" not in output, output
    finally:
        if up is not None:
            stop_up(up, up_log)
        shell.close()
        print("\n".join(f"{seconds:6.1f}s  {line}" for line, seconds in shell.timings))


def start_up(line: str, cwd: Path, env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """`raysquad up` as in a second terminal: until it serves and says where."""
    with open(log_path, "wb") as log:
        # Ctrl-C reaches it as in a terminal: a test worker may run with SIGINT ignored, which its
        # children would inherit (Python then installs no KeyboardInterrupt).
        up = subprocess.Popen(["bash", "-c", line], cwd=cwd, env=env, stdout=log,
                              stderr=subprocess.STDOUT, start_new_session=True,
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    wait_for(lambda: up.poll() is not None or healthy(), timeout_s=180, interval_s=0.25,
             what="raysquad up to answer /healthz")
    assert up.poll() is None, f"raysquad up ended:\n{log_path.read_text()}"
    wait_for(lambda: "Status page at" in log_path.read_text(), timeout_s=30,
             what="raysquad up to print where it serves")
    return up


def stop_up(up: subprocess.Popen[bytes], log: Path) -> None:
    """Ctrl-C, as a person stops `raysquad up`; it says it is stopping, then that it stopped."""
    os.killpg(up.pid, signal.SIGINT)  # the terminal's process group, as Ctrl-C does
    try:
        up.wait(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(up.pid, signal.SIGKILL)
        up.wait(timeout=30)
        raise AssertionError(f"raysquad up did not stop on Ctrl-C:\n{log.read_text()}") from None
    text = log.read_text()
    assert "stopping:" in text and text.rstrip().endswith("stopped"), text
    assert "Traceback" not in text, text
