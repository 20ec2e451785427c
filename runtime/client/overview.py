"""A snapshot of a running runtime for operators: queues, pools, workers, engines, gates, events.

``overview`` asks every part with a short deadline and reports one that does not answer as down,
so a view built on it (``raysquad top``) keeps refreshing while an actor restarts.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, TypeVar

from runtime.actors import names
from runtime.actors.handles import actor_names
from runtime.durable.dispatch import DispatcherHandle
from runtime.durable.worker import POOL_NAME, WorkerHandle, WorkerPoolHandle
from runtime.events.bus import EventBusHandle
from runtime.flow.gates import GateKeeperHandle
from runtime.flow.queue import MailboxHandle
from runtime.llm.engine import find_engines
from runtime.replicas.replica import AgentPoolHandle
from runtime.store.actor import StoreHandle

DEADLINE_S = 2.0
T = TypeVar("T")


async def _ask(call: Callable[[], Awaitable[T]]) -> T | None:
    """``call()``'s answer, or None: the actor's lookup by name is inside, since an actor listed a
    moment ago may be gone by now (a worker that stopped), which is "down", not an error."""
    try:
        return await asyncio.wait_for(call(), DEADLINE_S)
    except Exception:  # noqa: BLE001 - down, restarting, or gone since it was listed
        return None


def _named_call(handle: Any, name: str, namespace: str, method: str,
                *args: Any) -> Callable[[], Awaitable[Any]]:
    """``handle.named(name, namespace).<method>(*args)``, looked up only when called."""
    return lambda: getattr(handle.named(name, namespace), method)(*args)


async def overview(namespace: str) -> dict[str, Any]:
    """Every part of the runtime in ``namespace``, as plain values (None where one is down)."""
    tasks = _ask(lambda: DispatcherHandle.named(names.DISPATCHER, namespace).stats(DEADLINE_S))
    mailboxes = [name[len(names.AGENT_MAILBOX_PREFIX):]
                 for name in actor_names(namespace, names.AGENT_MAILBOX_PREFIX)]
    pools = [name[len(names.POOL_PREFIX):] for name in actor_names(namespace, names.POOL_PREFIX)
             if name != names.WORKER_POOL and not name.startswith(names.ENGINE_POOL_PREFIX)]
    engines = find_engines(namespace)
    gates = _ask(lambda: GateKeeperHandle.named(names.GATES, namespace).stats(DEADLINE_S))
    events = _ask(lambda: EventBusHandle.named(names.EVENTS, namespace).stats(DEADLINE_S)) \
        if actor_names(namespace, names.EVENTS) else _none()
    dead = _ask(lambda: StoreHandle.named(names.STORE, namespace).dead_letters("dead", None, None,
                                                                         1000))

    worker_ids = await _ask(lambda: WorkerPoolHandle.named(POOL_NAME, namespace).workers(
        DEADLINE_S)) or []
    loads = await asyncio.gather(*(_ask(_named_call(WorkerHandle, names.worker(w), namespace, "load"))
                                   for w in worker_ids))
    mailbox_stats = await asyncio.gather(*(
        _ask(_named_call(MailboxHandle, names.agent_mailbox(m), namespace, "stats", DEADLINE_S))
        for m in mailboxes))
    pool_stats = await asyncio.gather(*(
        _ask(_named_call(AgentPoolHandle, names.agent_pool(p), namespace, "stats", DEADLINE_S))
        for p in pools))
    engine_loads = {model: await asyncio.gather(*(_ask(partial(h.load, DEADLINE_S))
                                                  for h in handles))
                    for model, handles in engines.items()}
    dead_letters = await dead
    return {
        "tasks": await tasks,
        "workers": {w: load for w, load in zip(worker_ids, loads, strict=True)},
        "mailboxes": dict(zip(mailboxes, mailbox_stats, strict=True)),
        "pools": dict(zip(pools, pool_stats, strict=True)),
        "engines": engine_loads,
        "gates": await gates,
        "events": await events,
        "dead_letters": None if dead_letters is None else len(dead_letters),
    }


async def _none() -> None:
    return None
