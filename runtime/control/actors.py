"""The actor forms of the runtime's logic classes and their creation (Ray Serve's rule: the logic
lives in its module, unaware of how it is started; its actor form and its start live here): the
services the control host builds (``control/host.py``), and the Store, the engines and the tool
executors, actors of their own. (A pool creates its own members: ``WorkerPool``, ``AgentPool``,
and ``EnginePool`` through the start function it is given.)

Each actor form is built from small values (the settings, the app modules, a role), which Ray keeps
with the actor's spec, so a restart can always build it again; it finds its peers by name
(``control.peers``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import ray

from runtime.actors import names
from runtime.actors.cluster import named_actor_options, store_placement
from runtime.actors.processes import titled
from runtime.authoring.catalog import load_catalog
from runtime.control.peers import find_peers
from runtime.core.config import Settings
from runtime.core.errors import ActorUnavailable
from runtime.durable.dispatch import Dispatcher
from runtime.durable.worker import WorkerHandle, WorkerPool
from runtime.events.bus import EventBus
from runtime.flow.gates import GateClient, GateKeeperHandle
from runtime.llm.engine import EngineActor, EngineHandle, engine_actor_options, find_engines
from runtime.llm.pool import EnginePool
from runtime.replicas.replica import AgentPool
from runtime.store.actor import StoreActor, StoreHandle
from runtime.store.connect import store_for
from runtime.tools import Registry
from runtime.tools.executor import ToolExecutor, ToolExecutorHandle
from runtime.tools.mcp import mcp_tools


class DispatcherActor(Dispatcher):
    """A Dispatcher that finds the Store by name and reaches workers by name."""

    def __init__(self, settings: Settings, apps: list[str]) -> None:
        super().__init__(settings, store_for(settings), apps, WorkerDirectory(settings.namespace))


class WorkerDirectory:
    """Reaches a worker by its id (the dispatcher pushes cancels through it)."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace

    async def cancel(self, owner: str, task_id: str) -> None:
        try:
            handle = WorkerHandle(ray.get_actor(names.worker(owner), namespace=self.namespace))
            await handle.cancel(task_id)
        except (ValueError, ActorUnavailable):
            pass  # the worker is gone; its lease runs out and the replay sees the cancel


class WorkerPoolActor(WorkerPool):
    """A WorkerPool that finds the Store, the dispatcher, the mailboxes, the engines and the tool
    executors by name."""

    def __init__(self, settings: Settings, apps: list[str]) -> None:
        peers = find_peers(settings, apps)
        super().__init__(settings, apps, peers.store, peers.dispatcher(settings.namespace),
                         dict(peers.mailboxes), peers.router, peers.tools)


class AgentPoolActor(AgentPool):
    """The AgentPool of one role; it finds its mailbox, the Store, the engines and the tool
    executors by name."""

    def __init__(self, role: str, settings: Settings, apps: list[str]) -> None:
        peers = find_peers(settings, apps)
        agent_cls = peers.catalog.agents[role]
        super().__init__(role, agent_cls, agent_cls.pool_config(settings.agents.get(role)), settings,
                         peers.mailboxes[role], peers.store, peers.router, peers.tools)


class EventBusActor(EventBus):
    """The EventBus (and scheduler); it finds the Store and the mailboxes by name."""

    def __init__(self, settings: Settings, apps: list[str]) -> None:
        peers = find_peers(settings, apps)
        super().__init__(settings, peers.store, peers.catalog, dict(peers.mailboxes))


class ToolExecutorActor(ToolExecutor):
    """A ToolExecutor with its tools from the app modules, and the Store and the gate keeper looked
    up in the runtime's namespace."""

    def __init__(self, settings: Settings, apps: list[str]) -> None:
        tools = {**load_catalog(apps).tools, **mcp_tools(settings)}  # MCP tools: their sessions
        super().__init__(settings, Registry(tools), store_for(settings),
                         GateClient(GateKeeperHandle.find(settings.namespace)))


def start_tool_executors(settings: Settings, apps: list[str]) -> list[ToolExecutorHandle]:
    """Start the tool executors, spread over the cluster's nodes."""
    cfg = settings.tools
    handles = []
    for i in range(cfg.executors):
        name = names.tool_executor(i)
        actor = (ray.remote(ToolExecutorActor)
                 .options(**named_actor_options(settings, name, num_cpus=cfg.executor_num_cpus,
                                                max_concurrency=10_000,
                                                scheduling_strategy="SPREAD"))
                 .remote(settings, apps))
        handles.append(ToolExecutorHandle(actor, name, settings.namespace))
    return handles


def start_store(settings: Settings) -> StoreHandle:
    """Create the Store actor, named so that every process can find it (on the head node with
    SQLite)."""
    actor = (ray.remote(StoreActor)
             .options(**named_actor_options(settings, names.STORE, max_concurrency=1000,
                                            **store_placement(settings)))
             .remote(settings))
    return StoreHandle.of(actor, settings.namespace)


def start_engine(settings: Settings, model: str, index: int, gated: bool = True) -> EngineHandle:
    """Create the engine actor ``engine:<model>:<index>`` (restartable, named)."""
    name = names.engine(model, index)
    actor = (ray.remote(titled(EngineActor, f"EngineActor({model})"))
             .options(**named_actor_options(settings, name, max_concurrency=1000,
                                            **engine_actor_options(settings)))
             .remote(settings, model, gated))
    return EngineHandle(actor, name, settings.namespace)


def start_engines(settings: Settings, models: list[str],
                  gated: bool = True) -> dict[str, list[EngineHandle]]:
    """The engines every model always has (``settings.engine_replicas[0]`` each)."""
    return {model: [start_engine(settings, model, i, gated)
                    for i in range(settings.engine_replicas[0])] for model in models}


class EnginePoolActor(EnginePool):
    """An EnginePool that finds and creates the engine actors of its namespace by name."""

    def __init__(self, settings: Settings, model: str,
                 demand: Callable[[], Awaitable[int]] | None = None) -> None:
        super().__init__(settings, model, lambda: _engines_by_index(settings.namespace, model),
                         lambda index: start_engine(settings, model, index), demand)
        asyncio.get_running_loop().create_task(self.start())  # at first start and after a restart


def _engines_by_index(namespace: str, model: str) -> dict[int, EngineHandle]:
    return {int(names.engine_of(h.name or "")[1]): h
            for h in find_engines(namespace).get(model, [])}
