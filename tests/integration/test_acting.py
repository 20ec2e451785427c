"""A declared agent on a real runtime (simulated engine): its loop calls each tool through the tool
executors, and its answer fits its output type.

The tests first in this module read only their own tasks and share one runtime; the others kill,
restart or reconfigure theirs."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from runtime import Runtime, TaskStatus
from runtime.core import refs
from runtime.core.config import SimulatedEngineConfig
from runtime.core.errors import NoApprovalWaiting
from runtime.llm.engine import find_engines
from tests.apps.acting import Resolution, effects_dir
from tests.conftest import wait_for
from tests.faults import Kind, kill, pick, query, recorded_keys


def test_a_declared_agent_picks_its_tools_and_answers_in_its_output_type(
        shared_runtime: Callable[..., Runtime]) -> None:
    rt = shared_runtime(["tests.apps.acting"])
    client = rt.client()
    task = client.submit("resolve", {"problem": "order 17 arrived broken; refund 20 please"})
    try:
        done = client.wait(task.id, timeout_s=120)
        assert done.status is TaskStatus.SUCCEEDED, done.error
        assert Resolution.model_validate(done.output)
        ran = [w for w in (effects_dir(task.id) / "effects").read_text().split()[0::2]
               if w != "refund_done"]
        assert ran == ["find_order", "refund", "notify"]  # each once, in the model's order
        turns = [e.data for e in client.events(task.id) if e.kind == "agent"]
        assert [t["tool_calls"] for t in turns if "tool_calls" in t] == [
            ["find_order"], ["refund"], ["notify"]]
        steps = [e.data["key"] for e in client.events(task.id) if e.kind == "step"]
        assert [k for k in steps if "/tool:" in k] == [
            "agent:support/tool:find_order", "agent:support/tool:refund", "agent:support/tool:notify"]
        assert turns[-1]["answer"] is True and turns[-1]["turn"] == 4
    finally:
        shutil.rmtree(effects_dir(task.id), ignore_errors=True)


def test_a_cancel_stops_the_agents_loop_at_its_next_call(shared_runtime: Callable[..., Runtime]) -> None:
    """Cancelled while the agent's second tool call runs: the task ends cancelled and the loop
    makes no call after the one in flight (the third tool never runs)."""
    rt = shared_runtime(["tests.apps.acting"])
    client, task, effects = start_until_the_second_tool_runs(rt)
    try:
        client.cancel(task.id)
        done = client.wait(task.id, timeout_s=60)
        assert done.status is TaskStatus.CANCELLED, (done.status, done.error, sorted(
            recorded_keys(Path(rt.settings.database_path))[task.id]),
            [(e.kind, e.data) for e in client.events(task.id)][-12:])
        wait_for(lambda: "refund_done" in effects.read_text(), timeout_s=30,
                 what="the tool call in flight to finish")
        # Nothing may follow it: without the cancel the next model call and the third tool take
        # milliseconds, so three seconds of polling is ample.
        assert stays_false(lambda: "notify" in effects.read_text(), 3.0), effects.read_text()
    finally:
        shutil.rmtree(effects_dir(task.id), ignore_errors=True)


def test_usage_adds_up_the_workflows_and_every_agents_calls(
        shared_runtime: Callable[..., Runtime]) -> None:
    rt = shared_runtime(["tests.apps.acting"])
    client = rt.client()
    task = client.submit("triage", {"problem": "order 17 arrived broken; refund 20 please"})
    try:
        done = client.wait(task.id, timeout_s=120)
        assert done.status is TaskStatus.SUCCEEDED, done.error
        # Every completion, as recorded: the workflow's chat, triage's turn, support's four.
        completions = [refs.loads(bytes(out)) for key, out in query(
            Path(rt.settings.database_path),
            f"SELECT key, output FROM steps WHERE task_id = '{task.id}'")
            if key.startswith("llm:") or key.rpartition("/")[2].startswith("llm")]
        assert len(completions) == 6, len(completions)
        (usage,) = done.usage.values()
        assert usage.prompt_tokens == sum(c.usage.prompt_tokens for c in completions)
        assert usage.completion_tokens == sum(c.usage.completion_tokens for c in completions)
    finally:
        shutil.rmtree(effects_dir(task.id), ignore_errors=True)


def test_a_denied_call_reaches_the_model_as_the_tools_result(
        shared_runtime: Callable[..., Runtime]) -> None:
    rt = shared_runtime(["tests.apps.acting"])
    client = rt.client()
    task = client.submit("cautious", {"problem": "order 18 lost: send 4000"})
    effects = effects_dir(task.id) / "effects"
    try:
        call_id = wait_for(lambda: waiting_call(client, task.id), timeout_s=60,
                           what="the task to park on an approval")
        client.decide(task.id, call_id, "deny", reason="over the limit for refunds")
        done = client.wait(task.id, timeout_s=60)
        assert done.status is TaskStatus.SUCCEEDED, done.error
        assert "wire_money" not in effects.read_text()
        (out,) = [refs.loads(bytes(o)) for k, o in query(
            Path(rt.settings.database_path),
            f"SELECT key, output FROM steps WHERE task_id = '{task.id}'")
            if k == "agent:cautious/tool:wire_money"]
        assert out == {"denied": True, "reason": "over the limit for refunds"}
        told = [refs.loads(bytes(o)) for k, o in query(
            Path(rt.settings.database_path),
            f"SELECT key, output FROM steps WHERE task_id = '{task.id}'")
            if k == "agent:cautious/llm#3"]
        assert told, "the model was called again after the denial"
    finally:
        shutil.rmtree(effects_dir(task.id), ignore_errors=True)


def test_an_agents_own_policy_has_a_person_approve_its_calls_of_a_tool(
        shared_runtime: Callable[..., Runtime]) -> None:
    """``approve = ["notify"]`` on the role: its notify calls park the task; another caller's do not."""
    rt = shared_runtime(["tests.apps.acting"])
    client = rt.client()
    task = client.submit("careful", {"problem": "where is order 17?"})
    try:
        call_id = wait_for(lambda: waiting_call(client, task.id), timeout_s=60,
                           what="the task to park on the role's own approval")
        (requested,) = [e.data for e in client.events(task.id) if e.kind == "approval.requested"]
        assert requested["tool"] == "notify" and requested["call_id"] == call_id
        effects = effects_dir(task.id) / "effects"
        assert effects.read_text().split()[0::2] == ["find_order"]  # notify has not run
        client.decide(task.id, call_id, "approve")
        done = client.wait(task.id, timeout_s=60)
        assert done.status is TaskStatus.SUCCEEDED, done.error
        assert effects.read_text().split()[0::2] == ["find_order", "notify"]
    finally:
        shutil.rmtree(effects_dir(task.id), ignore_errors=True)


