"""The `raysquad` command against a real `raysquad up` process: submit, follow, status, errors."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, wait_for
from tests.e2e.live import Api, SharedServer

RAYSQUAD = [sys.executable, "-m", "serve.cli"]


def cli(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_ADDRESS": "", "RAYSQUAD_API_KEY": "key-a"}
    return subprocess.run([*RAYSQUAD, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def printed_id(stdout: str) -> str:
    """The task id `submit` printed (Ray may add warnings of its own around it)."""
    ids = re.findall(r"^[0-9a-f]{32}$", stdout, flags=re.MULTILINE)
    assert len(ids) == 1, stdout
    return ids[0]


def assert_one_line_error(result: subprocess.CompletedProcess[str], code: int, text: str) -> None:
    assert result.returncode == code, result.stdout + result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    # Ray's raylet may warn on any driver's stderr; everything else must be our one error.
    ours = "\n".join(x for x in result.stderr.splitlines() if "(raylet)" not in x).strip()
    assert ours.startswith("error:"), result.stderr
    assert text in " ".join(ours.split()), result.stderr


def test_bad_input_is_refused_before_anything_runs(tmp_path: Path) -> None:
    assert_one_line_error(cli("submit", "echo", "--input", "{not json", cwd=tmp_path), 2,
                          "--input is not valid JSON")
    assert_one_line_error(cli("submit", "echo", "--input", "[1, 2]", cwd=tmp_path), 2,
                          "--input must be a JSON object")
    assert_one_line_error(cli("tasks", "--status", "sleeping", cwd=tmp_path), 2,
                          "--status must be one of queued, running")


@pytest.fixture(scope="module")
def runtime_up(api: Api, shared_server: SharedServer) -> tuple[Path, str, str]:
    """The HTTP suites' shared `raysquad up` (tests/e2e/live.py): where the test workflows write,
    its Ray address (for the CLI over Ray) and its URL (for --url, with tenant-a's key). Each test
    starts its own tasks and reads only those."""
    address = (shared_server.workdir / "state" / "ray_address").read_text()
    return api.dir, address, api.url


def test_submit_wait_status_and_tasks_against_a_running_runtime(
        runtime_up: tuple[Path, str, str]) -> None:
    cwd, address, url = runtime_up
    waited = cli("submit", "echo", "--input", '{"text": "hello from the cli"}', "--wait",
                 "--address", address, cwd=cwd)
    assert waited.returncode == 0, waited.stderr
    assert '"hello from the cli"' in waited.stdout
    assert "succeeded" in waited.stderr  # the progress bar's last state

    submitted = cli("submit", "five_steps", "--input", json.dumps({"dir": str(cwd)}), "--priority", "3",
                    "--address", address, cwd=cwd)
    assert submitted.returncode == 0, submitted.stderr
    task_id = printed_id(submitted.stdout)

    watched = cli("watch", task_id, "--address", address, cwd=cwd)
    assert watched.returncode == 0 and "succeeded" in watched.stdout
    status = cli("status", task_id, "--address", address, cwd=cwd)
    assert status.returncode == 0 and "five_steps" in status.stdout and "succeeded" in status.stdout
    listed = cli("tasks", "--address", address, cwd=cwd)
    assert listed.returncode == 0 and task_id in listed.stdout

    assert_one_line_error(cli("submit", "nope", "--address", address, cwd=cwd), 1,
                          "unknown workflow 'nope' (loaded: agent_once,")
    assert_one_line_error(cli("submit", "echo", "--input", '{"text": 5}', "--address", address, cwd=cwd),
                          1, "invalid input for workflow 'echo': text: Input should be a valid string")
    assert_one_line_error(cli("status", "0" * 32, "--address", address, cwd=cwd), 1,
                          f"no task with id '{'0' * 32}'")


def test_the_cli_over_http(runtime_up: tuple[Path, str, str]) -> None:
    cwd, _, url = runtime_up
    waited = cli("submit", "five_steps", "--input", json.dumps({"dir": str(cwd)}), "--wait",
                 "--url", url, cwd=cwd)
    assert waited.returncode == 0, waited.stderr
    assert '"done": 5' in waited.stdout
    assert "succeeded" in waited.stderr and "100%" in waited.stderr  # the bar, fed by SSE

    task_id = printed_id(cli("submit", "echo", "--input", '{"text": "over http"}', "--url", url,
                             cwd=cwd).stdout)
    watched = cli("watch", task_id, "--url", url, cwd=cwd)
    assert watched.returncode == 0 and "succeeded" in watched.stdout, watched.stderr
    status = cli("status", task_id, "--url", url, cwd=cwd)
    assert status.returncode == 0 and "succeeded" in status.stdout

    result = cli("result", task_id, "--url", url, cwd=cwd)
    assert result.returncode == 0 and '"over http"' in result.stdout, result.stderr
    assert task_id in cli("tasks", "--url", url, cwd=cwd).stdout
    assert_one_line_error(cli("cancel", task_id, "--url", url, cwd=cwd), 1,
                          f"cannot cancel task '{task_id}': it is succeeded")
    assert_one_line_error(cli("retry", task_id, "--url", url, cwd=cwd), 1,
                          f"cannot retry task '{task_id}': it is succeeded")

    # A task parked on a signal: the signal over HTTP resumes it.
    parked = printed_id(cli("submit", "approval", "--input", json.dumps({"dir": str(cwd)}),
                            "--url", url, cwd=cwd).stdout)
    wait_for(lambda: "waiting" in cli("status", parked, "--url", url, cwd=cwd).stdout,
             timeout_s=60, what="the approval task to park")
    sent = cli("signal", parked, "approve", "--payload", '{"by": "cli"}', "--url", url, cwd=cwd)
    assert sent.returncode == 0, sent.stderr
    approved = cli("result", parked, "--url", url, cwd=cwd)
    assert approved.returncode == 0 and '"by": "cli"' in approved.stdout, approved.stderr
    queued = printed_id(cli("submit", "approval", "--input", json.dumps({"dir": str(cwd)}),
                            "--url", url, cwd=cwd).stdout)
    cancelled = cli("cancel", queued, "--url", url, cwd=cwd)
    assert cancelled.returncode == 0 and "cancel" in cancelled.stdout, cancelled.stderr

    assert_one_line_error(cli("submit", "nope", "--url", url, cwd=cwd), 1,
                          "unknown workflow 'nope'")
    assert_one_line_error(cli("status", "f" * 32, "--url", url, cwd=cwd), 1,
                          f"no task with id '{'f' * 32}' (HTTP 404)")
    assert_one_line_error(cli("status", "x", "--url", "http://127.0.0.1:9", cwd=cwd), 1,
                          "cannot reach http://127.0.0.1:9")


def test_gates_and_dead_letters_from_the_cli(runtime_up: tuple[Path, str, str]) -> None:
    cwd, address, _ = runtime_up
    set_ = cli("gate", "api:search", "--requests", "5", "--interval-s", "60", "--address", address,
               cwd=cwd)
    assert set_.returncode == 0, set_.stderr
    assert '"requests": 5' in set_.stdout and '"interval_s": 60.0' in set_.stdout
    shown = cli("gates", "--address", address, cwd=cwd)
    assert shown.returncode == 0 and "api:search" in shown.stdout and "requests=5" in shown.stdout
    assert cli("gate", "api:search", "--remove", "--address", address, cwd=cwd).returncode == 0
    assert "api:search" not in cli("gates", "--address", address, cwd=cwd).stdout

    assert_one_line_error(cli("gate", "api:search", "--address", address, cwd=cwd), 2,
                          "give at least one of --requests, --tokens, --concurrency")
    assert_one_line_error(cli("gate", "api:search", "--requests", "0", "--address", address, cwd=cwd),
                          2, "requests: Input should be greater than or equal to 1")
    listed = cli("dead-letters", "--address", address, cwd=cwd)
    assert listed.returncode == 0 and "tool" in listed.stdout
    assert_one_line_error(cli("replay", "nope", "--address", address, cwd=cwd), 1,
                          "no dead letter with id 'nope'")
