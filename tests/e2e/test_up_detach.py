"""A runtime that outlives its launcher, on a real `ray start --head` cluster of the test's own.

One test, in phases (each needs the one before):

1. `raysquad up` with detached actors (RAYSQUAD_DETACHED=true) is SIGKILLed by pid once it serves:
   tasks submitted before and after the kill complete, and the HTTP API still answers.
2. A second `raysquad up --detach` in the same namespace is refused with one line.
3. `raysquad down` stops the HTTP app and every actor: the names are free, the port is closed, and
   a second `down` says there is nothing to stop.
4. `raysquad up --detach` returns at once; `ray job submit --working-dir . -- python
   examples/driver.py Ada Grace` runs the driver as a Ray job: it succeeds, prints the greetings,
   and its tasks are in the Store. `raysquad down` again.
5. `serve deploy` of a config naming ``serve.deploy:app`` starts the runtime and serves it; `down`.
6. `up --detach` against an address where no cluster listens fails fast with one line.

The cluster is stopped by killing its processes by pid (never `ray stop`, which would stop every
Ray on the machine).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest

from tests.conftest import ROOT, wait_for
from tests.e2e.live import free_port

BIN = Path(sys.executable).parent
APP = "examples.hello"


@dataclass
class Head:
    address: str  # the GCS, for raysquad and Ray clients
    dashboard: str  # the job server, for `ray job submit`
    env: dict[str, str]
    temp_dir: Path
    log_dir: Path


def _cluster_processes(temp_dir: Path) -> list[psutil.Process]:
    """Every process of the cluster whose session lives under ``temp_dir``, with their children."""
    roots = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(str(temp_dir) in part for part in proc.info["cmdline"] or ()):
                roots.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    found = {p.pid: p for p in roots}
    for root in roots:
        try:
            found.update({c.pid: c for c in root.children(recursive=True)})
        except psutil.NoSuchProcess:
            continue
    return list(found.values())


@pytest.fixture
def head(tmp_path: Path) -> Iterator[Head]:
    # A short temp dir: Ray's socket paths must stay under the OS limit.
    temp_dir = Path(f"/tmp/rs-{uuid.uuid4().hex[:8]}")
    port, dashboard_port = free_port(), free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
           "RAY_ADDRESS": f"127.0.0.1:{port}", "RAYSQUAD_RAY_ADDRESS": f"127.0.0.1:{port}",
           "RAYSQUAD_DATA_DIR": str(tmp_path / "state"), "RAYSQUAD_HTTP_PORT": str(free_port()),
           "RAY_USAGE_STATS_ENABLED": "0"}
    started = subprocess.run(
        [str(BIN / "ray"), "start", "--head", f"--port={port}", "--num-cpus=2",
         f"--temp-dir={temp_dir}", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
         f"--dashboard-port={dashboard_port}", "--disable-usage-stats",
         # Ray's fixed defaults (52365, 10001) are another cluster's on this machine when the
         # suite runs in several processes; the job API needs this agent's own port.
         f"--dashboard-agent-listen-port={free_port()}", f"--ray-client-server-port={free_port()}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert started.returncode == 0, started.stdout + started.stderr
    try:
        yield Head(f"127.0.0.1:{port}", f"http://127.0.0.1:{dashboard_port}", env, temp_dir,
                   tmp_path)
    finally:
        procs = _cluster_processes(temp_dir)
        for proc in procs:
            try:
                proc.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(procs, timeout=30)
        shutil.rmtree(temp_dir, ignore_errors=True)


def raysquad(head: Head, *args: str, timeout: float = 180,
             **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "raysquad"), *args], cwd=ROOT, env={**head.env, **env},
                          capture_output=True, text=True, timeout=timeout)


def submit_job(head: Head, *entrypoint: str) -> subprocess.CompletedProcess[str]:
    """`ray job submit`, tried again while Ray answers that no dashboard agent can take a job yet
    (a 500 that asks to try later: the head's agent is still starting on a loaded machine)."""
    deadline = time.monotonic() + 120
    while True:
        job = subprocess.run(
            [str(BIN / "ray"), "job", "submit", "--address", head.dashboard, "--working-dir", ".",
             "--", *entrypoint],
            # `ray start` turned token auth on (a token is in ~/.ray/auth_token); Ray's job CLI
            # uses it only when told to.
            cwd=ROOT, env={**head.env, "RAY_AUTH_MODE": "token"}, capture_output=True, text=True,
            timeout=300)
        if "No available agent to submit job" not in job.stderr or time.monotonic() > deadline:
            return job
        time.sleep(1.0)  # the agent registers with the head on its own schedule


def one_line_error(result: subprocess.CompletedProcess[str], text: str) -> None:
    assert result.returncode != 0, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    ours = [x for x in result.stderr.splitlines() if x.strip() and "(raylet)" not in x]
    assert ours and ours[0].startswith("error:"), result.stderr
    assert text in " ".join(" ".join(ours).split()), result.stderr


def url_of(head: Head) -> str:
    return f"http://127.0.0.1:{head.env['RAYSQUAD_HTTP_PORT']}"


def ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=3).status_code == 200
    except httpx.TransportError:
        return False


def submit(http: httpx.Client, name: str) -> str:
    reply = http.post("/v1/tasks", json={"workflow": "hello", "input": {"name": name}})
    assert reply.status_code == 202, reply.text
    return str(reply.json()["id"])


