"""The `raysquad up` servers the end-to-end tests run, and the one they share.

Starting a server costs most of a minute on two cores, so the HTTP suites (test_http, test_http_fuzz,
test_http_ops) share one: both test apps, tenant-a as admin, loopback reachable by http_fetch. It is
started by the first module that asks for ``api`` and stopped after the last module in a row that
does (tests/e2e/conftest.py); its tests check only their own tasks, by id or by before/after.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

from tests.conftest import ROOT, wait_for

API_KEYS = {"key-a": "tenant-a", "key-b": "tenant-b"}
MAX_BODY_BYTES = 65_536
TASK_TIMEOUT_S = 90.0
TENANT_PRIORITIES = {"tenant-b": [-5, 100]}  # tenant-a has the default, 0 to 10
STREAM_MAX_S = 8.0


# -- the server ---------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def _stop(proc: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    """SIGTERM, then the whole process tree if it is still there after ``timeout_s``."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        try:
            parent = psutil.Process(proc.pid)
            tree = [*parent.children(recursive=True), parent]
        except psutil.NoSuchProcess:
            tree = []
        for p in tree:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(tree, timeout=30)
        proc.wait(timeout=30)


SERVER_PIDS: dict[str, int] = {}  # base URL -> pid of its `raysquad up` process


@contextmanager
def raysquad_up(workdir: Path, app: str | list[str] = "tests.apps.basic",
                **env: str) -> Iterator[str]:
    """Run `raysquad up --app APP...` in ``workdir``; yields its base URL once /healthz answers.

    ``env`` adds RAYSQUAD_* settings to the defaults below (two API keys, short leases, a 64 KiB body
    limit). Output goes to ``workdir/up.log`` (a pipe could fill up and stall the server).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    full_env = {
        **os.environ, "PYTHONPATH": str(ROOT), "RAY_ADDRESS": "",
        "RAYSQUAD_API_KEYS": json.dumps(API_KEYS), "RAYSQUAD_LEASE_S": "5",
        "RAYSQUAD_SWEEP_INTERVAL_S": "0.2", "RAYSQUAD_MAX_BODY_BYTES": str(MAX_BODY_BYTES),
        "RAYSQUAD_TENANT_PRIORITIES": json.dumps(TENANT_PRIORITIES),
        "RAYSQUAD_STREAM_MAX_S": str(STREAM_MAX_S), "RAYSQUAD_TOOLS__EXECUTORS": "1",
        "RAYSQUAD_RAY_INCLUDE_DASHBOARD": "false", **env,
    }
    log_path = workdir / "up.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "serve.cli", "up",
             *(arg for a in ([app] if isinstance(app, str) else app) for arg in ("--app", a)),
             "--data-dir", str(workdir / "state"), "--port", str(port)],
            cwd=workdir, env=full_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: proc.poll() is not None or _healthy(url), timeout_s=180,
                 interval_s=0.25, what="raysquad up to answer /healthz")
        assert proc.poll() is None, f"raysquad up exited early:\n{log_path.read_text()}"
        SERVER_PIDS[url] = proc.pid
        yield url
    finally:
        _stop(proc)


@dataclass
class Api:
    url: str
    dir: Path  # where test workflows write their side effects and look for gate files
    clients: list[httpx.Client] = field(default_factory=list)

    def client(self, key: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        c = httpx.Client(base_url=self.url, headers=headers, timeout=30,
                         event_hooks={"response": [no_server_error]})
        self.clients.append(c)
        return c


def no_server_error(response: httpx.Response) -> None:
    """Response hook on every client: a 5xx fails the test, whatever the request was."""
    if response.status_code >= 500:
        response.read()
        raise AssertionError(f"{response.request.method} {response.request.url} answered "
                             f"{response.status_code}: {response.text[:2000]}")


# The shared server's own settings, on top of raysquad_up's defaults.
SHARED_APPS = ["tests.apps.basic", "tests.apps.tools", "tests.apps.events"]
# Standard Webhooks secrets of the "docs" source: the current one and the one being rotated out.
WEBHOOK_SECRETS = ["whsec_" + base64.b64encode(b"docs-source-secret-number-one!!").decode(),
                   "whsec_" + base64.b64encode(b"docs-source-secret-number-two!!").decode()]
SHARED_ENV = {"RAYSQUAD_ADMIN_TENANTS": '["tenant-a"]',
              "RAYSQUAD_TOOLS__HTTP_ALLOW_NETWORKS": '["127.0.0.1/32"]',
              "RAYSQUAD_TOOLS__HTTP_ALLOW_PORTS": '["1024-65535"]',
              "RAYSQUAD_EVENT_POLL_S": "0.2",
              "RAYSQUAD_WEBHOOKS": json.dumps({"docs": {"topic": "docs.new", "tenant": "tenant-a",
                                                        "secrets": WEBHOOK_SECRETS}})}


class SharedServer:
    """The one shared `raysquad up`, started on first use."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._context: contextlib.AbstractContextManager[str] | None = None
        self.api: Api | None = None
        self.spans = workdir / "spans.jsonl"

    def get(self) -> Api:
        if self.api is None:
            # Every process of it exports its spans to self.spans (a JSON-lines file).
            self._context = raysquad_up(self.workdir, SHARED_APPS, **SHARED_ENV,
                                        RAYSQUAD_TRACING=f"file:{self.spans}")
            url = self._context.__enter__()
            side = self.workdir / "side"
            side.mkdir(exist_ok=True)
            self.api = Api(url, side)
        return self.api

    def stop(self) -> None:
        if self.api is not None:
            for c in self.api.clients:
                c.close()
        if self._context is not None:
            self._context.__exit__(None, None, None)
        self._context, self.api = None, None
