"""Every actor name of a runtime, in one place.

A runtime's actors live in its Ray namespace under these names; one runtime per namespace. Plain
constants are whole names; the functions make the names of actors there are several of (a worker, an
agent role's pool, mailbox and replicas, an engine, a tool executor); the ``*_PREFIX`` constants
find those by prefix (``handles.actor_names``).
"""

from __future__ import annotations

STORE = "store"
CONTROL = "control"  # the process that hosts the control plane's services (control/host.py)
DISPATCHER = "dispatcher"
EVENTS = "events"  # the event bus and the scheduler
GATES = "gates"  # the gate keeper
WORKER_POOL = "pool:workers"

WORKER_PREFIX = "worker:"
POOL_PREFIX = "pool:"  # agent pools, the worker pool, engine pools
AGENT_REPLICA_PREFIX = "agent:"
MAILBOX_PREFIX = "queue:"
AGENT_MAILBOX_PREFIX = "queue:agent:"
ENGINE_PREFIX = "engine:"
ENGINE_POOL_PREFIX = "pool:engine:"
TOOLS_PREFIX = "tools:"


def worker(worker_id: str) -> str:
    return f"{WORKER_PREFIX}{worker_id}"


def agent_pool(role: str) -> str:
    return f"{POOL_PREFIX}{role}"


def agent_replica(replica_id: str) -> str:
    return f"{AGENT_REPLICA_PREFIX}{replica_id}"


def agent_replica_id(role: str, started: int, tag: str) -> str:
    """A role's replica id: ``<role>-<n>-<tag>`` (``role_of_replica`` reads the role back)."""
    return f"{role}-{started}-{tag}"


def role_of_replica(replica_id: str) -> str:
    return replica_id.rsplit("-", 2)[0]


def agent_mailbox(role: str) -> str:
    return f"{AGENT_MAILBOX_PREFIX}{role}"


def engine(model: str, index: int) -> str:
    return f"{ENGINE_PREFIX}{model}:{index}"


def engine_of(name: str) -> tuple[str, str]:
    """(model, index) of an engine actor's name ``engine:<model>:<index>`` (a model may hold ':')."""
    model, _, index = name[len(ENGINE_PREFIX):].rpartition(":")
    return model, index


def engine_pool(model: str) -> str:
    return f"{ENGINE_POOL_PREFIX}{model}"


def tool_executor(index: int) -> str:
    return f"{TOOLS_PREFIX}{index}"


def host_of(name: str) -> str | None:
    """The actor that hosts the service ``name`` (``CONTROL``), or None where ``name`` is an actor's
    own: the dispatcher, the event bus, the gate keeper, every pool manager and every mailbox live in
    one process, the control host; the Store, workers, agent replicas, engines and tool executors
    (the processes that run user code, models or the database) each have their own."""
    hosted = name in (DISPATCHER, EVENTS, GATES) or name.startswith((POOL_PREFIX, MAILBOX_PREFIX))
    return CONTROL if hosted else None


#: The actors whose absence stops work (readiness), by name or prefix; workers and agent replicas
#: are their pools' to replace.
CONTROL_PLANE = (STORE, DISPATCHER, POOL_PREFIX, MAILBOX_PREFIX, GATES, ENGINE_PREFIX, TOOLS_PREFIX,
                 EVENTS)
#: Every process of a runtime, by actor name or prefix, in the order they are stopped: what feeds
#: work first (the control host: events, pools, dispatcher), the Store last.
STOP_ORDER = (CONTROL, WORKER_PREFIX, AGENT_REPLICA_PREFIX, ENGINE_PREFIX, TOOLS_PREFIX, STORE)