def test_a_workflows_own_call_waits_for_approval_too(shared_runtime: Callable[..., Runtime]) -> None:
    """``ctx.tool`` of a tool that requires approval, from a workflow: the task parks on
    ``approval:<step key>``; approved with edited arguments, the call runs once with them; denied,
    the workflow gets ToolDenied with the reason."""
    rt = shared_runtime(["tests.apps.acting"])
    client = rt.client()
    paid = client.submit("pay_out", {"order_id": "21", "amount": 30})
    refused = client.submit("pay_out", {"order_id": "22", "amount": 9000})
    try:
        for task in (paid, refused):
            call_id = wait_for(lambda t=task: waiting_call(client, t.id), timeout_s=60,
                               what="the workflow's call to park on an approval")
            assert call_id == "tool:wire_money" and client.get(task.id).owner is None
        assert not (effects_dir(paid.id) / "effects").exists()
        client.decide(paid.id, "tool:wire_money", "approve",
                      arguments={"order_id": "21", "amount": 25.0})
        client.decide(refused.id, "tool:wire_money", "deny", reason="too much")
        with pytest.raises(NoApprovalWaiting):
            client.decide(paid.id, "tool:wire_money", "approve")
        done = client.wait(paid.id, timeout_s=60)
        assert done.status is TaskStatus.SUCCEEDED and done.output == "wired 25.00 for 21", done
        assert (effects_dir(paid.id) / "effects").read_text().split()[0::2] == ["wire_money"]
        done = client.wait(refused.id, timeout_s=60)
        assert done.status is TaskStatus.SUCCEEDED and done.output == "not paid: too much", done
        assert not (effects_dir(refused.id) / "effects").exists()
        for task in (paid, refused):
            requested = [e.data for e in client.events(task.id) if e.kind == "approval.requested"]
            assert len(requested) == 1 and requested[0]["tool"] == "wire_money"
    finally:
        for task in (paid, refused):
            shutil.rmtree(effects_dir(task.id), ignore_errors=True)


