"""Property-based run of the live server's own OpenAPI schema (schemathesis): for every operation,
generated requests, valid and invalid, never get a 5xx and every response matches the schema.

The server is a real `raysquad up`, seeded with tasks in each state (succeeded, failed, waiting,
running) so that task routes also answer with real records, not only 404s.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from tests.conftest import wait_for
from tests.e2e.test_http import raysquad_up

AUTH = "Bearer key-a"
# Workflows that write files where their input says, wait on gates, or allocate memory: the fuzzer
# learns loaded names from 404 messages, so a submission naming one of them runs `echo` instead,
# which takes any input and does nothing with it.
UNSAFE = {"five_steps", "flaky", "approval", "agent_once", "big_handoff"}
MAX_EXAMPLES = 40


@dataclass(frozen=True)
class Live:
    url: str
    task_ids: tuple[str, ...]  # tenant-a's tasks: succeeded, failed, waiting, running


def _seed(url: str, side: Path) -> tuple[str, ...]:
    with httpx.Client(base_url=url, headers={"Authorization": AUTH}, timeout=30) as c:
        def submit(workflow: str, input: dict[str, Any]) -> str:
            r = c.post("/v1/tasks", json={"workflow": workflow, "input": input})
            assert r.status_code == 202, r.text
            return str(r.json()["id"])

        def status(task_id: str) -> str:
            return str(c.get(f"/v1/tasks/{task_id}").json()["status"])

        seeded = {"succeeded": submit("echo", {"text": "seed"}),
                  "failed": submit("flaky", {"dir": str(side), "fail_times": 100, "attempts": 1}),
                  "waiting": submit("approval", {"dir": str(side)}),
                  "running": submit("five_steps", {"dir": str(side), "gate_at": 1})}
        for want, task_id in seeded.items():
            wait_for(lambda t=task_id, w=want: status(t) == w, timeout_s=90,  # type: ignore[misc]
                     what=f"seeded task {task_id} to be {want}")
        return tuple(seeded.values())


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    workdir = tmp_path_factory.mktemp("fuzz")
    side = workdir / "side"
    side.mkdir()
    with raysquad_up(workdir) as url:
        yield Live(url, _seed(url, side))


def _load_schema() -> Any:
    """The app's own OpenAPI document, built here at import so that pytest can make one test per
    operation; ``test_the_live_server_serves_this_schema`` checks that the server serves the same one.
    (schemathesis.pytest.from_fixture, which would load it from the server, fails on pytest 9:
    it sets ``request.node._nodeid``, which pytest 9 no longer has.)
    """
    from serve.http import app

    config = schemathesis.Config.from_dict({
        "request-timeout": 15,
        # The stateful phase chains calls through links the schema does not declare; the per-operation
        # phases (examples, coverage, fuzzing) cover every operation and parameter.
        "phases": {"stateful": {"enabled": False}},
    })
    return schemathesis.openapi.from_dict(app.openapi(), config=config)


schema = _load_schema()


def _steer(case: Any, live: Live) -> None:
    """Send tenant-a's key; aim some task routes at real tasks; keep submissions harmless.

    The choice of a real task is a pure function of the generated id, so a failure reproduces.
    The events stream is left on generated ids: on a real task that has not ended it would follow
    it for as long as it runs.
    """
    headers = {k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"}
    case.headers = {**headers, "Authorization": AUTH}
    params = case.path_parameters or {}
    task_id = params.get("task_id")
    if isinstance(task_id, str) and not case.path.endswith("/events"):
        pick = zlib.crc32(task_id.encode()) % (len(live.task_ids) + 1)
        if pick < len(live.task_ids):
            case.path_parameters = {**params, "task_id": live.task_ids[pick]}
    body = case.body
    if isinstance(body, dict) and body.get("workflow") in UNSAFE:
        case.body = {**body, "workflow": "echo"}


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
def test_no_server_errors_and_every_response_matches_the_schema(case: Any, live: Live) -> None:
    _steer(case, live)
    case.call_and_validate(base_url=live.url)


def test_the_live_server_serves_this_schema(live: Live) -> None:
    served = httpx.get(f"{live.url}/openapi.json", timeout=30)
    assert served.status_code == 200
    from serve.http import app

    assert served.json() == app.openapi()
