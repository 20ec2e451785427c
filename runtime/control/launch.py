"""Wire a running runtime: the Store, engines, mailboxes and agent pools, the dispatcher, the workers.

``Runtime.start`` is what ``raysquad up`` and driver scripts call. By default the actors it creates
belong to the calling process and stop with it (or with ``Runtime.stop``); with
``Settings.detached`` they are detached actors that outlive it, and ``stop_runtime`` (``raysquad
down``) stops them. Either way every actor restarts when it dies, and one namespace holds at most one
runtime.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import ray

from runtime.actors import cluster, names
from runtime.actors.handles import actor_names, forget_hosted_names, process_names
from runtime.authoring.catalog import Catalog, app_sources, load_catalog
from runtime.client.client import AsyncClient, Client, address_file
from runtime.client.ops import Ops
from runtime.control.actors import start_engines, start_store, start_tool_executors
from runtime.control.host import ControlHandle, start_control
from runtime.core.config import Settings
from runtime.core.errors import RuntimeAlreadyRunning
from runtime.durable.dispatch import DispatcherHandle
from runtime.durable.worker import WorkerPoolHandle
from runtime.events.bus import EventBusHandle
from runtime.flow.gates import GateKeeperHandle
from runtime.flow.queue import MailboxHandle
from runtime.llm.engine import EngineHandle
from runtime.llm.pool import EnginePoolHandle, autoscaled
from runtime.replicas.replica import AgentPoolHandle
from runtime.store.actor import StoreHandle
from runtime.store.connect import store_for
from runtime.store.owner import own_store
from runtime.store.service import check_store_settings
from runtime.tools.executor import ToolExecutorHandle
from runtime.tools.mcp import with_mcp_tools

log = logging.getLogger(__name__)

def _check_store_owner(settings: Settings) -> None:
    """Raise StoreInUse if another runtime holds the Store (store/owner.py); hold nothing."""
    owner = own_store(settings)
    if owner is not None:
        owner.release()


@dataclass
class Runtime:
    settings: Settings
    apps: list[str]
    catalog: Catalog
    store: StoreHandle
    dispatcher: DispatcherHandle
    workers: WorkerPoolHandle
    mailboxes: dict[str, MailboxHandle]
    pools: dict[str, AgentPoolHandle]
    engines: dict[str, list[EngineHandle]]
    gatekeeper: GateKeeperHandle
    control: ControlHandle
    tool_executors: list[ToolExecutorHandle] = field(default_factory=list)
    engine_pools: dict[str, EnginePoolHandle] = field(default_factory=dict)
    events: EventBusHandle | None = None
    started_ray: bool = False
    _stopped: bool = field(default=False, repr=False)
    _client: Client | None = field(default=None, repr=False)

    @classmethod
    def start(cls, settings: Settings | None = None, apps: list[str] | None = None,
              models: list[str] | None = None,
              alongside: Callable[[], object] | None = None) -> Runtime:
        """Start every actor of the runtime and recover the Store's unfinished tasks. ``alongside``
        (what else the caller starts on the cluster, such as Serve) runs in a thread meanwhile,
        once Ray is connected; an error of its own is raised here, after the runtime stopped."""
        # The MCP servers' tools are listed here, once, and travel to every process in settings.
        settings = with_mcp_tools(absolute_paths(settings or Settings()))
        apps = list(apps or ["agents"])
        catalog = load_catalog(apps)  # fail here, in the caller, on a bad module
        check_store_settings(settings)  # and on a Store that cannot be opened
        # And on a Store another runtime holds (after a moment's wait for a dying one): before a
        # local cluster starts; on a running cluster, after the plainer "already running" check.
        if not settings.ray_address:
            _check_store_owner(settings)
        ship = app_sources(apps) if settings.ray_address and settings.ship_apps else None
        started_ray = cluster.connect(settings, ship)
        if actor_names(settings.namespace, names.STORE):
            if started_ray:
                ray.shutdown()
            raise RuntimeAlreadyRunning(settings.namespace)
        if settings.ray_address:
            _check_store_owner(settings)
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="alongside") as beside:
            alongside_done = beside.submit(alongside) if alongside else None
            try:
                rt = cls._start_actors(settings, apps, catalog, models, started_ray)
                if alongside_done is not None:
                    alongside_done.result()
            except BaseException:
                beside.shutdown(wait=True)  # what runs alongside ends before the clean-up
                # Nothing half-started stays behind (a detached actor would outlive us).
                stop_runtime(settings.namespace)
                if started_ray:
                    ray.shutdown()
                raise
        address_file(settings).write_text(ray.get_runtime_context().gcs_address)
        return rt

    @classmethod
    def _start_actors(cls, settings: Settings, apps: list[str], catalog: Catalog,
                      models: list[str] | None, started_ray: bool) -> Runtime:
        store = start_store(settings)
        asyncio.run(store.ping())
        models = models or catalog.models(settings.default_model, settings.models)
        control = start_control(settings, apps, models)  # its gate keeper serves at once
        engines = start_engines(settings, models)
        asyncio.run(_all(h.ready() for hs in engines.values() for h in hs))
        tool_executors = start_tool_executors(settings, apps)
        # Engine pools, mailboxes, agent pools, the dispatcher (recovering), workers, the event bus.
        recovered = asyncio.run(control.start())
        gatekeeper = control.service(GateKeeperHandle, names.GATES)
        engine_pools = {model: control.service(EnginePoolHandle, names.engine_pool(model))
                        for model in engines} if autoscaled(settings) else {}
        mailboxes = {role: control.service(MailboxHandle, names.agent_mailbox(role))
                     for role in catalog.agents}
        pools = {role: control.service(AgentPoolHandle, names.agent_pool(role))
                 for role in catalog.agents}
        dispatcher = control.service(DispatcherHandle, names.DISPATCHER)
        workers = control.service(WorkerPoolHandle, names.WORKER_POOL)
        events = control.service(EventBusHandle, names.EVENTS)
        log.info("raysquad runtime up: %d workflow(s), %d agent role(s), %d task(s) recovered",
                 len(catalog.workflows), len(catalog.agents), recovered)
        return cls(settings, apps, catalog, store, dispatcher, workers, mailboxes, pools, engines,
                   gatekeeper, control, tool_executors, engine_pools, events, started_ray)

    def client(self) -> Client:
        """A client on this runtime (one per runtime: it runs its calls on one loop thread)."""
        if self._client is None:
            self._client = Client(self.async_client())
        return self._client

    def async_client(self) -> AsyncClient:
        return AsyncClient(store_for(self.settings), self.dispatcher, self.catalog,
                           self.settings.namespace, self.settings.max_input_bytes)

    def ops(self) -> Ops:
        """Operator calls: gate limits (see, change at run time), dead letters (list, replay)."""
        return Ops(self.settings.namespace)

    def stop(self, shutdown_ray: bool | None = None) -> None:
        """Kill every actor of the runtime (tasks in flight resume at the next start)."""
        if self._stopped:
            return
        self._stopped = True
        if self._client is not None:
            self._client.close()
        stop_runtime(self.settings.namespace)
        forget_address(self.settings)
        if shutdown_ray if shutdown_ray is not None else self.started_ray:
            ray.shutdown()

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def forget_address(settings: Settings) -> None:
    """Remove the Ray address this runtime recorded in its data dir, unless another has since."""
    path = settings.data_dir / "ray_address"
    with contextlib.suppress(OSError):
        if path.read_text().strip() == ray.get_runtime_context().gcs_address:
            path.unlink()


async def _all(calls: Iterable[Awaitable[Any]]) -> list[Any]:
    return list(await asyncio.gather(*calls))


def absolute_paths(settings: Settings) -> Settings:
    """Resolve relative paths against the caller's directory, since actors may run anywhere else."""
    vllm = settings.vllm.model_copy(update={"model_path": settings.vllm.model_path.resolve()})
    return settings.model_copy(update={
        "data_dir": settings.data_dir.resolve(), "vllm": vllm,
        "sqlite_path": settings.sqlite_path.resolve() if settings.sqlite_path else None})


def stop_runtime(namespace: str, timeout_s: float = 15.0) -> list[str]:
    """Kill every actor of the runtime in ``namespace`` (detached or not) and wait until their names
    are free, so a runtime started next can take them; returns the names killed. Tasks in flight
    resume at the next start. The caller must be connected to the runtime's Ray cluster."""
    killed = list(dict.fromkeys(n for prefix in names.STOP_ORDER
                                for n in process_names(namespace, prefix)))
    forget_hosted_names(namespace)
    for name in killed:
        try:
            ray.kill(ray.get_actor(name, namespace=namespace), no_restart=True)
        except Exception:  # noqa: BLE001 - already gone is fine
            pass
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(n in killed for n in process_names(namespace)):
        time.sleep(0.05)
    return killed