def test_a_replica_killed_mid_loop_replays_the_recorded_calls_and_makes_only_the_rest(
        make_runtime: Callable[..., Runtime]) -> None:
    """SIGKILL the agent's replica while its second tool call runs: the task succeeds; the first
    and third tools ran once, the second at most twice; the model calls recorded before the kill
    were not made again (counted at the engine)."""
    rt = make_runtime(["tests.apps.acting"])
    client, task, effects = start_until_the_second_tool_runs(rt)
    try:
        victim = pick(Kind.AGENT_REPLICA, rt.settings.namespace)
        assert victim is not None
        kill(victim)
        done = client.wait(task.id, timeout_s=120)
        assert done.status is TaskStatus.SUCCEEDED, done.error
        assert Resolution.model_validate(done.output)
        ran = Counter(effects.read_text().split()[0::2])
        assert ran["find_order"] == 1 and ran["notify"] == 1 and 1 <= ran["refund"] <= 2, ran
        engines = find_engines(rt.settings.namespace)
        calls = sum(len(asyncio.run(h.timeline())) for hs in engines.values() for h in hs)
        assert calls == 4, f"{calls} model calls for 4 turns: recorded ones were made again"
        keys = set(recorded_keys(Path(rt.settings.database_path))[task.id])
        assert {"agent:support/llm", "agent:support/llm#4", "agent:support/tool:refund",
                "agent:support/tool:notify"} <= keys
    finally:
        shutil.rmtree(effects_dir(task.id), ignore_errors=True)


def stays_false(condition: Callable[[], bool], for_s: float) -> bool:
    """Poll ``condition`` for ``for_s`` seconds; True if it never held (a negative check needs a
    bound)."""
    deadline = time.monotonic() + for_s
    while time.monotonic() < deadline:
        if condition():
            return False
        time.sleep(0.05)
    return not condition()


def test_a_worker_killed_mid_agent_call_leaves_one_run_of_its_calls_going_on(
        make_runtime: Callable[..., Runtime]) -> None:
    """SIGKILL the workflow worker while its agent's second tool call runs (a lease shorter than
    that call): the task is claimed again and its agent message sent again; the replica's first
    handler, whose run lost its claim, stops at its next record (LeaseLost) instead of going on
    beside the new one, which replays what was recorded. Each tool ran once but the one in flight
    (at most twice), and the model saw each turn's call once."""
    rt = make_runtime(["tests.apps.acting"], lease_s=1.0)
    client, task, effects = start_until_the_second_tool_runs(rt)
    try:
        victim = pick(Kind.WORKER, rt.settings.namespace)
        assert victim is not None
        kill(victim)
        done = client.wait(task.id, timeout_s=120)
        assert done.status is TaskStatus.SUCCEEDED, done.error
        assert done.runs == 2
        ran = Counter(effects.read_text().split()[0::2])
        assert ran["find_order"] == 1 and ran["notify"] == 1 and 1 <= ran["refund"] <= 2, ran
        engines = find_engines(rt.settings.namespace)
        calls = sum(len(asyncio.run(h.timeline())) for hs in engines.values() for h in hs)
        assert calls == 4, f"{calls} model calls for 4 turns"
    finally:
        shutil.rmtree(effects_dir(task.id), ignore_errors=True)


