"""Pydantic AI agents made durable by raysquad, on a real runtime: the worker running the agent is
SIGKILLed after its first tool call, and the resumed run makes no recorded call again."""

from __future__ import annotations

import asyncio
import os
import signal
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from runtime import Runtime, TaskStatus
from runtime.core.config import SimulatedEngineConfig
from runtime.llm.engine import find_engines
from tests.conftest import wait_for
from tests.faults import Kind, kill, pick, recorded_keys

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


def test_an_agent_on_raysquads_engine_and_tools_resumes_after_its_worker_is_killed(
        make_runtime: Callable[..., Runtime], tmp_path: Path) -> None:
    """``RaysquadModel`` (the simulated engine's policy: it calls the offered tool, then answers;
    each answer takes a second here) and ``raysquad_tools`` (run on the tool executors). The worker
    is SIGKILLed while the second model request runs: the first request and the tool call, recorded,
    are not made again (counted at the engine and at the executors); the model's tokens are the
    task's usage."""
    rt = make_runtime(["tests.apps.pai"], simulated=SimulatedEngineConfig(ttft_s=1.0, tpot_s=0.0))
    client = rt.client()
    task = client.submit("count", {"dir": str(tmp_path), "text": "durable agents"})
    database = Path(rt.settings.database_path)
    tool_key = "pai:counter__function_toolset__raysquad.call_tool:count_letters@1/"
    wait_for(lambda: any(k.startswith(tool_key) for k in recorded_keys(database).get(task.id, ())),
             timeout_s=90, what="the agent's tool call to be recorded")
    owner = client.get(task.id).owner
    victim = pick(Kind.WORKER, rt.settings.namespace, prefer=f"worker:{owner}")
    assert victim is not None and victim.name == f"worker:{owner}"
    kill(victim)
    done = client.wait(task.id, timeout_s=120)
    assert done.status is TaskStatus.SUCCEEDED, done.error
    keys = recorded_keys(database)[task.id]
    assert {"pai:counter__model.request@1", "pai:counter__model.request@2"} <= keys
    engines = find_engines(rt.settings.namespace)
    requests = sum(len(asyncio.run(h.timeline())) for hs in engines.values() for h in hs)
    assert requests in (2, 3), requests  # the second again if the kill caught it in flight
    tool_calls = sum(asyncio.run(h.stats())["upstream_calls"].get("count_letters", 0)
                     for h in rt.tool_executors)
    assert tool_calls == 1
    assert done.tokens_used > 0 and list(done.usage) == [rt.settings.default_model]
    assert done.runs == 2
