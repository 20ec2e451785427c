"""The runtime on a Ray cluster of several nodes (``ray.cluster_utils.Cluster``: a real GCS and one
raylet per node, on this machine), on SQLite and on PostgreSQL.

- Losing a node: workflow workers are spread over two worker nodes; one node is removed (its raylet
  and every process on it killed) while tasks run on it. Every task completes, none is lost, and no
  step recorded as completed runs again (side effects counted in files, ``tests.apps.chaos``).
- Growing onto a new node: under backlog the worker pool wants more workers than the cluster has
  room for; they wait as pending actors, take the node added mid-run, and once the load stops the
  pool shrinks back to its minimum.

The nodes listen on this machine's own address (Ray's default node IP, as for every local
``ray.init`` in the suite); nothing leaves the machine. (``node_ip_address="127.0.0.1"`` is not honoured
by every process of a ``Cluster``: some still dialled the GCS at the default address and hung.)

Workers ask for a custom resource (``worker_slot``) so the test decides which nodes may host them;
the control plane's actors (0 CPUs) may land on any node, so a removed node may take some of them
down too, and they restart elsewhere. With SQLite the Store is pinned to the head node.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import ray
from psycopg import sql
from psycopg.conninfo import make_conninfo
from ray.cluster_utils import Cluster

from runtime import Runtime, Settings, TaskStatus, ToolSettings
from runtime.actors.handles import actor_names
from runtime.core.config import SimulatedEngineConfig
from tests.apps.chaos import STEPS_LOG
from tests.conftest import wait_for
from tests.faults import Database, Kind, actor_info, read_effects, task_rows

APPS = ["tests.apps.chaos"]
WORKFLOW = "chaos_steps"
SLEEP_S = 0.3
PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
# The GCS declares a node dead after about 2 s without heartbeats instead of 15 s.
FAST_NODE_DEATH = {"health_check_period_ms": 500, "health_check_failure_threshold": 4}


@dataclass
class Multi:
    cluster: Cluster
    settings: Settings
    database: Database
    side: Path


def _store(store: str, tmp_path: Path, namespace: str) -> tuple[dict[str, Any], Database]:
    if store == "sqlite":
        return {}, tmp_path / "state" / "raysquad.db"
    schema = f"rs_{namespace.replace('-', '_')}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    url = make_conninfo(PG_URL, options=f"-c search_path={schema}")
    return {"store": "postgres", "postgres_url": url}, url


def _drop(database: Database) -> None:
    if isinstance(database, str):
        schema = database.rpartition("search_path=")[2].strip("'\" ")
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


@pytest.fixture
def multi(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """A cluster with a head node; the test adds worker nodes and starts the runtime."""
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 2, "resources": dict(request.param.get("head", {})),
        "object_store_memory": 150 * 1024**2, "include_dashboard": False,
        "_system_config": FAST_NODE_DEATH})
    for resources in request.param.get("nodes", []):
        cluster.add_node(num_cpus=1, resources=resources, object_store_memory=80 * 1024**2)
    cluster.wait_for_nodes()
    namespace = f"mn-{uuid.uuid4().hex[:8]}"
    store_settings, database = _store(request.param["store"], tmp_path, namespace)
    side = tmp_path / "effects"
    side.mkdir()
    settings = Settings(
        ray_address=cluster.address, namespace=namespace, data_dir=tmp_path / "state",
        lease_s=5.0, sweep_interval_s=0.2, tools=ToolSettings(executors=1),
        simulated=SimulatedEngineConfig(ttft_s=SLEEP_S), **store_settings,
        **request.param["settings"])
    ray.init(address=cluster.address, namespace=namespace, logging_level=logging.WARNING,
             log_to_driver=False)
    rt = Runtime.start(settings, apps=APPS)
    try:
        yield rt, Multi(cluster, settings, database, side)
    finally:
        rt.stop(shutdown_ray=False)
        ray.shutdown()
        cluster.shutdown()
        _drop(database)


def workers_by_node(namespace: str) -> dict[str, list[str]]:
    """Node id -> the names of the live workflow workers on it."""
    out: dict[str, list[str]] = {}
    for name in actor_names(namespace, Kind.WORKER.value):
        try:
            info = actor_info(ray.get_actor(name, namespace=namespace)._actor_id.hex())
        except ValueError:
            continue
        if info.get("State") == "ALIVE":
            out.setdefault(info["Address"]["NodeID"], []).append(name)
    return out


def worker_pid(namespace: str, name: str) -> int:
    return int(actor_info(ray.get_actor(name, namespace=namespace)._actor_id.hex())["Pid"])


def read_lines(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines() if line.strip()]


def submit(rt: Runtime, side: Path, n: int) -> list[str]:
    return [rt.client().submit(WORKFLOW, {"dir": str(side), "sleep_s": SLEEP_S}).id
            for _ in range(n)]


def all_ended(database: Database, ids: list[str]) -> bool:
    rows = task_rows(database)
    return all(t in rows and TaskStatus(rows[t]["status"]).ended for t in ids)


def wait_until_ended(m: Multi, ids: list[str], what: str) -> None:
    """Wait for every task to end; on a timeout, say where each unfinished one stands and which
    workers are alive, so a failure shows what stalled."""
    try:
        wait_for(lambda: all_ended(m.database, ids), timeout_s=180, interval_s=0.3, what=what)
    except AssertionError as e:
        rows = task_rows(m.database)
        stuck = {t: {k: rows[t].get(k) for k in ("status", "runs", "crashes")} if t in rows
                 else "missing" for t in ids if t not in rows
                 or not TaskStatus(rows[t]["status"]).ended}
        raise AssertionError(f"{e}; unfinished: {stuck}; live workers by node: "
                             f"{workers_by_node(m.settings.namespace)}; control plane: "
                             f"{control_plane(m.settings.namespace)}") from None


def control_plane(namespace: str) -> dict[str, Any]:
    """The Store's and the control host's state, node and restarts (Ray's actor table)."""
    out: dict[str, Any] = {}
    for name in ("store", "control"):
        try:
            info = actor_info(ray.get_actor(name, namespace=namespace)._actor_id.hex())
            out[name] = (info.get("State"), str(info.get("Address", {}).get("NodeID"))[:8],
                         info.get("NumRestarts"))
        except Exception as e:  # noqa: BLE001 - a diagnostic: say what the lookup met
            out[name] = repr(e)
    return out


def check_effects(database: Database, side: Path, ids: list[str]) -> None:
    rows = task_rows(database)
    assert sorted(rows) == sorted(ids), "the Store holds exactly the tasks submitted"
    failed = {t: (r["status"], r["error"]) for t, r in rows.items() if r["status"] != "succeeded"}
    assert not failed, failed
    effects = read_effects(side, database)
    assert effects.repeated() == [], "a step ran again after it was recorded as completed"
    assert effects.over_runs() == [], "a step ran more often than its task was run"
    assert effects.missing(ids) == []
    print(f"{len(ids)} tasks; runs > 1: {sum(r['runs'] > 1 for r in rows.values())}; plain steps "
          f"re-run after an interruption (allowed): {effects.rerun_interrupted()}")


LOSS = {"head": {}, "nodes": [{"worker_slot": 2}, {"worker_slot": 2}],
        "settings": {"workers": 3, "tasks_per_worker": 2, "worker_resources": {"worker_slot": 1}}}


@pytest.mark.parametrize("multi", [{**LOSS, "store": "sqlite"}, {**LOSS, "store": "postgres"}],
                         indirect=True, ids=["sqlite", "postgres"])
def test_losing_a_node_mid_run_loses_no_task_and_repeats_no_step(multi: Any) -> None:
    rt, m = multi
    namespace = m.settings.namespace
    by_node = wait_for(lambda: (lambda b: b if sum(map(len, b.values())) == 3 else None)(
        workers_by_node(namespace)), timeout_s=60, what="three live workers")
    assert len(by_node) == 2, f"workers are spread over both worker nodes: {by_node}"
    ids = submit(rt, m.side, 16)

    def victim_node() -> str | None:
        """A worker node that runs a task now."""
        owners = {r.owner for r in rt.client().list(TaskStatus.RUNNING, limit=100)}
        for node_id, names in workers_by_node(namespace).items():
            if any(f"worker:{o}" in names for o in owners if o):
                return node_id
        return None

    node_id = wait_for(victim_node, timeout_s=60, what="a task running on a worker node")
    node = next(n for n in m.cluster.worker_nodes if n.node_id == node_id)
    running = sum(r.status is TaskStatus.RUNNING for r in rt.client().list(limit=100))
    removed_at = time.time()
    m.cluster.remove_node(node, allow_graceful=False)  # SIGKILLs the node's raylet and processes
    print(f"removed node {node_id[:8]} with {len(by_node[node_id])} worker(s); "
          f"{running} task(s) running")
    wait_until_ended(m, ids, "every task to end after the node was lost")
    rows = task_rows(m.database)
    resumed = sum(1 for t in ids if rows[t]["runs"] > 1)
    print(f"{resumed} task(s) ran again after the loss; all ended "
          f"{max(r['finished_at'] for r in rows.values()) - removed_at:.1f}s after it")
    check_effects(m.database, m.side, ids)
    assert node_id not in workers_by_node(namespace)


GROW = {"head": {"worker_slot": 1}, "nodes": [], "store": "sqlite",
        "settings": {"workers": 1, "workers_max": 3, "worker_target_backlog": 2,
                     "tasks_per_worker": 2, "worker_idle_s": 2.0,
                     "worker_resources": {"worker_slot": 1}}}


@pytest.mark.parametrize("multi", [GROW], indirect=True, ids=["sqlite"])
def test_the_worker_pool_grows_onto_a_node_added_mid_run_and_shrinks_back(multi: Any) -> None:
    rt, m = multi
    namespace = m.settings.namespace
    ids = submit(rt, m.side, 16)
    # The pool wants 3 workers; the head has room for one: two wait as pending actors.
    wait_for(lambda: len(actor_names(namespace, Kind.WORKER.value)) == 3, timeout_s=60,
             what="the pool to ask for three workers")
    assert sum(map(len, workers_by_node(namespace).values())) == 1
    head_id = m.cluster.head_node.node_id
    added = m.cluster.add_node(num_cpus=1, resources={"worker_slot": 2},
                               object_store_memory=80 * 1024**2)
    m.cluster.wait_for_nodes()
    grown = wait_for(lambda: (lambda b: b if len(b.get(added.node_id, [])) == 2 else None)(
        workers_by_node(namespace)), timeout_s=90, what="two workers on the added node")
    assert len(grown.get(head_id, [])) == 1
    new_pids = {str(worker_pid(namespace, name)) for name in grown[added.node_id]}
    wait_until_ended(m, ids, "every task to end")
    check_effects(m.database, m.side, ids)
    ran_there = {pid for _, _, _, pid in read_lines(m.side / STEPS_LOG)} & new_pids
    assert ran_there, "the workers on the added node ran steps"
    # The load has stopped: back to the minimum, one worker.
    wait_for(lambda: sum(map(len, workers_by_node(namespace).values())) == 1
             and len(actor_names(namespace, Kind.WORKER.value)) == 1,
             timeout_s=60, interval_s=0.3, what="the pool to shrink back to one worker")
