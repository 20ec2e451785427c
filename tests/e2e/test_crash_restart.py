"""`raysquad up` killed hard with tasks in flight, then started again at once in the same folder on
the same port: it comes back (HTTP included) and every task succeeds, no completed step run again.

The crash is what a power cut or the OOM killer does to a laptop: SIGKILL to the process group of
`raysquad up`, then to every process of the Ray cluster it started (what `ray stop --force` does,
limited to that cluster: `ray stop` would also stop the test session's own cluster). The second
`raysquad up` starts without waiting for the old processes to be reaped, so the API port and the
Store's lock may still be held for a moment as it starts.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from tests.conftest import ROOT, count_lines, wait_for
from tests.e2e.live import free_port

BIN = Path(sys.executable).parent
TASKS = 6
LOGS: dict[int, Path] = {}  # each `raysquad up` started here: its output


@pytest.fixture
def ray_tmp() -> Iterator[Path]:
    # A short temp dir of the test's own (Ray's socket paths must stay under the OS limit): every
    # process of the clusters started here names it on its command line.
    path = Path(f"/tmp/rc-{uuid.uuid4().hex[:8]}")
    path.mkdir()
    try:
        yield path
    finally:
        _kill(_processes_under(path))
        shutil.rmtree(path, ignore_errors=True)


def _processes_under(temp_dir: Path, roots: tuple[int, ...] = ()) -> list[psutil.Process]:
    """The processes whose command line names ``temp_dir`` or that descend from ``roots``, with
    all their descendants (Ray's workers rename themselves, so they are found as children)."""
    found: dict[int, psutil.Process] = {}
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if proc.pid in roots or any(str(temp_dir) in part for part in proc.info["cmdline"] or ()):
                found[proc.pid] = proc
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    for proc in list(found.values()):
        try:
            found.update({c.pid: c for c in proc.children(recursive=True)})
        except psutil.NoSuchProcess:
            continue
    return list(found.values())


def _kill(procs: list[psutil.Process]) -> None:
    for proc in procs:
        try:
            proc.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass


def _up(folder: Path, port: int, ray_tmp: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_TMPDIR": str(ray_tmp), "RAY_ADDRESS": "",
           "RAY_USAGE_STATS_ENABLED": "0", "RAYSQUAD_WORKERS": "2"}
    for name in ("RAYSQUAD_DATA_DIR", "RAYSQUAD_RAY_ADDRESS", "RAYSQUAD_STORE"):
        env.pop(name, None)
    path = folder / f"up-{uuid.uuid4().hex[:6]}.log"
    with open(path, "w") as log:  # the child has its own copy of the descriptor
        proc = subprocess.Popen(
            [str(BIN / "raysquad"), "up", "--app", "tests.apps.basic", "--port", str(port),
             "--no-dashboard"], cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT,
            text=True, start_new_session=True)
    LOGS[proc.pid] = path
    return proc


HOLD = ("import socket, sys, time; s = socket.socket(); "
        "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); "
        "s.bind(('127.0.0.1', int(sys.argv[1]))); s.listen(); print('listening', flush=True); "
        "time.sleep(600)")


def _log_of(proc: subprocess.Popen[str]) -> str:
    return LOGS[proc.pid].read_text()


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=3).status_code == 200
    except httpx.TransportError:
        return False


def _statuses(url: str, ids: list[str]) -> dict[str, str]:
    try:
        return {t: httpx.get(f"{url}/v1/tasks/{t}", timeout=5).json()["status"] for t in ids}
    except (httpx.TransportError, KeyError, ValueError):
        return {}


def test_up_after_a_hard_crash_comes_back_on_the_same_port(tmp_path: Path, ray_tmp: Path) -> None:
    folder, side = tmp_path / "app", tmp_path / "effects"
    folder.mkdir()
    side.mkdir()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    first = _up(folder, port, ray_tmp)
    second: subprocess.Popen[str] | None = None
    try:
        wait_for(lambda: _ready(url), timeout_s=240, interval_s=0.5, what="the first runtime")
        ids = []
        for _ in range(TASKS):
            reply = httpx.post(f"{url}/v1/tasks", json={
                "workflow": "five_steps", "input": {"dir": str(side), "sleep_s": 0.5}}, timeout=10)
            assert reply.status_code == 202, reply.text
            ids.append(reply.json()["id"])

        database = folder / ".raysquad" / "raysquad.db"

        def mid_run() -> bool:
            with sqlite3.connect(database) as db:
                steps = db.execute("SELECT count(*) FROM steps").fetchone()[0]
                running = db.execute(
                    "SELECT count(*) FROM tasks WHERE status = 'running'").fetchone()[0]
            return steps >= 4 and running > 0

        wait_for(mid_run, timeout_s=120, interval_s=0.1, what="tasks part way through")

        # The crash: the launcher's process group, then every process of its Ray cluster.
        doomed = _processes_under(ray_tmp, roots=(first.pid,))
        os.killpg(first.pid, signal.SIGKILL)
        _kill(doomed)
        with sqlite3.connect(database) as db:
            recorded = db.execute("SELECT task_id, key FROM steps").fetchall()
        assert recorded

        # As `ray stop --force` does, wait until they have all ended; then at once, in the same
        # folder and on the same port, start again.
        _, alive = psutil.wait_procs(doomed, timeout=60)
        assert not alive, f"processes survived SIGKILL: {alive}"
        # A process of the old runtime that is slow to die still holds the port as `up` starts
        # (as the Serve replica did where this was first seen): `up` must wait for it, not fail.
        holder = subprocess.Popen([sys.executable, "-c", HOLD, str(port)], stdout=subprocess.PIPE,
                                  text=True)
        assert holder.stdout is not None and holder.stdout.readline().strip() == "listening"
        second = _up(folder, port, ray_tmp)
        try:
            wait_for(lambda: "waiting for it" in _log_of(second), timeout_s=120, interval_s=0.2,
                     what="up to see the port held and wait")
        finally:
            holder.kill()
            holder.wait()
        wait_for(lambda: _ready(url), timeout_s=240, interval_s=0.5,
                 what="the runtime started again after the crash")
        final = wait_for(lambda: (s := _statuses(url, ids)) and all(
            v in ("succeeded", "failed", "cancelled") for v in s.values()) and s,
            timeout_s=240, interval_s=0.5, what="every task to end")
        assert final == {task_id: "succeeded" for task_id in ids}, final
        for task_id, key in recorded:  # a step recorded before the crash never ran again
            assert count_lines(side / f"{task_id}.step{key[1:]}") == 1, (task_id, key)
        for task_id in ids:  # and every step ran: at most twice, for one interrupted by the kill
            for step in range(1, 6):
                assert 1 <= count_lines(side / f"{task_id}.step{step}") <= 2
        assert "Traceback" not in "".join(p.read_text() for p in folder.glob("up-*.log"))
    finally:
        if second is not None and second.poll() is None:
            second.send_signal(signal.SIGTERM)  # a clean stop: Serve's app, then the actors
            try:
                second.wait(timeout=60)
            except subprocess.TimeoutExpired:
                pass
        _kill(_processes_under(ray_tmp, roots=tuple(p.pid for p in (first, second) if p)))
        for log in folder.glob("up-*.log"):
            print(f"--- {log.name}\n{log.read_text()[-3000:]}")  # shown when the test fails
