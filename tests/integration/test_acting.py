"""A declared agent on a real runtime (simulated engine): its loop calls each tool through the tool
executors, and its answer fits its output type."""

from __future__ import annotations

import shutil
from collections.abc import Callable

from runtime import Runtime, TaskStatus
from tests.apps.acting import Resolution, effects_dir


def test_a_declared_agent_picks_its_tools_and_answers_in_its_output_type(
        make_runtime: Callable[..., Runtime]) -> None:
    rt = make_runtime(["tests.apps.acting"])
    client = rt.client()
    task = client.submit("resolve", {"problem": "order 17 arrived broken; refund 20 please"})
    try:
        done = client.wait(task.id, timeout_s=120)
        assert done.status is TaskStatus.SUCCEEDED, done.error
        assert Resolution.model_validate(done.output)
        lines = (effects_dir(task.id) / "effects").read_text().split()
        assert lines[0::2] == ["find_order", "refund", "notify"]  # each once, in the model's order
        turns = [e.data for e in client.events(task.id) if e.kind == "agent"]
        assert [t["tool"] for t in turns if "tool" in t] == ["find_order", "refund", "notify"]
        assert turns[-1]["answer"] is True and turns[-1]["turn"] == 4
    finally:
        shutil.rmtree(effects_dir(task.id), ignore_errors=True)
