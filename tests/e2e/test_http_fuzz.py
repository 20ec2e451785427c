"""Property-based run of the live server's own OpenAPI schema with schemathesis: generated requests,
valid and invalid, to every operation never get a 5xx, and every response matches the schema.

The server is the real `raysquad up` the HTTP suites share (tests/e2e/live.py), seeded with tenant-a
tasks in each state (succeeded, failed, waiting, running). Schemathesis runs as its CLI
(`schemathesis run`), which loads the schema the server serves; this module doubles as its hooks
module (SCHEMATHESIS_HOOKS), see `before_call`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ROOT, wait_for
from tests.e2e.live import Api

AUTH = "Bearer key-a"
TASK_IDS_ENV = "RAYSQUAD_FUZZ_TASK_IDS"
# The contract under test: no 5xx; status code, content type, headers and body as documented;
# invalid input is refused.
CHECKS = ["not_a_server_error", "status_code_conformance", "content_type_conformance",
          "response_headers_conformance", "response_schema_conformance", "negative_data_rejection"]
MAX_EXAMPLES = 60  # per operation and round
# The run's time budget: with one, schemathesis keeps fuzzing in new rounds until it is spent
# (about 35 generated requests a second against this server on a 2-core machine).
MAX_TIME_S = 35


# -- hooks: run inside the schemathesis process -------------------------------------------------------

# Workflows that write files where their input says, wait on gates or allocate memory. A submission
# that names one of them runs `echo` instead, which takes any input and does nothing with it.
UNSAFE = {"five_steps", "flaky", "approval", "agent_once", "big_handoff",
          "fetch_loop", "fetch_once", "lookup_all"}


def steer(case: Any, task_ids: list[str]) -> None:
    """Aim some requests at real tasks and accepted submissions; keep every submission harmless.

    Each choice is a pure function of the generated value, so a failure replays the same way. The
    events stream never names a real task (schemathesis also reuses ids it saw in responses): on a
    task that has not ended, the stream rightly follows it for as long as it runs, which would time
    the request out; test_http.py covers streams of real tasks.
    """
    params = case.path_parameters or {}
    task_id = params.get("task_id")
    if isinstance(task_id, str) and case.path.endswith("/events"):
        case.path_parameters = {**params, "task_id": f"no-such-task-{task_id}"}
    elif task_ids and isinstance(task_id, str):
        pick = zlib.crc32(task_id.encode()) % (2 * len(task_ids))
        if pick < len(task_ids):
            case.path_parameters = {**params, "task_id": task_ids[pick]}
    body = case.body
    if isinstance(body, dict) and isinstance(body.get("workflow"), str):
        name = body["workflow"]
        if name in UNSAFE or (0 < len(name) <= 200 and zlib.crc32(name.encode()) % 3 == 0):
            case.body = {**body, "workflow": "echo"}


if os.environ.get(TASK_IDS_ENV) is not None:  # imported by `schemathesis run` as its hooks module
    import schemathesis

    @schemathesis.hook
    def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
        steer(case, [t for t in os.environ[TASK_IDS_ENV].split(",") if t])


# -- the test -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Live:
    url: str
    task_ids: tuple[str, ...]  # tenant-a's: succeeded, failed, waiting, running


def _seed(url: str, side: Path) -> tuple[str, ...]:
    with httpx.Client(base_url=url, headers={"Authorization": AUTH}, timeout=30) as c:
        def submit(workflow: str, input: dict[str, Any]) -> str:
            r = c.post("/v1/tasks", json={"workflow": workflow, "input": input})
            assert r.status_code == 202, r.text
            return str(r.json()["id"])

        def status(task_id: str) -> str:
            return str(c.get(f"/v1/tasks/{task_id}").json()["status"])

        seeded = {"succeeded": submit("echo", {"text": "seed"}),
                  "failed": submit("flaky", {"dir": str(side), "fail_times": 1000, "attempts": 1}),
                  "waiting": submit("approval", {"dir": str(side)}),
                  "running": submit("five_steps", {"dir": str(side), "gate_at": 1})}
        for want, task_id in seeded.items():
            def reached(t: str = task_id, w: str = want) -> bool:
                return status(t) == w
            wait_for(reached, timeout_s=90, what=f"seeded task {task_id} to be {want}")
        return tuple(seeded.values())


@pytest.fixture(scope="module")
def live(api: Api) -> Iterator[Live]:
    seeded = _seed(api.url, api.dir)
    yield Live(api.url, seeded)
    # Leave no work behind on the shared server: the running task's gate opens (else it holds a
    # worker slot for minutes, and `top` in a later test counts it).
    (api.dir / f"{seeded[-1]}.open").touch()


@dataclass(frozen=True)
class Problem:
    operation: str  # "POST /v1/tasks"
    code: str  # schemathesis's failure code, "ST103", or "error" for a request that got no response
    title: str


def run_schemathesis(live: Live, report_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SCHEMATHESIS_HOOKS": __name__,
           TASK_IDS_ENV: ",".join(live.task_ids)}
    cmd = [sys.executable, "-m", "schemathesis.cli", "run", f"{live.url}/openapi.json",
           "--header", f"Authorization: {AUTH}", "--checks", ",".join(CHECKS),
           "--phases", "examples,coverage,fuzzing", "--max-examples", str(MAX_EXAMPLES),
           "--max-time", str(MAX_TIME_S), "--request-timeout", "20", "--workers", "1",
           "--seed", "20261123", "--continue-on-failure", "--no-color",
           "--report", "ndjson", "--report-ndjson-path", str(report_dir / "events.ndjson")]
    return subprocess.run(cmd, cwd=report_dir, env=env, capture_output=True, text=True,
                          timeout=MAX_TIME_S + 120)


def problems(ndjson: Path) -> set[Problem]:
    """Failed checks and requests without a response, from the run's NDJSON event log."""
    found: set[Problem] = set()
    for line in ndjson.read_text().splitlines():
        event = json.loads(line)
        finished = event.get("ScenarioFinished")
        if not finished:
            continue
        recorder = finished.get("recorder") or {}
        if finished.get("status") == "error":
            found.add(Problem(str(recorder.get("label")), "error", "no response"))
        for checks in (recorder.get("checks") or {}).values():
            for check in checks:
                failure = (check.get("failure_info") or {}).get("failure") or {}
                if check.get("status") == "failure":
                    found.add(Problem(str(failure.get("operation") or recorder.get("label")),
                                      str(failure.get("code") or check.get("name")),
                                      str(failure.get("title"))))
    return found


def test_no_server_errors_and_every_response_matches_the_schema(live: Live, tmp_path: Path) -> None:
    done = run_schemathesis(live, tmp_path)
    output = done.stdout[-20_000:] + done.stderr[-5_000:]
    assert "Loaded specification" in done.stdout, output
    found = sorted(problems(tmp_path / "events.ndjson"), key=str)
    assert not found, f"{found}\n{output}"  # with `st replay ID` and curl lines for each in the output
    assert done.returncode == 0, output
