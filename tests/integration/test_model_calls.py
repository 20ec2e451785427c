"""Model calls beyond one engine's answer, on a real runtime (tests.apps.models, the simulated
engine): the LLM memo answers a second run without an engine, never another tenant's, and after a
restart; a model that fails hands the agent's call to its fallback; a call that runs out of every
model is a dead letter whose replay on another model resumes its task. Requests are counted at the
engines (each engine actor's ``timeline``)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from runtime import Runtime, TaskStatus
from runtime.core import refs
from runtime.core.config import RetryPolicy
from runtime.core.errors import ModelNotFound, NotAModelCall
from runtime.core.models import Completion, DeadLetter
from runtime.llm.engine import find_engines
from tests.conftest import wait_for
from tests.integration.test_metrics import scrape, value

APPS = ["tests.apps.models"]
FAILING = {"simulated": {"script": "tests.apps.scripts:flaky_models_fail"},
           "retry": RetryPolicy(max_attempts=2, initial_backoff_s=0.01, max_backoff_s=0.02),
           "models": ("flaky-2",)}


def engine_requests(rt: Runtime) -> dict[str, int]:
    """Requests that reached each model's engines (this runtime's engine actors)."""
    engines = find_engines(rt.settings.namespace)
    return {model: sum(len(asyncio.run(h.timeline())) for h in handles)
            for model, handles in engines.items()}


def recorded(rt: Runtime, task_id: str, prefix: str) -> dict[str, Any]:
    """The task's recorded steps under ``prefix``, as their values."""
    steps = asyncio.run(rt.store.steps_under(task_id, prefix))
    return {key: refs.loads(data) for key, data in steps.items()}


def memo_counts() -> tuple[float, float]:
    series = scrape()
    return (value(series, "ray_raysquad_llm_cache_hits_total", model="sim-small"),
            value(series, "ray_raysquad_llm_cache_misses_total", model="sim-small"))


def test_the_memo_answers_a_second_run_not_another_tenants_and_after_a_restart(
        make_runtime: Callable[..., Runtime]) -> None:
    rt = make_runtime(APPS)
    client = rt.client()
    hits, misses = memo_counts()

    first = client.wait(client.submit("memo_run", {"topic": "otters"}).id, timeout_s=120)
    assert first.status is TaskStatus.SUCCEEDED, first.error
    assert first.output["cached"] is False
    # The workflow's own call and the summarizer's one turn.
    assert engine_requests(rt)["sim-small"] == 2

    second = client.wait(client.submit("memo_run", {"topic": "otters"}).id, timeout_s=120)
    assert second.status is TaskStatus.SUCCEEDED, second.error
    assert engine_requests(rt)["sim-small"] == 2, "the second run reached an engine"
    assert second.output == {**first.output, "cached": True}
    cached = [e.data for e in client.events(second.id) if e.kind == "llm.cached"]
    assert sorted(e["step"] for e in cached) == ["agent:summarizer/llm", "llm:sim-small"]
    # Still recorded as the steps' calls (a replay reads them), and no tokens spent on them.
    assert isinstance(recorded(rt, second.id, "llm:")["llm:sim-small"], Completion)
    assert recorded(rt, second.id, "agent:summarizer/")["agent:summarizer/llm"].cached
    assert first.tokens_used > 0 and second.tokens_used == 0
    wait_for(lambda: memo_counts() == (hits + 2, misses + 2), timeout_s=30,
             what="the memo's hits and misses in the metrics")

    # Another tenant asks the same: its own engine requests, its own entries.
    other = client.wait(client.submit("memo_run", {"topic": "otters"}, tenant="globex").id,
                        timeout_s=120)
    assert other.status is TaskStatus.SUCCEEDED, other.error
    assert other.output["cached"] is False and engine_requests(rt)["sim-small"] == 4

    # A new runtime on the same Store: the memo is there, its engines see nothing.
    rt.stop(shutdown_ray=False)
    again = make_runtime(APPS)
    client = again.client()
    third = client.wait(client.submit("memo_run", {"topic": "otters"}).id, timeout_s=120)
    assert third.status is TaskStatus.SUCCEEDED, third.error
    assert third.output == second.output
    assert engine_requests(again)["sim-small"] == 0, "the memo was lost with the restart"


