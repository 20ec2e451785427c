"""The control host: one process for the control plane's small services.

The gate keeper, the dispatcher, the event bus (and scheduler), the worker pool, each agent role's
pool and mailbox, and the engine pools (where engines autoscale) are each a few kilobytes of state
and an event loop's worth of work; as actors of their own they cost a Python process each (55 to 70
MiB, a CPU-second to start on two cores). Here they live in one actor, each under its own name
(``names.host_of``): a handle names the service and the host's ``call`` runs the method on it, so
callers do not know the difference (``handles.ActorHandle``).

What a death costs is unchanged in kind: the host restarts (``max_restarts=-1``) and builds every
service again, each rebuilding its state from the Store, its mailbox or its members as it did as an
actor of its own (``handles.restarted`` is true for each); while it is down, ``/readyz`` names every
service it holds. The Store, the workflow workers, the agent replicas, the engines and the tool
executors keep processes of their own: they run the database, user code and models.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
from typing import Any

import ray

from runtime.actors import names
from runtime.actors.cluster import named_actor_options
from runtime.actors.handles import ActorHandle, H, restarted, write_hosted_names
from runtime.authoring.catalog import load_catalog
from runtime.control.actors import (
    AgentPoolActor,
    DispatcherActor,
    EnginePoolActor,
    EventBusActor,
    WorkerPoolActor,
)
from runtime.core.config import Settings
from runtime.core.errors import ActorUnavailable
from runtime.flow.gates import GateKeeper
from runtime.flow.queue import QueueActor
from runtime.llm.pool import autoscaled

log = logging.getLogger(__name__)

MAILBOX_CAPACITY = 100_000  # messages; in bytes: settings.mailbox_capacity_bytes


class ControlHost:
    """The actor that holds the control plane's services by name and runs calls on them.

    Built in two steps on a first start: the gate keeper at once (engines and tool executors,
    started next, find it), everything else in ``start`` once they are up. After a restart every
    service is built at once, in the same order; each one's own restart logic then rebuilds it.
    """

    def __init__(self, settings: Settings, apps: list[str], models: list[str]) -> None:
        self.settings = settings
        self.apps = list(apps)
        self.models = list(models)
        self.services: dict[str, Any] = {}
        self._built = asyncio.Event()
        self.services[names.GATES] = GateKeeper(settings)
        if restarted():
            for name, build in self._plan():
                self.services[name] = build()
            self._built.set()
        self._write_names()

    def _plan(self) -> list[tuple[str, Any]]:
        """The services after the gate keeper, in the order they are built: each finds the ones
        before it by name."""
        settings, apps = self.settings, self.apps
        roles = list(load_catalog(apps).agents)
        plan: list[tuple[str, Any]] = []
        if autoscaled(settings):
            plan += [(names.engine_pool(model), lambda model=model: EnginePoolActor(
                settings, model, functools.partial(self._agent_demand, model)))
                for model in self.models]
        plan += [(names.agent_mailbox(role), lambda role=role: QueueActor(
            names.agent_mailbox(role).removeprefix(names.MAILBOX_PREFIX), MAILBOX_CAPACITY,
            settings.aging_per_s, capacity_bytes=settings.mailbox_capacity_bytes))
            for role in roles]
        plan += [(names.agent_pool(role), lambda role=role: AgentPoolActor(role, settings, apps))
                 for role in roles]
        plan += [(names.DISPATCHER, lambda: DispatcherActor(settings, apps)),
                 (names.WORKER_POOL, lambda: WorkerPoolActor(settings, apps)),
                 (names.EVENTS, lambda: EventBusActor(settings, apps))]
        return plan

    async def _agent_demand(self, model: str) -> int:
        """The messages waiting in the mailboxes of the roles that run on ``model``: each will make
        model calls once a replica takes it (the engine pool grows on them)."""
        catalog = load_catalog(self.apps)
        waiting = 0
        for role, agent_cls in catalog.agents.items():
            if (agent_cls.model or self.settings.default_model) != model:
                continue
            mailbox = self.services.get(names.agent_mailbox(role))
            if mailbox is not None:
                waiting += (await mailbox.stats())["depth"]
        return waiting

    def _write_names(self) -> None:
        write_hosted_names(self.settings.namespace, list(self.services))

    async def start(self) -> int:
        """Build the services after the gate keeper and start each in order (the agent pools, the
        dispatcher recovering the Store's unfinished tasks, the workers, the event bus); the number
        of tasks recovered."""
        recovered = 0
        try:
            for name, build in self._plan():
                service = self.services[name] = build()
                if name == names.DISPATCHER:
                    recovered = await service.start()
                elif hasattr(service, "start"):  # (each start is a no-op when already started)
                    await service.start()
        finally:
            self._write_names()
            self._built.set()
        return recovered

    async def call(self, service: str, method: str, *args: Any, **kwargs: Any) -> Any:
        """Run ``method`` of ``service`` (awaited if it is a coroutine); a service not (yet) built
        is waited for while the host starts, else it is unavailable."""
        target = self.services.get(service)
        if target is None:
            await self._built.wait()
            target = self.services.get(service)
            if target is None:
                raise ActorUnavailable(service, 0.0)
        if method == "__ray_ready__":
            return True
        if method == "health" and not hasattr(target, "health"):
            return "ok"
        result = getattr(target, method)(*args, **kwargs)
        return await result if inspect.isawaitable(result) else result


def start_control(settings: Settings, apps: list[str], models: list[str]) -> ControlHandle:
    """Create the control host (the Store must be up); its gate keeper serves at once, the rest
    after ``ControlHandle.start``."""
    actor = (ray.remote(ControlHost)
             .options(**named_actor_options(settings, names.CONTROL, max_concurrency=100_000))
             .remote(settings, apps, models))
    return ControlHandle(actor, names.CONTROL, settings.namespace)


class ControlHandle(ActorHandle):
    """The control host itself (its services are reached through their own handles)."""

    async def start(self) -> int:
        return await self.via(ControlHost.start, idempotent=False)()

    def service(self, handle_cls: type[H], name: str) -> H:
        """A handle of ``handle_cls`` on the hosted service ``name``."""
        return handle_cls(self.actor, name, self.namespace)
