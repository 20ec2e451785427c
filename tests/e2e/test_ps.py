"""`raysquad ps` against a real `raysquad up`: every actor with its pid; the pid it shows for one
role's replica, SIGKILLed, gets that role a new replica and the task it was handling a
`replica.replaced` and a `redelivered` event, and the task still succeeds."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import httpx
import psutil

from tests.conftest import wait_for
from tests.e2e.live import Api, SharedServer
from tests.e2e.test_cli import cli


def ps(cwd: Path, *where: str) -> list[dict[str, Any]]:
    result = cli("ps", "--json", *where, cwd=cwd)
    assert result.returncode == 0, result.stdout + result.stderr
    actors: list[dict[str, Any]] = json.loads(result.stdout)
    return actors


def alive(actors: list[dict[str, Any]], kind: str, role: str | None = None) -> list[dict[str, Any]]:
    return [a for a in actors if a["kind"] == kind and a["state"] == "ALIVE"
            and (role is None or a["role"] == role)]


def test_ps_shows_every_actor_and_a_killed_replica_is_replaced_and_its_message_redelivered(
        api: Api, shared_server: SharedServer, tmp_path: Path) -> None:
    a = api.client("key-a")
    task_id = a.post("/v1/tasks", json={"workflow": "agent_once",
                                        "input": {"dir": str(api.dir)}}).json()["id"]
    wait_for(lambda: (api.dir / f"{task_id}.slow_started").exists(), timeout_s=90,
             what="the slow agent to take the task's message")

    # Over HTTP (an operator's key) and over Ray, the same processes.
    actors = ps(tmp_path, "--url", api.url, "--api-key", "key-a")
    address = (shared_server.workdir / "state" / "ray_address").read_text()
    over_ray = ps(tmp_path, "--address", address)
    assert {a["name"] for a in actors} == {a["name"] for a in over_ray}
    for kind in ("store", "control", "worker", "agent", "tools", "serve"):
        assert alive(actors, kind), f"no live {kind} actor in {actors}"
    assert all(isinstance(a["pid"], int) and psutil.pid_exists(a["pid"]) for a in actors), actors
    (control,) = alive(actors, "control")
    assert "dispatcher" in control["hosts"] and "pool:slow" in control["hosts"]

    (replica,) = alive(actors, "agent", "slow")
    pid = replica["pid"]
    assert pid == int((api.dir / f"{task_id}.slow_pid").read_text())  # the process that holds it
    assert "AgentReplica(slow)" in " ".join(psutil.Process(pid).cmdline())  # its title says so
    os.kill(pid, signal.SIGKILL)

    def replaced() -> dict[str, Any] | None:
        now = alive(ps(tmp_path, "--url", api.url, "--api-key", "key-a"), "agent", "slow")
        return next((r for r in now if r["replica"] != replica["replica"]), None)

    new = wait_for(replaced, timeout_s=90, what="the slow role to get a new replica")
    assert new["pid"] != pid
    ended = ps(tmp_path, "--url", api.url, "--api-key", "key-a", "--all")
    assert any(x["replica"] == replica["replica"] and x["state"] == "DEAD" for x in ended)

    def events() -> list[dict[str, Any]]:
        return a.get(f"/v1/tasks/{task_id}/history").json()["items"]

    wait_for(lambda: any(e["kind"] == "redelivered" for e in events()), timeout_s=60,
             what="a redelivered event on the task")
    told = {e["kind"]: e for e in events() if e["kind"] in ("redelivered", "replica.replaced")}
    assert told["redelivered"]["role"] == "slow"
    assert told["redelivered"]["replica"] == replica["replica"]
    assert told["replica.replaced"]["old_replica"] == replica["replica"]
    assert told["replica.replaced"]["new_replica"] == new["replica"]

    (api.dir / f"{task_id}.open").touch()
    wait_for(lambda: a.get(f"/v1/tasks/{task_id}").json()["status"] == "succeeded", timeout_s=90,
             what="the task to succeed on the new replica")


def test_ps_needs_an_operators_key_over_http(api: Api, tmp_path: Path) -> None:
    result = cli("ps", "--url", api.url, "--api-key", "key-b", cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "may not GET /v1/actors: it is for operators" in result.stderr, result.stderr
    refused = httpx.get(f"{api.url}/v1/actors", headers={"Authorization": "Bearer key-b"})
    assert refused.status_code == 403 and "/v1/actors" in refused.json()["error"]["message"]
