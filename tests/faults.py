"""Fault injection for the chaos test and the chaos soak: find a runtime actor's process by kind, SIGKILL
it, see it come back; and read the side-effect logs of ``tests.apps.chaos`` against the Store.

Actors are found by name in the runtime's Ray namespace and their processes through Ray's actor table
(``ray._private.state.actors``: no dashboard needed). Restartable actors (the control plane) come
back under the same actor id with ``NumRestarts`` one higher; workers and agent replicas are replaced
by their pool under a new name.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import ray
from ray._private import state

from runtime.actors import names
from runtime.actors.handles import actor_names
from tests.apps.chaos import AGENT_LOG, PLAIN_KEYS, STEPS_LOG, TOOL_LOG


class Kind(StrEnum):
    """The kinds of runtime actor a fault test kills, by the name prefix they are registered under."""

    STORE = "store"
    DISPATCHER = "dispatcher"
    WORKER_POOL = "pool:workers"
    AGENT_POOL = "pool:"
    MAILBOX = "queue:agent:"
    GATEKEEPER = "gates"
    ENGINE = "engine:"
    TOOL_EXECUTOR = "tools:"
    EVENTS = "events"
    WORKER = "worker:"
    AGENT_REPLICA = "agent:"

    @property
    def replaced(self) -> bool:
        """Pool members are not restarted: their pool starts another under a new name."""
        return self in (Kind.WORKER, Kind.AGENT_REPLICA)

    def matches(self, name: str) -> bool:
        if self in (Kind.STORE, Kind.DISPATCHER, Kind.WORKER_POOL, Kind.GATEKEEPER, Kind.EVENTS):
            return name == self.value
        if self is Kind.AGENT_POOL:
            return name.startswith("pool:") and name != Kind.WORKER_POOL.value
        return name.startswith(self.value)


@dataclass(frozen=True)
class Victim:
    """One actor as it was just before it was killed."""

    kind: Kind
    name: str
    actor_id: str
    pid: int
    restarts: int
    siblings: frozenset[str] = field(default_factory=frozenset)  # same kind, alive at the kill


def actor_info(actor_id: str) -> dict[str, Any]:
    return dict(state.actors(actor_id=actor_id) or {})


def alive_of_kind(kind: Kind, namespace: str) -> dict[str, dict[str, Any]]:
    """Name -> actor-table entry of every live actor of ``kind`` in the namespace."""
    found = {}
    for name in actor_names(namespace):
        if not kind.matches(name):
            continue
        try:
            # A hosted service (the dispatcher, a pool, a mailbox, ...) dies with its host's process.
            handle = ray.get_actor(names.host_of(name) or name, namespace=namespace)
        except ValueError:
            continue  # gone since it was listed
        info = actor_info(handle._actor_id.hex())
        if info.get("State") == "ALIVE" and info.get("Pid"):
            found[name] = info
    return found


def pick(kind: Kind, namespace: str, prefer: str | None = None,
         choose: Any = None) -> Victim | None:
    """An actor of ``kind`` that is alive now (``prefer`` if it is), or None if none is."""
    alive = alive_of_kind(kind, namespace)
    if not alive:
        return None
    names = sorted(alive)
    name = prefer if prefer in alive else (choose(names) if choose else names[0])
    info = alive[name]
    return Victim(kind, name, info["ActorID"], int(info["Pid"]), int(info["NumRestarts"]),
                  frozenset(names))


def kill(victim: Victim) -> None:
    """SIGKILL the actor's process: a real crash, no clean-up of any kind runs."""
    try:
        os.kill(victim.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass  # it died on its own meanwhile: the same for what follows


def came_back(victim: Victim, namespace: str) -> bool:
    """A restartable actor is alive again after a restart; a pool member has a new sibling."""
    if victim.kind.replaced:
        return bool(set(alive_of_kind(victim.kind, namespace)) - victim.siblings)
    info = actor_info(victim.actor_id)
    return info.get("State") == "ALIVE" and int(info.get("NumRestarts", 0)) > victim.restarts


# -- side effects against the Store ----------------------------------------------------------------


@dataclass
class Effects:
    """What the side-effect logs of ``tests.apps.chaos`` say ran, and the Store says was recorded."""

    plain: dict[tuple[str, str], list[float]]  # (task, key) -> start time of each run of a ctx.step
    agent: dict[str, int]  # task -> handler runs
    tool: dict[str, int]  # task -> tool runs
    recorded: dict[tuple[str, str], float]  # (task, key) -> when the Store recorded the step
    runs: dict[str, int]  # task -> claims of it (each run of a task runs a step at most once)

    def repeated(self, tasks: Iterable[str] | None = None) -> list[tuple[str, str, float, float]]:
        """Runs of a plain step that started after the Store had recorded it as completed:
        (task, key, started, recorded). Fencing makes any such run a bug: a stale run stops at its
        first write after the task was claimed again, and the claim precedes the new record."""
        wanted = None if tasks is None else set(tasks)
        out: list[tuple[str, str, float, float]] = []
        for (task_id, key), starts in sorted(self.plain.items()):
            if wanted is not None and task_id not in wanted:
                continue
            at = self.recorded.get((task_id, key))
            out.extend((task_id, key, s, at) for s in starts if at is not None and s > at)
        return out

    def over_runs(self, tasks: Iterable[str] | None = None) -> list[tuple[str, str, int, int]]:
        """Plain steps that ran more often than their task was run: (task, key, ran, runs)."""
        wanted = None if tasks is None else set(tasks)
        return [(t, k, len(s), self.runs.get(t, 0)) for (t, k), s in sorted(self.plain.items())
                if (wanted is None or t in wanted) and len(s) > self.runs.get(t, 0)]

    def missing(self, tasks: Iterable[str]) -> list[tuple[str, str]]:
        """Plain steps of finished tasks that never ran (no line at all)."""
        return [(t, k) for t in tasks for k in PLAIN_KEYS if not self.plain.get((t, k))]

    def rerun_interrupted(self, tasks: Iterable[str] | None = None) -> int:
        """Extra runs of plain steps that were interrupted before they were recorded (allowed)."""
        wanted = None if tasks is None else set(tasks)
        return sum(len(s) - 1 for (t, _), s in self.plain.items()
                   if (wanted is None or t in wanted) and len(s) > 1)


def _lines(path: Path) -> list[list[str]]:
    if not path.exists():
        return []
    return [line.split() for line in path.read_text().splitlines() if line.strip()]


#: Where a test reads the Store's tables: the SQLite file, or a PostgreSQL conninfo (with its schema).
Database = Path | str


def query(database: Database, sql: str) -> list[tuple[Any, ...]]:
    """Rows of ``sql`` read straight from the Store's database (no Store call)."""
    if isinstance(database, Path):
        with sqlite3.connect(database, timeout=30) as db:
            return [tuple(r) for r in db.execute(sql).fetchall()]
    import psycopg

    with psycopg.connect(database, autocommit=True) as conn:
        return [tuple(r) for r in conn.execute(sql).fetchall()]


def read_effects(side_dir: Path, database: Database) -> Effects:
    plain: dict[tuple[str, str], list[float]] = defaultdict(list)
    for task_id, key, at, _pid in _lines(side_dir / STEPS_LOG):
        plain[(task_id, key)].append(float(at))
    agent: dict[str, int] = defaultdict(int)
    for task_id, *_ in _lines(side_dir / AGENT_LOG):
        agent[task_id] += 1
    tool: dict[str, int] = defaultdict(int)
    for task_id, *_ in _lines(side_dir / TOOL_LOG):
        tool[task_id] += 1
    recorded = {(t, k): at for t, k, at in query(database, "SELECT task_id, key, created_at FROM steps")}
    runs = {t: n for t, n in query(database, "SELECT id, runs FROM tasks")}
    return Effects(dict(plain), dict(agent), dict(tool), recorded, runs)


_TASK_COLUMNS = ("id", "status", "runs", "crashes", "error", "created_at", "started_at",
                 "finished_at")


def task_rows(database: Database) -> dict[str, dict[str, Any]]:
    """Every task's status, run count and times, read from the Store's database (no Store call)."""
    rows = query(database, f"SELECT {', '.join(_TASK_COLUMNS)} FROM tasks")
    return {r[0]: dict(zip(_TASK_COLUMNS, r, strict=True)) for r in rows}


def recorded_keys(database: Database) -> dict[str, set[str]]:
    """Task -> the keys of its recorded steps."""
    out: dict[str, set[str]] = defaultdict(set)
    for task_id, key in query(database, "SELECT task_id, key FROM steps"):
        out[task_id].add(key)
    return out


def started_keys(side_dir: Path) -> dict[str, set[str]]:
    """Task -> the keys whose code (step, handler or tool) has started at least once."""
    out: dict[str, set[str]] = defaultdict(set)
    for log in (STEPS_LOG, AGENT_LOG, TOOL_LOG):
        for task_id, key, *_ in _lines(side_dir / log):
            out[task_id].add(key)
    return out


def wait_until(condition: Any, timeout_s: float, interval_s: float = 0.05) -> Any:
    """Poll ``condition`` until it returns something truthy or ``timeout_s`` passes; returns its
    last value (falsy on timeout). For waits that may give up, unlike tests.conftest.wait_for."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval_s)
