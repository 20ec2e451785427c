"""Pydantic AI agents made durable by raysquad, on a real runtime: the worker running the agent is
SIGKILLed after its first tool call, and the resumed run makes no recorded call again."""

from __future__ import annotations

import os
import signal
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from runtime import Runtime, TaskStatus
from tests.conftest import wait_for
from tests.faults import recorded_keys

MODEL_1 = "pai:calculator__model.request@1"
ADD = "pai:calculator__function_toolset__<agent>.call_tool:add@1/c1"
MODEL_2 = "pai:calculator__model.request@2"


def effects(directory: Path) -> list[tuple[str, int]]:
    path = directory / "effects"
    if not path.exists():
        return []
    return [(what, int(pid)) for what, pid in
            (line.split() for line in path.read_text().splitlines())]


def test_a_killed_worker_resumes_the_agent_without_repeating_recorded_calls(
        make_runtime: Callable[..., Runtime], tmp_path: Path) -> None:
    rt = make_runtime(["tests.apps.pai"])
    client = rt.client()
    task = client.submit("calculate", {"dir": str(tmp_path)})
    database = Path(rt.settings.database_path)
    wait_for(lambda: ADD in recorded_keys(database).get(task.id, set()), timeout_s=90,
             what="the agent's tool call to be recorded")
    wait_for(lambda: any(what == "model:2" for what, _ in effects(tmp_path)), timeout_s=60,
             what="the second model request to start")
    (_, worker_pid), = [e for e in effects(tmp_path) if e[0] == "model:2"]
    os.kill(worker_pid, signal.SIGKILL)  # the worker running the agent, mid-request
    (tmp_path / "gate").touch()
    done = client.wait(task.id, timeout_s=120)
    assert done.status is TaskStatus.SUCCEEDED, done.error
    assert done.output["output"] == "the sum is 5"
    made = Counter(what for what, _ in effects(tmp_path))
    # Recorded before the kill, made once: the first model request and the tool call. The request
    # in flight at the kill was not recorded, so it was made again.
    assert made == {"model:1": 1, "add": 1, "model:2": 2}, made
    assert {MODEL_1, ADD, MODEL_2, "pai:run_id"} <= recorded_keys(database)[task.id]
    assert client.get(task.id).runs == 2


def test_an_agent_on_raysquads_engine_and_tools(make_runtime: Callable[..., Runtime],
                                                tmp_path: Path) -> None:
    """``RaysquadModel`` (the simulated engine's policy: it calls the offered tool, then answers)
    and ``raysquad_tools`` (run on the tool executors); the model's tokens are the task's usage."""
    rt = make_runtime(["tests.apps.pai"])
    client = rt.client()
    task = client.submit("count", {"dir": str(tmp_path), "text": "durable agents"})
    done = client.wait(task.id, timeout_s=120)
    assert done.status is TaskStatus.SUCCEEDED, done.error
    keys = recorded_keys(Path(rt.settings.database_path))[task.id]
    assert "pai:counter__model.request@1" in keys and "pai:counter__model.request@2" in keys
    assert any(k.startswith("pai:counter__function_toolset__raysquad.call_tool:count_letters")
               for k in keys), keys
    assert done.tokens_used > 0 and list(done.usage) == [rt.settings.default_model]
