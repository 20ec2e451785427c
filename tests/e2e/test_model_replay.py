"""A dead-lettered model call replayed on another model against a real `raysquad up`: over HTTP
(``POST /v1/dead-letters/{id}/replay`` with ``{"model": ...}``) and with the CLI over Ray
(``raysquad replay ID --model M``) and over HTTP (``--url``); each task that failed at the call
resumes past it.

Its own server (tests.apps.models, the simulated engine scripted so that a model named
``flaky...`` fails every request), since the script would change every model call of the shared one.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import wait_for
from tests.e2e.live import TASK_TIMEOUT_S, no_server_error, raysquad_up
from tests.e2e.test_cli import assert_one_line_error, cli

ENV = {"RAYSQUAD_SIMULATED__SCRIPT": "tests.apps.scripts:flaky_models_fail",
       "RAYSQUAD_MODELS": '["flaky-2"]',
       "RAYSQUAD_RETRY": json.dumps({"max_attempts": 2, "initial_backoff_s": 0.01,
                                     "max_backoff_s": 0.02})}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, str]]:
    """The server's URL, its folder and its Ray address (for the CLI over Ray)."""
    workdir = tmp_path_factory.mktemp("models")
    with raysquad_up(workdir, "tests.apps.models", **ENV) as url:
        yield url, workdir, (workdir / "state" / "ray_address").read_text()


def client(url: str, key: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60,
                        event_hooks={"response": [no_server_error]})


def ended(http: httpx.Client, task_id: str) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        task: dict[str, Any] = http.get(f"/v1/tasks/{task_id}").json()
        return task if task["status"] in ("succeeded", "failed", "cancelled") else None

    found: dict[str, Any] = wait_for(done, timeout_s=TASK_TIMEOUT_S, interval_s=0.2,
                                     what=f"task {task_id} to end")
    return found


def failed_with_letter(http: httpx.Client, workflow: str, question: str) -> tuple[str, dict[str, Any]]:
    """Submit a task whose model call runs out of models; (its id, its dead letter as listed)."""
    task_id = http.post("/v1/tasks", json={"workflow": workflow,
                                           "input": {"question": question}}).json()["id"]
    task = ended(http, task_id)
    assert task["status"] == "failed" and "ModelFailed" in task["error"], task
    (letter,) = [d for d in http.get("/v1/dead-letters", params={"limit": 500}).json()
                 if d["task_id"] == task_id]
    assert letter["tool"] == "llm:flaky" and letter["status"] == "dead"
    assert letter["id"] in task["error"]
    return task_id, letter


def test_a_model_calls_dead_letter_replayed_on_another_model_over_http(
        server: tuple[str, Path, str]) -> None:
    url, _, _ = server
    with client(url, "key-a") as a, client(url, "key-b") as b:
        task_id, letter = failed_with_letter(a, "fragile", "over http")
        replay = f"/v1/dead-letters/{letter['id']}/replay"
        assert letter["args"]["models"] == ["flaky", "flaky-2"]

        assert b.post(replay, json={"model": "steady"}).status_code == 404  # another tenant's
        unknown = a.post(replay, json={"model": "no-such-model"})
        assert unknown.status_code == 404 and unknown.json()["error"]["type"] == "ModelNotFound"
        assert a.post(replay, json={"modle": "steady"}).status_code == 422
        assert a.get(f"/v1/tasks/{task_id}").json()["status"] == "failed"  # nothing ran

        done = a.post(replay, json={"model": "steady"})
        assert done.status_code == 200, done.text
        assert done.json()["status"] == "replayed" and done.json()["result"]["model"] == "steady"
        task = ended(a, task_id)
        assert task["status"] == "succeeded", task
        assert task["output"] == {"before": "done", "answer": "steady answers: over http",
                                  "model": "steady"}


def test_a_model_calls_dead_letter_replayed_on_another_model_with_the_cli(
        server: tuple[str, Path, str]) -> None:
    url, workdir, address = server
    with client(url, "key-a") as a:
        task_id, letter = failed_with_letter(a, "ask_stubborn", "over ray")
        assert letter["step_key"] == "agent:stubborn/llm"

        assert_one_line_error(cli("replay", letter["id"], "--model", "no-such-model",
                                  "--address", address, cwd=workdir), 1,
                              "no engine serves model 'no-such-model'")
        replayed = cli("replay", letter["id"], "--model", "steady", "--address", address,
                       cwd=workdir)
        assert replayed.returncode == 0, replayed.stderr
        assert f"{letter['id']} replayed" in replayed.stdout
        task = ended(a, task_id)
        assert task["status"] == "succeeded", task
        assert task["output"] == {"reply": "steady answers: over ray"}


def test_dead_letters_listed_and_replayed_with_the_cli_over_http(
        server: tuple[str, Path, str]) -> None:
    """`raysquad dead-letters --url` lists the key's tenant's letters (another tenant's key sees
    none of them); `raysquad replay ID --model M --url` runs one again over HTTP."""
    url, workdir, _ = server
    with client(url, "key-a") as a:
        task_id, letter = failed_with_letter(a, "fragile", "with the cli over http")
        listed = cli("dead-letters", "--status", "dead", "--tool", "llm:flaky", "--limit", "500",
                     "--url", url, "--api-key", "key-a", cwd=workdir)
        assert listed.returncode == 0, listed.stderr
        assert letter["id"] in listed.stdout
        other = cli("dead-letters", "--url", url, "--api-key", "key-b", cwd=workdir)
        assert other.returncode == 0 and letter["id"] not in other.stdout, other.stdout

        assert_one_line_error(cli("replay", letter["id"], "--model", "steady", "--url", url,
                                  "--api-key", "key-b", cwd=workdir), 1, letter["id"])
        replayed = cli("replay", letter["id"], "--model", "steady", "--url", url,
                       "--api-key", "key-a", cwd=workdir)
        assert replayed.returncode == 0, replayed.stderr
        assert f"{letter['id']} replayed" in replayed.stdout
        assert ended(a, task_id)["status"] == "succeeded"
