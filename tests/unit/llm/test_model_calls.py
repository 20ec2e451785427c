"""One model call beyond its request (runtime/llm/calls.py, runtime/core/calls.py): the memo's key
and when the memo may answer, the memo answering without an engine, retries then the next model,
and the dead letter of a call that ran out of every model; over a real Store (a StoreActor on a
SQLite file, in this process)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from runtime.core.calls import ModelPlan, memo_key, want_memo
from runtime.core.config import RetryPolicy, Settings
from runtime.core.errors import (
    ConfigError,
    EngineUnavailable,
    ModelFailed,
    ModelNotFound,
    TaskCancelled,
)
from runtime.core.models import ChatMessage, ChatRequest, Completion, ToolSpec, Usage
from runtime.core.retry import Retrying
from runtime.llm.calls import answer_again, call_model, is_model_letter
from runtime.store.actor import StoreActor

FAST = RetryPolicy(max_attempts=2, initial_backoff_s=0.001, max_backoff_s=0.002, jitter=0.0)


def request(**fields: Any) -> ChatRequest:
    base: dict[str, Any] = {"model": "m1", "messages": [ChatMessage(role="user", content="hi")],
                            "tenant": "acme"}
    return ChatRequest(**{**base, **fields})


# -- the key and the rule -------------------------------------------------------------------------


def test_the_memo_key_is_what_decides_the_answer_and_the_tenant() -> None:
    key = memo_key(request())
    # Who sends it and when does not change it.
    assert memo_key(request(priority=9, request_id="t1/llm:m1")) == key
    # Anything that decides the answer does, and so does the tenant.
    tool = ToolSpec(name="look", description="", parameters={"type": "object"})
    others = [request(tenant="globex"), request(model="m2"), request(max_tokens=7),
              request(temperature=0.5), request(tools=(tool,)),
              request(tools=(tool,), tool_choice="required"),
              request(messages=[ChatMessage(role="user", content="hi!")]),
              request(messages=[ChatMessage(role="system", content="be brief"),
                                ChatMessage(role="user", content="hi")]),
              request(response_format={"name": "x", "json_schema": {"type": "object"}})]
    keys = {memo_key(r) for r in others}
    assert key not in keys and len(keys) == len(others)
    assert len(key) == 64 and int(key, 16) >= 0  # a SHA-256, in hex


def test_the_memo_answers_at_temperature_0_only_and_the_call_decides_first() -> None:
    assert not want_memo(None, None, False, temperature=0.0)  # nobody asked
    assert want_memo(None, None, True, temperature=0.0)  # the deployment
    assert want_memo(None, True, False, temperature=0.0)  # the agent, over the deployment
    assert not want_memo(None, False, True, temperature=0.0)
    assert not want_memo(False, True, True, temperature=0.0)  # the call, over both
    assert want_memo(True, False, False, temperature=0.0)
    assert not want_memo(None, True, True, temperature=0.7)  # a default skips a sampled call
    with pytest.raises(ConfigError, match="cache=True needs temperature 0"):
        want_memo(True, None, False, temperature=0.7)


# -- call_model over a real Store -----------------------------------------------------------------


class Engines:
    """Models in memory: each answers, or fails as it is told; counts what reached it."""

    def __init__(self, failing: dict[str, BaseException] | None = None) -> None:
        self.failing = failing or {}
        self.asked: list[str] = []

    async def chat(self, req: ChatRequest) -> Completion:
        self.asked.append(req.model)
        error = self.failing.get(req.model)
        if error is not None:
            raise error
        return Completion(model=req.model, text=f"{req.model} says hi",
                          usage=Usage(prompt_tokens=3, completion_tokens=4))


def with_store(tmp_path: Path, body: Callable[[StoreActor], Awaitable[None]]) -> None:
    async def main() -> None:
        await body(StoreActor(Settings(data_dir=tmp_path / "state")))

    asyncio.run(main())


def test_a_memo_hit_reaches_no_engine_and_is_marked_cached(tmp_path: Path) -> None:
    async def body(store: StoreActor) -> None:
        engines, events = Engines(), []
        plan = ModelPlan(cache=True)
        first = await call_model(request(), plan, engines.chat, store, task_id="t1",
                                 step_key="llm:m1", emit=lambda k, d: events.append((k, d)))
        again = await call_model(request(request_id="t2/llm:m1"), plan, engines.chat, store,
                                 task_id="t2", step_key="llm:m1",
                                 emit=lambda k, d: events.append((k, d)))
        assert engines.asked == ["m1"]  # the second reached no engine
        assert not first.cached and again.cached
        assert again.model_copy(update={"cached": False}) == first
        assert events == [("llm.cached", {"step": "llm:m1", "model": "m1"})]
        # another tenant, or the memo not asked for: the engine answers
        await call_model(request(tenant="globex"), plan, engines.chat, store)
        await call_model(request(), ModelPlan(), engines.chat, store)
        assert engines.asked == ["m1", "m1", "m1"]

    with_store(tmp_path, body)


def test_a_model_that_runs_out_of_retries_hands_the_call_to_the_next(tmp_path: Path) -> None:
    async def body(store: StoreActor) -> None:
        engines = Engines({"m1": EngineUnavailable("m1", "503s")})
        events: list[tuple[str, dict[str, Any]]] = []
        retried: list[Retrying] = []
        plan = ModelPlan(fallback_models=("m2", "m3"), retry=FAST, cache=True, dead_letter=True,
                         on_retry=retried.append)
        answer = await call_model(request(), plan, engines.chat, store, task_id="t1",
                                  step_key="llm:m1", emit=lambda k, d: events.append((k, d)))
        assert answer.model == "m2" and engines.asked == ["m1", "m1", "m2"]
        assert len(retried) == 1  # m1's first attempt; m2 answered at once
        ((kind, data),) = events
        assert kind == "llm.fallback" and (data["model"], data["next"], data["attempts"]) == (
            "m1", "m2", 2)
        assert await store.dead_letters() == []
        # The answer is kept under the request as the model that answered it was asked.
        assert await store.memo_get("acme", memo_key(request(model="m2"))) == answer
        assert await store.memo_get("acme", memo_key(request())) is None

    with_store(tmp_path, body)


class Later(StoreActor):
    """A Store whose clock runs ``skew`` seconds ahead (time passing, without waiting for it)."""

    skew = 0.0

    def _now(self, stamp: Any) -> float | None:
        return time.time() + self.skew


def test_with_a_ttl_an_old_answer_reaches_the_engine_again_and_the_new_one_is_kept(
        tmp_path: Path) -> None:
    async def main() -> None:
        store = Later(Settings(data_dir=tmp_path / "state", llm_cache_ttl_s=60))
        engines, plan = Engines(), ModelPlan(cache=True)
        await call_model(request(), plan, engines.chat, store)
        assert (await call_model(request(), plan, engines.chat, store)).cached
        store.skew = 61
        again = await call_model(request(), plan, engines.chat, store)
        assert not again.cached and engines.asked == ["m1", "m1"]
        assert (await call_model(request(), plan, engines.chat, store)).cached  # kept anew
        # A put in a group commit (``apply``, as a StoreHandle or a DirectStore sends it) is held
        # to the same age: an entry still young is not replaced.
        fresh = Completion(model="m1", text="other", usage=Usage(prompt_tokens=3, completion_tokens=1))
        assert await store.apply([("memo_put", {"tenant": "acme", "key": memo_key(request()),
                                                "completion": fresh})]) == [False]
        store.skew = 61 + 61
        assert await store.apply([("memo_put", {"tenant": "acme", "key": memo_key(request()),
                                                "completion": fresh})]) == [True]
        kept = await store.memo_get("acme", memo_key(request()))
        assert kept is not None and kept.text == "other"

    asyncio.run(main())


def test_a_call_that_runs_out_of_every_model_is_a_dead_letter(tmp_path: Path) -> None:
    async def body(store: StoreActor) -> None:
        engines = Engines({"m1": EngineUnavailable("m1", "503s"), "m2": ModelNotFound("m2")})
        plan = ModelPlan(fallback_models=("m2",), retry=FAST, dead_letter=True)
        asked = request(request_id="t1/llm:m1", max_tokens=9)
        with pytest.raises(ModelFailed) as info:
            await call_model(asked, plan, engines.chat, store, task_id="t1", step_key="llm:m1")
        failed = info.value
        assert engines.asked == ["m1", "m1", "m2"]  # not found: not tried again
        assert (failed.models, failed.attempts, failed.error_type) == (("m1", "m2"), 3,
                                                                       "ModelNotFound")
        (letter,) = await store.dead_letters()
        assert failed.dead_letter == letter.id and letter.id in str(failed)
        assert is_model_letter(letter)
        assert (letter.tool, letter.task_id, letter.step_key, letter.tenant, letter.attempts) == (
            "llm:m1", "t1", "llm:m1", "acme", 3)
        assert ChatRequest.model_validate(letter.args["request"]) == asked
        assert letter.args["models"] == ["m1", "m2"]
        # Replayed: on a model named, else on its own in order.
        healthy = Engines()
        answer, error, attempts = await answer_again(letter, "m3", healthy.chat)
        assert answer is not None and (answer.model, error, attempts) == ("m3", "", 1)
        still = Engines({"m1": EngineUnavailable("m1", "503s")})
        answer, error, attempts = await answer_again(letter, None, still.chat)
        assert answer is not None and answer.model == "m2" and attempts == 2
        assert still.asked == ["m1", "m2"]
        down = Engines({"m1": EngineUnavailable("m1", "503s"), "m2": EngineUnavailable("m2", "x")})
        answer, error, attempts = await answer_again(letter, None, down.chat)
        assert answer is None and attempts == 2 and "m1: EngineUnavailable" in error

    with_store(tmp_path, body)


def test_without_a_dead_letter_asked_for_none_is_kept(tmp_path: Path) -> None:
    async def body(store: StoreActor) -> None:
        engines = Engines({"m1": EngineUnavailable("m1", "503s"), "m2": ModelNotFound("m2")})
        with pytest.raises(ModelFailed) as info:
            await call_model(request(), ModelPlan(fallback_models=("m1", "m2", "m2")),
                             engines.chat, store)
        assert info.value.dead_letter == "" and info.value.models == ("m1", "m2")
        # One model, no letter: nothing was added to its tries, its own error is the call's.
        with pytest.raises(EngineUnavailable):
            await call_model(request(), ModelPlan(), engines.chat, store)
        assert await store.dead_letters() == []

    with_store(tmp_path, body)


def test_a_cancel_ends_the_call_as_it_is(tmp_path: Path) -> None:
    async def body(store: StoreActor) -> None:
        engines = Engines({"m1": TaskCancelled("t1")})
        plan = ModelPlan(fallback_models=("m2",), retry=FAST, dead_letter=True)
        with pytest.raises(TaskCancelled):
            await call_model(request(), plan, engines.chat, store, task_id="t1")
        assert engines.asked == ["m1"] and await store.dead_letters() == []

    with_store(tmp_path, body)


def test_a_completion_recorded_before_the_memo_reads_back_as_not_cached() -> None:
    answer = Completion(model="m1", text="hi", usage=Usage(prompt_tokens=1, completion_tokens=1))
    state = answer.__getstate__()
    del state["__dict__"]["cached"]  # as a step recorded before schema 15 holds it
    old = Completion.__new__(Completion)
    old.__setstate__(state)
    assert old.cached is False and old == answer