def succeeded(http: httpx.Client, ids: list[str]) -> bool:
    try:
        return all(http.get(f"/v1/tasks/{t}").json()["status"] == "succeeded" for t in ids)
    except httpx.TransportError:
        return False


def port_closed(url: str) -> bool:
    host, port = url.removeprefix("http://").split(":")
    with socket.socket() as s:
        return s.connect_ex((host, int(port))) != 0


def launch_detached(head: Head, log_path: Path) -> subprocess.Popen[bytes]:
    """``raysquad up`` with detached actors, serving; once more on another port if the one chosen
    free was taken meanwhile by another process of this machine (it exits, saying so)."""
    for attempt in range(2):
        with open(log_path, "wb") as log:
            launcher = subprocess.Popen([str(BIN / "raysquad"), "up", "--app", APP], cwd=ROOT,
                                        env={**head.env, "RAYSQUAD_DETACHED": "true"},
                                        stdout=log, stderr=subprocess.STDOUT)
        def up_or_gone(p: subprocess.Popen[bytes] = launcher, url: str = url_of(head)) -> bool:
            return p.poll() is not None or ready(url)

        wait_for(up_or_gone, timeout_s=180, interval_s=0.5, what="the runtime to serve")
        said = log_path.read_text()
        if launcher.poll() is None or attempt or "Failed to bind to address" not in said:
            break
        head.env["RAYSQUAD_HTTP_PORT"] = str(free_port())
    assert launcher.poll() is None, f"raysquad up exited:\n{said}"
    return launcher


def test_a_detached_runtime_outlives_its_launcher_and_down_stops_it(head: Head) -> None:
    # 1. A launcher with detached actors, SIGKILLed once it serves.
    log_path = head.log_dir / "up.log"
    launcher = launch_detached(head, log_path)
    url = url_of(head)
    try:
        http = httpx.Client(base_url=url, timeout=30)
        before = [submit(http, n) for n in ("ada", "grace", "linus")]
        launcher.send_signal(signal.SIGKILL)
        launcher.wait(timeout=30)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    after = [submit(http, n) for n in ("barbara", "edsger")]
    wait_for(lambda: succeeded(http, before + after), timeout_s=120, interval_s=0.3,
             what="every task to succeed after the launcher died")
    assert http.get(f"/v1/tasks/{after[0]}").json()["output"]["greeting"] == "Hello, Barbara!"
    assert ready(url)

    # 2. One runtime per namespace.
    one_line_error(raysquad(head, "up", "--detach", "--app", APP), "already running")

    # 3. Down stops everything and frees the names and the port.
    stopped = raysquad(head, "down")
    assert stopped.returncode == 0 and "stopped the raysquad runtime" in stopped.stdout, (
        stopped.stdout + stopped.stderr)
    assert port_closed(url)
    again = raysquad(head, "down")
    assert again.returncode == 0 and "nothing to stop" in again.stdout, again.stdout + again.stderr

    # 4. Detached, then a driver script as a Ray job.
    started_at = time.monotonic()
    up = raysquad(head, "up", "--detach", "--app", APP)
    assert up.returncode == 0 and "(detached)" in up.stdout, up.stdout + up.stderr
    print(f"up --detach returned in {time.monotonic() - started_at:.1f}s")
    job = submit_job(head, "python", "examples/driver.py", "Ada", "Grace")
    assert job.returncode == 0, job.stdout + job.stderr
    assert "succeeded" in job.stdout and "Hello, Ada!" in job.stdout, job.stdout
    with sqlite3.connect(Path(head.env["RAYSQUAD_DATA_DIR"]) / "raysquad.db") as db:
        greeted = [row[0] for row in db.execute(
            "SELECT input FROM tasks WHERE workflow = 'hello' AND status = 'succeeded'")]
    assert sum('"Ada"' in x for x in greeted) == 1 and sum('"Grace"' in x for x in greeted) == 1
    assert raysquad(head, "down").returncode == 0

    # 5. The same from Ray Serve's side: `serve deploy` of a config naming serve.deploy:app.
    port = int(head.env["RAYSQUAD_HTTP_PORT"])
    config = head.log_dir / "serve.yaml"
    config.write_text(json.dumps({  # YAML is a superset of JSON
        "http_options": {"host": "127.0.0.1", "port": port},
        "applications": [{"name": "raysquad", "route_prefix": "/",
                          "import_path": "serve.deploy:app", "args": {"apps": [APP]}}]}))
    deployed = subprocess.run(
        [str(BIN / "serve"), "deploy", str(config), "--address", head.dashboard], cwd=ROOT,
        env={**head.env, "RAY_AUTH_MODE": "token"}, capture_output=True, text=True, timeout=120)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    wait_for(lambda: ready(url), timeout_s=180, interval_s=0.5, what="the Serve-deployed runtime")
    http = httpx.Client(base_url=url, timeout=30)
    served = submit(http, "margaret")
    wait_for(lambda: succeeded(http, [served]), timeout_s=120, interval_s=0.3,
             what="a task of the Serve-deployed runtime")
    stopped = raysquad(head, "down")
    assert "its HTTP app" in " ".join(stopped.stdout.split()), stopped.stdout + stopped.stderr
    assert "Deleting app" not in stopped.stderr  # Serve's own log stays off the user's terminal
    assert port_closed(url)

    # 6. No cluster at the address: one line, at once.
    started_at = time.monotonic()
    one_line_error(raysquad(head, "up", "--detach", "--address", f"127.0.0.1:{free_port()}"),
                   "no Ray cluster answered")
    assert time.monotonic() - started_at < 30
