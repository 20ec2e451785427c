"""Every process of a runtime, as an operator looks for one: its kind, its role, its replica, its pid,
its node, its state and its restarts (``raysquad ps``, ``GET /v1/actors``, the status page).

The runtime's actors are found by their names (``names``), which say what each is; the HTTP app's
Serve actors by Serve's names for them. Pids, nodes, states and restarts come from Ray's actor
table in the GCS, which needs no dashboard (Ray's state API, ``ray list actors``, does; a runtime
may run without one). The process titles say the same: an agent replica is
``ray::AgentReplica(<role>)`` in ``ps`` and ``top`` (``titled``).
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import ray

from runtime.actors import names
from runtime.actors.cluster import HEAD_NODE_RESOURCE
from runtime.actors.handles import hosted_names

T = TypeVar("T")

SERVE_NAMESPACE = "serve"
#: The order ``ps`` lists kinds in: the Store and the control host first, the HTTP app last.
KINDS = ("store", "control", "worker", "agent", "engine", "tools", "serve")


@dataclass(frozen=True)
class Process:
    """One actor of the runtime, a process of its own."""

    name: str
    kind: str
    role: str | None
    replica: str | None
    pid: int | None
    node: str | None
    state: str
    restarts: int
    #: The services a control host holds (dispatcher, events, gates, pools, mailboxes).
    hosts: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "hosts": list(self.hosts)}


@functools.cache
def titled(cls: type[T], title: str) -> type[T]:
    """``cls`` under the name ``title`` (one class per title): Ray titles an actor's process
    ``ray::<class name>`` and sets that title again after each call, so a subclass named for the
    role (``AgentReplica(researcher)``) is what lets the system's ``ps`` and ``top`` show it."""
    return type(title, (cls,), {"__qualname__": title, "__module__": cls.__module__})


def describe(name: str, namespace: str) -> tuple[str, str | None, str | None] | None:
    """(kind, role, replica) of the actor ``name`` of ``namespace``'s runtime, or None when it is
    not one of the runtime's (a Serve actor of another app, say)."""
    if namespace == SERVE_NAMESPACE:
        return None
    if name == names.STORE:
        return "store", None, None
    if name == names.CONTROL:
        return "control", None, None
    if name.startswith(names.WORKER_PREFIX):
        return "worker", None, name[len(names.WORKER_PREFIX):]
    if name.startswith(names.AGENT_REPLICA_PREFIX):
        replica = name[len(names.AGENT_REPLICA_PREFIX):]
        return "agent", names.role_of_replica(replica), replica
    if name.startswith(names.ENGINE_PREFIX):
        model, index = names.engine_of(name)
        return "engine", model, index
    if name.startswith(names.TOOLS_PREFIX):
        return "tools", None, name[len(names.TOOLS_PREFIX):]
    return None


def describe_serve(name: str, app: str) -> tuple[str, str | None, str | None] | None:
    """(kind, role, replica) of a Serve actor that serves the app ``app`` (the runtime's
    namespace names its HTTP app): its controller, its proxies and the app's replicas."""
    if name == "SERVE_CONTROLLER_ACTOR":
        return "serve", "controller", None
    if name.startswith("SERVE_PROXY_ACTOR"):
        return "serve", "proxy", None
    if name.startswith("SERVE_REPLICA::"):
        parts = name[len("SERVE_REPLICA::"):].split("#")
        if len(parts) == 3 and parts[0] == app:
            return "serve", parts[1], parts[2]
    return None


def processes(namespace: str, dead: bool = False) -> list[Process]:
    """The runtime's processes in ``namespace`` (this process must have joined the cluster), with
    those that have ended when ``dead`` (a replaced replica's last pid, say)."""
    nodes = {n["NodeID"]: _node_label(n) for n in ray.nodes()}
    found: list[Process] = []
    for actor in actor_table():
        if not actor.name or (actor.state == "DEAD" and not dead):
            continue
        what = describe_serve(actor.name, namespace) if actor.ray_namespace == SERVE_NAMESPACE \
            else describe(actor.name, namespace) if actor.ray_namespace == namespace else None
        if what is None:
            continue
        kind, role, replica = what
        found.append(Process(name=actor.name, kind=kind, role=role, replica=replica,
                             pid=actor.pid or None, node=nodes.get(actor.address.node_id.hex()),
                             state=actor.state, restarts=actor.num_restarts,
                             hosts=tuple(hosted_names(namespace)) if kind == "control" else ()))
    return sorted(found, key=_order)


@dataclass(frozen=True)
class _Actor:
    name: str
    ray_namespace: str
    state: str
    pid: int
    num_restarts: int
    address: Any


def actor_table() -> list[_Actor]:
    """Every actor the GCS knows of, live and ended: Ray's actor table, read as the dashboard's
    state API reads it, but straight from the GCS (``ray._private.state``, Ray's own accessor;
    ``state.actor_table`` drops each actor's namespace, so its records are parsed here)."""
    from ray._private.state import state
    from ray.core.generated import gcs_pb2

    table: Any = gcs_pb2.ActorTableData  # type: ignore[attr-defined]  # generated, untyped
    rows = state._connect_and_get_accessor().get_actor_table(None, None)
    return [_Actor(d.name, d.ray_namespace, table.ActorState.Name(d.state), d.pid, d.num_restarts,
                   d.address) for d in map(table.FromString, rows)]


def _order(p: Process) -> tuple[int, int, str, str]:
    return p.state == "DEAD", KINDS.index(p.kind), p.role or "", p.name


def _node_label(node: dict[str, Any]) -> str:
    address = str(node.get("NodeManagerAddress", "?"))
    return f"{address} (head)" if HEAD_NODE_RESOURCE in (node.get("Resources") or {}) else address