def test_a_token_budget_stops_a_runaway_loop_and_names_itself(
        make_runtime: Callable[..., Runtime]) -> None:
    rt = make_runtime(["tests.apps.acting"],
                      simulated=SimulatedEngineConfig(script="tests.apps.scripts:chatter"))
    client = rt.client()
    task = client.submit("run_away", {"problem": "loop forever"}, token_budget=300)
    done = client.wait(task.id, timeout_s=120)
    assert done.status is TaskStatus.FAILED
    assert "over its token budget of 300" in (done.error or ""), done.error
    assert 300 < done.tokens_used < 600 and done.token_budget == 300  # stopped at the call past it
    assert done.runs == 1  # not retried: every try would spend more


def waiting_call(client: Any, task_id: str) -> str:
    """The call the task is parked on (its waiting_for is approval:<call_id>)."""
    record = client.get(task_id)
    prefix = "approval:"
    return record.waiting_for[len(prefix):] if (record.status is TaskStatus.WAITING and
                                                 (record.waiting_for or "").startswith(prefix)) \
        else ""


def test_a_call_that_needs_approval_parks_the_task_across_a_restart_and_runs_once(
        make_runtime: Callable[..., Runtime]) -> None:
    rt = make_runtime(["tests.apps.acting"])
    task = rt.client().submit("cautious", {"problem": "order 17 lost: send 40"})
    effects = effects_dir(task.id) / "effects"
    try:
        call_id = wait_for(lambda: waiting_call(rt.client(), task.id), timeout_s=60,
                           what="the task to park on an approval")
        parked = rt.client().get(task.id)
        assert parked.owner is None  # no worker holds it
        requested = [e.data for e in rt.client().events(task.id) if e.kind == "approval.requested"]
        assert requested and requested[-1]["call_id"] == call_id
        assert requested[-1]["tool"] == "wire_money" and "amount" in requested[-1]["arguments"]
        assert "wire_money" not in effects.read_text()
        rt.stop()
        rt = make_runtime(["tests.apps.acting"])  # a full restart while parked
        assert waiting_call(rt.client(), task.id) == call_id
        client = rt.client()
        client.decide(task.id, call_id, "approve", arguments={"order_id": "17", "amount": 40.0})
        with pytest.raises(NoApprovalWaiting):  # sent twice: refused, and it runs once
            client.decide(task.id, call_id, "approve")
        done = client.wait(task.id, timeout_s=60)
        assert done.status is TaskStatus.SUCCEEDED, done.error
        ran = Counter(effects.read_text().split()[0::2])
        assert ran["wire_money"] == 1 and ran["notify"] == 1, ran
        (out,) = [refs.loads(bytes(o)) for k, o in query(
            Path(rt.settings.database_path),
            f"SELECT key, output FROM steps WHERE task_id = '{task.id}'")
            if k == "agent:cautious/tool:wire_money"]
        assert out == "wired 40.00 for 17"  # the edited arguments
        kinds = [e.kind for e in client.events(task.id)]
        assert kinds.count("approval.requested") == 1  # asked once, not again on the resume
    finally:
        shutil.rmtree(effects_dir(task.id), ignore_errors=True)


def start_until_the_second_tool_runs(rt: Runtime) -> tuple[Any, Any, Path]:
    """Submit a support task and wait until its agent's second tool call (refund) runs."""
    client = rt.client()
    task = client.submit("resolve", {"problem": "order 17 arrived broken; refund 20 please"})
    effects = effects_dir(task.id) / "effects"
    wait_for(lambda: effects.exists() and "refund" in effects.read_text(), timeout_s=60,
             what="the second tool call to run")
    return client, task, effects
