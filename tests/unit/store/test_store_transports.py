"""The Store said once: every way of reaching it (the Store actor, its handle, the direct
PostgreSQL transport) carries each operation as its line in ``OPERATIONS`` says. No Ray is started:
the handle talks to a fake actor, and ``ray.remote`` only builds the actor class."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import ray

from runtime.core.config import Settings
from runtime.core.errors import ActorUnavailable, LeaseLost
from runtime.core.models import Lease, TaskStatus
from runtime.store.actor import StoreActor, StoreHandle
from runtime.store.direct import DirectStore
from runtime.store.postgres import PostgresStore
from runtime.store.service import MEMBERS, OPERATIONS, StoreService, StoreTransport
from runtime.store.sqlite import SQLiteStore


def parameters(method: Callable[..., Any]) -> list[str]:
    # (Ray's tracing, once on in this process, adds _ray_trace_ctx to an actor class's methods.)
    return [p for p in inspect.signature(method).parameters
            if p != "self" and not p.startswith("_ray")]


@pytest.mark.parametrize("backend", [SQLiteStore, PostgresStore])
def test_each_plain_operation_is_the_backends_method_with_the_time_and_the_settings_added(
        backend: type[Any]) -> None:
    for name, op in OPERATIONS.items():
        if op.custom:
            continue
        taken = set(parameters(getattr(backend, name)))
        given = set(parameters(getattr(StoreService, name)))
        given |= {"now"} if op.stamp else set()
        given |= set(op.settings(Settings())) if op.settings else set()
        assert given <= taken, (name, given - taken)
        assert not {p for p in taken - given
                    if inspect.signature(getattr(backend, name)).parameters[p].default
                    is inspect.Parameter.empty}, name  # the backend needs nothing more


@pytest.mark.parametrize("transport", [StoreActor, StoreHandle, DirectStore])
def test_each_transport_has_every_operation_with_the_services_signature(
        transport: type[Any]) -> None:
    for name in MEMBERS:
        assert parameters(getattr(transport, name)) == parameters(getattr(StoreService, name)), name
        method = getattr(transport, name)
        if getattr(method, "__ray_tracing_wrapped__", False):  # Ray's tracing wrapper, see above
            method = method.__wrapped__
        assert inspect.iscoroutinefunction(method) == (name != "post_event"), name


def test_ray_sees_the_made_methods_of_the_store_actor() -> None:
    connected = ray.is_initialized()  # (by an earlier test of the session, in a full run)
    signatures = ray.remote(StoreActor).__ray_metadata__.method_meta.signatures
    assert [p.name for p in signatures["claim"] if not p.name.startswith("_ray")] == [
        "task_ids", "owner", "lease_s"]
    assert set(OPERATIONS) <= set(signatures)
    assert ray.is_initialized() == connected  # making the actor class started nothing


def test_a_transport_that_runs_the_backend_must_define_each_custom_operation() -> None:
    with pytest.raises(TypeError, match="must define submit_tasks"):
        class Broken(StoreTransport, backend=True):
            pass


class FakeActor:
    """A Store actor as the handle sees it: each call is recorded, and answered after ``down``
    calls have failed as though the actor were restarting."""

    def __init__(self, down: int = 0) -> None:
        self.down = down
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    def __getattr__(self, method: str) -> Any:
        actor = self

        class Method:
            def remote(self, *args: Any, **kwargs: Any) -> Awaitable[Any]:
                actor.calls.append((method, args, kwargs))

                async def answer() -> Any:
                    if actor.down:
                        actor.down -= 1
                        raise ray.exceptions.RayActorError()
                    if method == "apply":
                        return [LeaseLost("t", "w") if w[1]["lease"].token < 0 else f"{w[0]} done"
                                for w in args[0]]
                    return f"{method} done"
                return answer()
        return Method()


def store_handle(actor: FakeActor) -> StoreHandle:
    return StoreHandle(actor, "store", "ns", deadline_s=5.0)


@pytest.mark.parametrize(("call", "repeated"), [
    (lambda s: s.get_task("t"), True),
    (lambda s: s.renew("w", {"t": 1}, 30.0), True),
    (lambda s: s.submit_tasks([]), True),
    (lambda s: s.claim(["t"], "w", 30.0), False),
    (lambda s: s.append_event("t", "progress", {}), False),
    (lambda s: s.retry("t"), False),
    (lambda s: s.apply([("finish", {"lease": Lease("t", "w", 1)})]), True),
    (lambda s: s.append_events([("t", "progress", {}, None)]), False),
])
def test_the_handle_repeats_a_call_across_a_restart_only_when_it_is_safe(
        call: Callable[[Any], Awaitable[Any]], repeated: bool) -> None:
    actor = FakeActor(down=1)
    store = store_handle(actor)

    async def run() -> Any:
        return await call(store)

    if repeated:
        asyncio.run(run())
        assert len(actor.calls) == 2 and actor.calls[0] == actor.calls[1]
    else:
        with pytest.raises(ActorUnavailable):
            asyncio.run(run())
        assert len(actor.calls) == 1


def test_the_handles_step_records_and_finishes_leave_as_one_apply() -> None:
    actor = FakeActor()
    store = store_handle(actor)
    lease, stale = Lease("t1", "w", 1), Lease("t2", "w", -1)

    async def run() -> list[Any]:
        return await asyncio.gather(
            store.record_step(lease, "a", b"x", elapsed_s=0.5),
            store.finish(lease, TaskStatus.SUCCEEDED, 1, None),
            store.finish(stale, TaskStatus.SUCCEEDED, 1, None),
            return_exceptions=True)

    done = asyncio.run(run())
    assert done[:2] == ["record_step done", "finish done"] and isinstance(done[2], LeaseLost)
    ((method, (writes,), kwargs),) = actor.calls
    assert method == "apply" and kwargs == {}
    assert writes == [
        ("record_step", {"lease": lease, "key": "a", "output": b"x", "blobs": {}, "elapsed_s": 0.5}),
        ("finish", {"lease": lease, "status": TaskStatus.SUCCEEDED, "output": 1, "error": None}),
        ("finish", {"lease": stale, "status": TaskStatus.SUCCEEDED, "output": 1, "error": None}),
    ]
