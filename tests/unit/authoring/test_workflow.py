"""``@workflow``, Workflow.validate_input, and Context steps with an in-memory Services."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from pydantic import BaseModel

from runtime.authoring.catalog import Catalog
from runtime.authoring.workflow import Context, StepDefaults, Workflow, workflow
from runtime.core.calls import ModelPlan
from runtime.core.config import RetryPolicy
from runtime.core.errors import (
    ActorUnavailable,
    AgentNotFound,
    ConfigError,
    InvalidInput,
    StepError,
    StepTimeout,
    TaskCancelled,
    WorkflowNotFound,
)
from runtime.core.models import ChatRequest, Completion, Usage

FAST = RetryPolicy(max_attempts=3, initial_backoff_s=0.001, max_backoff_s=0.002, jitter=0.0)


class Address(BaseModel):
    city: str
    zip: int


class Person(BaseModel):
    name: str
    age: int
    address: Address


class Out(BaseModel):
    greeting: str


class FakeServices:
    """Services in memory: records what the Context asks for."""

    def __init__(self) -> None:
        self.recorded: dict[str, Any] = {}
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.agent_calls: list[tuple[str, str, Any]] = []
        self.chats: list[ChatRequest] = []
        self.plans: list[ModelPlan] = []

    async def record(self, key: str, value: Any) -> Any:
        self.recorded[key] = value
        return value

    async def call_agent(self, role: str, key: str, payload: Any) -> Any:
        self.agent_calls.append((role, key, payload))
        return {"role": role, "echo": payload}

    async def chat(self, request: ChatRequest, plan: Any = None) -> Completion:
        self.chats.append(request)
        self.plans.append(plan)
        return Completion(model=request.model, text="hi", usage=Usage(prompt_tokens=1, completion_tokens=1))

    def emit(self, kind: str, data: dict[str, Any]) -> None:
        self.events.append((kind, data))


def make_ctx(services: FakeServices, recorded: dict[str, Any] | None = None,
             retry: RetryPolicy = FAST, step_timeout_s: float | None = None) -> Context:
    return Context("task-1", "wf", 3, "acme", dict(recorded or {}), services,
                   StepDefaults(retry, "sim-small", step_timeout_s))


def run(coro_fn: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(coro_fn())  # type: ignore[arg-type]


class Counter:
    def __init__(self, fail_times: int = 0, error: type[Exception] = ValueError) -> None:
        self.calls = 0
        self.fail_times = fail_times
        self.error = error

    async def __call__(self, value: Any = "v") -> Any:
        self.calls += 1
        if self.calls <= self.fail_times:
            raise self.error(f"failure {self.calls}")
        return value


# -- @workflow --------------------------------------------------------------------------------------


async def greet(ctx: Context, inp: Person) -> Out:
    return Out(greeting=f"hi {inp.name}")


def test_workflow_decorator_defaults_to_the_function_name() -> None:
    wf = workflow(greet)

    assert isinstance(wf, Workflow)
    assert wf.name == "greet"
    assert wf.fn is greet
    assert wf.input_model is Person
    assert wf.output_type is Out
    assert wf.retry is None
    assert wf.input_schema()["title"] == "Person"
    assert wf.dump_output(Out(greeting="x")) == {"greeting": "x"}


def test_workflow_decorator_with_explicit_name_and_retry() -> None:
    wf = workflow(name="hello", retry=FAST)(greet)

    assert (wf.name, wf.retry, wf.input_model) == ("hello", FAST, Person)


def test_workflow_rejects_a_sync_function() -> None:
    def sync(ctx: Context, inp: Person) -> Out:
        return Out(greeting="")

    with pytest.raises(TypeError, match="async def"):
        workflow(sync)  # type: ignore[arg-type]


def test_workflow_rejects_an_input_without_a_pydantic_annotation() -> None:
    async def untyped(ctx, inp):  # type: ignore[no-untyped-def]
        return None

    async def dict_input(ctx: Context, inp: dict) -> None:  # type: ignore[type-arg]
        return None

    for fn in (untyped, dict_input):
        with pytest.raises(TypeError, match="pydantic"):
            workflow(fn)


def test_workflow_rejects_a_wrong_number_of_parameters() -> None:
    async def one(inp: Person) -> None:
        return None

    with pytest.raises(TypeError, match=r"\(ctx, inp\)"):
        workflow(one)


def test_validate_input_names_field_paths() -> None:
    wf = workflow(greet)
    assert wf.validate_input({"name": "A", "age": 3, "address": {"city": "X", "zip": 1}}).name == "A"

    with pytest.raises(InvalidInput) as info:
        wf.validate_input({"name": "A", "age": "old", "address": {"city": "X"}})

    err = info.value
    assert err.workflow == "greet"
    assert len(err.problems) == 2
    assert any(p.startswith("age: ") for p in err.problems)
    assert any(p.startswith("address.zip: ") for p in err.problems)
    assert "address.zip" in str(err) and "age" in str(err)


def test_validate_input_of_a_non_object_body() -> None:
    with pytest.raises(InvalidInput) as info:
        workflow(greet).validate_input([1, 2])
    assert info.value.problems[0].startswith("(body): ")


def test_catalog_lookups_name_what_is_loaded() -> None:
    wf = workflow(greet)
    catalog = Catalog(workflows={"greet": wf})

    assert catalog.workflow("greet") is wf
    with pytest.raises(WorkflowNotFound) as info:
        catalog.workflow("nope")
    assert info.value.known == ("greet",)
    with pytest.raises(AgentNotFound):
        catalog.agent("planner")


# -- steps ------------------------------------------------------------------------------------------


def test_steps_run_once_and_get_numbered_keys() -> None:
    services = FakeServices()
    fn = Counter()

    async def main() -> list[Any]:
        ctx = make_ctx(services)
        return [await ctx.step("fetch", fn, 1), await ctx.step("fetch", fn, 2),
                await ctx.step("parse", fn, 3), await ctx.step("fetch", fn, value=4)]

    assert run(main) == [1, 2, 3, 4]
    assert fn.calls == 4
    assert services.recorded == {"fetch": 1, "fetch#2": 2, "parse": 3, "fetch#3": 4}


def test_replay_returns_recorded_outputs_without_calling() -> None:
    services = FakeServices()
    fn = Counter()

    async def body(ctx: Context) -> list[Any]:
        a = await ctx.step("a", fn, "A")
        ctx.emit(0.5, "halfway")
        b = await ctx.step("a", fn, "B")
        ctx.emit(1.0, "done", extra=1)
        return [a, b]

    async def first_run() -> list[Any]:
        ctx = make_ctx(services)
        assert not ctx.replaying
        return await body(ctx)

    assert run(first_run) == ["A", "B"]
    assert fn.calls == 2
    assert services.events == [("progress", {"progress": 0.5, "message": "halfway"}),
                               ("progress", {"progress": 1.0, "message": "done", "extra": 1})]

    # Resume with the first step recorded but different (stale) outputs: they win over the function.
    replay_services = FakeServices()

    async def resumed() -> list[Any]:
        ctx = make_ctx(replay_services, recorded={"a": "recorded-A"})
        assert ctx.replaying
        return await body(ctx)

    assert run(resumed) == ["recorded-A", "B"]
    assert fn.calls == 3
    assert replay_services.recorded == {"a#2": "B"}
    # The progress event emitted while replaying is not repeated; the one after new work is.
    assert replay_services.events == [("progress", {"progress": 1.0, "message": "done", "extra": 1})]


def test_full_replay_calls_nothing() -> None:
    services = FakeServices()
    recorded = {"a": 1, "agent:planner": {"plan": []}, "llm:sim-small": "cached"}

    async def main() -> list[Any]:
        ctx = make_ctx(services, recorded=recorded)
        out = [await ctx.step("a", Counter()), await ctx.agent("planner").run("p"),
               await ctx.llm.chat("hello")]
        ctx.emit(1.0)
        return out

    assert run(main) == [1, {"plan": []}, "cached"]
    assert services.recorded == {} and services.agent_calls == [] and services.chats == []
    assert services.events == []


def test_sync_step_runs_in_a_thread() -> None:
    services = FakeServices()
    seen: list[str] = []

    def blocking(x: int, *, y: int) -> int:
        seen.append(threading.current_thread().name)
        return x + y

    async def main() -> int:
        return await make_ctx(services).step("add", blocking, 2, y=3)

    main_thread = threading.current_thread().name
    assert run(main) == 5
    assert seen and seen[0] != main_thread
    assert services.recorded == {"add": 5}


def test_agent_and_llm_steps_are_keyed_and_recorded() -> None:
    services = FakeServices()

    async def main() -> None:
        ctx = make_ctx(services)
        await ctx.agent("planner").run({"q": 1})
        await ctx.agent("planner").run({"q": 2})
        await ctx.llm.chat("hello", max_tokens=5)

    run(main)

    assert [(r, k) for r, k, _ in services.agent_calls] == [("planner", "agent:planner"),
                                                             ("planner", "agent:planner#2")]
    (request,) = services.chats
    assert request.request_id == "task-1/llm:sim-small" and request.session == "task-1"
    assert (request.priority, request.max_tokens, request.messages[0].content) == (3, 5, "hello")
    assert set(services.recorded) == {"agent:planner", "agent:planner#2", "llm:sim-small"}


def test_an_llm_step_plans_its_retries_fallbacks_and_memo() -> None:
    services = FakeServices()
    once = RetryPolicy(max_attempts=1)

    async def main() -> None:
        ctx = make_ctx(services, step_timeout_s=9.0)
        await ctx.llm.chat("hello")
        await ctx.llm.chat("hello", fallback_models=["m2", "m3"], cache=True, retry=once,
                           timeout_s=2.0)
        await ctx.llm.chat("hello", temperature=0.5)
        with pytest.raises(ConfigError, match="cache=True needs temperature 0"):
            await ctx.llm.chat("hello", temperature=0.5, cache=True)

    run(main)
    first, second, sampled = services.plans
    assert (first.fallback_models, first.cache, first.retry, first.timeout_s, first.dead_letter) \
        == ((), False, FAST, 9.0, True)
    assert (second.fallback_models, second.cache, second.retry, second.timeout_s) == (
        ("m2", "m3"), True, once, 2.0)
    assert not sampled.cache
    assert set(services.recorded) == {"llm:sim-small", "llm:sim-small#2", "llm:sim-small#3"}


def test_the_deployments_memo_applies_where_a_call_says_nothing() -> None:
    services = FakeServices()

    async def main() -> None:
        ctx = Context("task-1", "wf", 3, "acme", {}, services,
                      StepDefaults(FAST, "sim-small", llm_cache=True))
        await ctx.llm.chat("hello")
        await ctx.llm.chat("hello", cache=False)
        await ctx.llm.chat("hello", temperature=1.0)

    run(main)
    assert [p.cache for p in services.plans] == [True, False, False]


# -- failures ---------------------------------------------------------------------------------------


def test_retries_then_succeeds() -> None:
    services = FakeServices()
    fn = Counter(fail_times=2)

    async def main() -> Any:
        return await make_ctx(services).step("flaky", fn, "ok")

    assert run(main) == "ok"
    assert fn.calls == 3
    retries = [d for kind, d in services.events if kind == "step_retry"]
    assert [(d["key"], d["attempt"], d["error_type"]) for d in retries] == [
        ("flaky", 1, "ValueError"), ("flaky", 2, "ValueError")]
    assert services.recorded == {"flaky": "ok"}


def test_retries_exhausted_raise_step_error() -> None:
    services = FakeServices()
    fn = Counter(fail_times=99)

    async def main() -> Any:
        return await make_ctx(services).step("flaky", fn)

    with pytest.raises(StepError) as info:
        run(main)

    err = info.value
    assert (err.step_key, err.attempts, err.error_type, err.message) == (
        "flaky", 3, "ValueError", "failure 3")
    assert isinstance(err.__cause__, ValueError)
    assert fn.calls == 3
    assert services.recorded == {}


def test_an_actor_down_past_the_retries_stops_the_run_instead_of_failing_the_step() -> None:
    """The runtime failed, not the step: ActorUnavailable (an executor restarting on another node)
    leaves the step unrecorded and reaches the run, which stops so that the task resumes."""
    services = FakeServices()
    calls = 0

    async def down() -> Any:
        nonlocal calls
        calls += 1
        raise ActorUnavailable("tools:0", 2.0)

    async def main() -> Any:
        return await make_ctx(services).step("call", down)

    with pytest.raises(ActorUnavailable):
        run(main)
    assert calls == 3, "retried like any passing error first"
    assert services.recorded == {}


def test_step_retry_policy_overrides_the_default() -> None:
    fn = Counter(fail_times=99)

    async def main() -> Any:
        return await make_ctx(FakeServices()).step("x", fn, retry=FAST.model_copy(update={"max_attempts": 1}))

    with pytest.raises(StepError) as info:
        run(main)
    assert info.value.attempts == 1 and fn.calls == 1


def test_non_retryable_fails_at_once() -> None:
    services = FakeServices()
    fn = Counter(fail_times=99, error=KeyError)
    policy = FAST.model_copy(update={"max_attempts": 5, "non_retryable": ("KeyError",)})

    async def main() -> Any:
        return await make_ctx(services, retry=policy).step("lookup", fn)

    with pytest.raises(StepError) as info:
        run(main)
    assert (info.value.attempts, info.value.error_type) == (1, "KeyError")
    assert fn.calls == 1
    assert services.events == []


def test_timeout_raises_step_error_wrapping_step_timeout() -> None:
    services = FakeServices()
    calls = 0

    async def hangs() -> None:
        nonlocal calls
        calls += 1
        await asyncio.Event().wait()  # never set: only the timeout ends it

    async def main() -> Any:
        return await make_ctx(services).step("slow", hangs, timeout_s=0.01)

    with pytest.raises(StepError) as info:
        run(main)

    err = info.value
    assert (err.error_type, err.attempts) == ("StepTimeout", 3)
    assert isinstance(err.__cause__, StepTimeout)
    assert err.__cause__.timeout_s == 0.01
    assert calls == 3


def test_context_default_step_timeout_applies() -> None:
    async def hangs() -> None:
        await asyncio.Event().wait()

    async def main() -> Any:
        ctx = make_ctx(FakeServices(), retry=FAST.model_copy(update={"max_attempts": 1}),
                       step_timeout_s=0.01)
        return await ctx.step("slow", hangs)

    with pytest.raises(StepError) as info:
        run(main)
    assert info.value.error_type == "StepTimeout"


def test_user_timeout_error_without_a_step_timeout_keeps_its_type() -> None:
    async def upstream_times_out() -> None:
        raise TimeoutError("upstream API timed out")

    async def main() -> Any:
        policy = FAST.model_copy(update={"non_retryable": ("TimeoutError",)})
        return await make_ctx(FakeServices(), retry=policy).step("call", upstream_times_out)

    with pytest.raises(StepError) as info:
        run(main)
    assert (info.value.error_type, info.value.attempts) == ("TimeoutError", 1)
    assert "upstream API timed out" in str(info.value)


def test_user_timeout_error_is_not_mistaken_for_the_step_timeout() -> None:
    async def upstream_times_out() -> None:
        raise TimeoutError("upstream API timed out")

    async def main() -> Any:
        policy = FAST.model_copy(update={"non_retryable": ("TimeoutError",)})
        return await make_ctx(FakeServices(), retry=policy).step("call", upstream_times_out, timeout_s=60)

    with pytest.raises(StepError) as info:
        run(main)
    assert (info.value.error_type, info.value.attempts) == ("TimeoutError", 1)
    assert "upstream API timed out" in str(info.value)


def test_cancel_requested_stops_at_the_next_step() -> None:
    services = FakeServices()
    fn = Counter()

    async def main() -> None:
        ctx = make_ctx(services, recorded={"a": "A"})
        ctx.cancel_requested = True
        assert await ctx.step("a", fn) == "A"  # replaying a recorded step is not new work
        await ctx.step("b", fn)

    with pytest.raises(TaskCancelled) as info:
        run(main)
    assert info.value.task_id == "task-1"
    assert fn.calls == 0
    assert services.recorded == {}


def test_task_cancelled_raised_inside_a_step_is_not_retried() -> None:
    fn = Counter(fail_times=99, error=lambda msg: TaskCancelled("task-1"))  # type: ignore[arg-type]

    async def main() -> Any:
        return await make_ctx(FakeServices()).step("x", fn)

    with pytest.raises(TaskCancelled):
        run(main)
    assert fn.calls == 1


# -- RetryPolicy.backoff_s --------------------------------------------------------------------------


def test_backoff_grows_exponentially_without_jitter() -> None:
    policy = RetryPolicy(initial_backoff_s=0.5, backoff_multiplier=3.0, max_backoff_s=1000, jitter=0)

    assert [policy.backoff_s(n, 0.7) for n in range(1, 5)] == pytest.approx([0.5, 1.5, 4.5, 13.5])


def test_backoff_is_capped() -> None:
    policy = RetryPolicy(initial_backoff_s=1, backoff_multiplier=2, max_backoff_s=5, jitter=0)

    assert [policy.backoff_s(n, 0.0) for n in range(1, 6)] == pytest.approx([1, 2, 4, 5, 5])


@pytest.mark.parametrize("attempt", [1, 2, 3, 8, 20])
def test_backoff_stays_within_the_jitter_band(attempt: int) -> None:
    policy = RetryPolicy(initial_backoff_s=0.2, backoff_multiplier=2, max_backoff_s=30, jitter=0.25)
    base = min(30, 0.2 * 2 ** (attempt - 1))

    delays = [policy.backoff_s(attempt, r / 100) for r in range(100)]

    assert min(delays) == pytest.approx(base * 0.75)
    assert all(base * 0.75 <= d < base * 1.25 for d in delays)
    assert policy.backoff_s(attempt, 0.5) == pytest.approx(base)
    assert delays == sorted(delays)


def test_backoff_of_a_very_late_attempt_is_capped() -> None:
    policy = RetryPolicy(max_attempts=100_000, max_backoff_s=30, jitter=0)

    assert policy.backoff_s(2_000, 0.5) == 30