def test_a_failing_model_hands_the_agents_call_to_its_fallback(
        shared_runtime: Callable[..., Runtime]) -> None:
    rt = shared_runtime(APPS, **FAILING)
    client = rt.client()
    before = engine_requests(rt)

    done = client.wait(client.submit("ask_steadfast", {"question": "where is it?"}).id,
                       timeout_s=120)

    assert done.status is TaskStatus.SUCCEEDED, done.error
    assert done.output == {"reply": "steady answers: where is it?"}
    after = engine_requests(rt)
    assert after["flaky"] - before["flaky"] == 2  # its retries, then the next model
    assert after["steady"] - before["steady"] == 1
    (handed,) = [e.data for e in client.events(done.id) if e.kind == "llm.fallback"]
    assert (handed["step"], handed["model"], handed["next"], handed["attempts"]) == (
        "agent:steadfast/llm", "flaky", "steady", 2)
    assert "EngineUnavailable" in handed["error"]
    call = recorded(rt, done.id, "agent:steadfast/")["agent:steadfast/llm"]
    assert call.model == "steady"  # the record says which model answered
    assert set(done.usage) == {"steady"}


def test_a_call_out_of_models_is_a_dead_letter_whose_replay_on_another_model_resumes_it(
        shared_runtime: Callable[..., Runtime]) -> None:
    rt = shared_runtime(APPS, **FAILING)
    client, ops = rt.client(), rt.ops()

    failed = client.wait(client.submit("fragile", {"question": "q1"}).id, timeout_s=120)
    agent_failed = client.wait(client.submit("ask_stubborn", {"question": "q2"}).id,
                               timeout_s=120)

    assert failed.status is TaskStatus.FAILED and "ModelFailed" in (failed.error or "")
    assert agent_failed.status is TaskStatus.FAILED and "ModelFailed" in (agent_failed.error or "")
    letter = letter_of(rt, failed.id)
    assert (letter.tool, letter.step_key, letter.args["models"], letter.attempts) == (
        "llm:flaky", "llm:flaky", ["flaky", "flaky-2"], 4)
    assert letter.id in (failed.error or "")
    agent_letter = letter_of(rt, agent_failed.id)
    assert (agent_letter.tool, agent_letter.step_key) == ("llm:flaky", "agent:stubborn/llm")

    # Bad asks are refused before the letter is touched.
    with pytest.raises(ModelNotFound):
        ops.replay(letter.id, model="no-such-model")
    assert status_of(rt, letter.id) == "dead"

    # Replayed as it was, it fails again (its models are still down) and stays dead.
    again = ops.replay(letter.id)
    assert again.status == "dead" and "flaky-2" in again.error
    # On another model: the letter is replayed and its task resumes past the call.
    replayed = ops.replay(letter.id, model="steady")
    assert replayed.status == "replayed" and replayed.result["model"] == "steady"
    resumed = client.wait(failed.id, timeout_s=120)
    assert resumed.status is TaskStatus.SUCCEEDED, resumed.error
    assert resumed.output == {"before": "done", "answer": "steady answers: q1", "model": "steady"}
    assert resumed.usage["steady"].total_tokens > 0  # the replay's tokens are the task's

    assert ops.replay(agent_letter.id, model="steady").status == "replayed"
    resumed = client.wait(agent_failed.id, timeout_s=120)
    assert resumed.status is TaskStatus.SUCCEEDED, resumed.error
    assert resumed.output == {"reply": "steady answers: q2"}
    # A replayed letter is not run again.
    assert ops.replay(agent_letter.id, model="sim-small").status == "replayed"


def test_only_a_model_calls_letter_is_replayed_on_another_model(
        shared_runtime: Callable[..., Runtime]) -> None:
    rt = shared_runtime(APPS, **FAILING)
    letter = DeadLetter(id="tool-letter-1", tool="http_fetch", args={"url": "http://x"},
                        error="down", error_type="UpstreamError", attempts=3, created_at=0.0)
    asyncio.run(rt.store.add_dead_letter(letter))
    with pytest.raises(NotAModelCall, match="not a model call"):
        rt.ops().replay(letter.id, model="steady")
    assert status_of(rt, letter.id) == "dead"


def status_of(rt: Runtime, letter_id: str) -> str:
    return asyncio.run(rt.store.get_dead_letter(letter_id)).status


def letter_of(rt: Runtime, task_id: str) -> DeadLetter:
    letters = [d for d in rt.ops().dead_letters(limit=500) if d.task_id == task_id]
    assert len(letters) == 1, letters
    return letters[0]
