"""Pending pool members ask Ray's autoscaler for nodes, and the nodes go away when the pool shrinks.

A `ray start --head` of the test's own with an autoscaling config whose provider is Ray's
``fake_multinode`` (it starts each "node" as a raylet on this machine, the way Ray tests its
autoscaler): a head with room for one workflow worker, and a worker node type offering two, of which
none runs at first. Under backlog the worker pool asks for three workers; two cannot be placed and
wait as pending actors; that demand makes the autoscaler launch a worker node, where they start and
run steps. When the load stops, the pool shrinks to one worker, the node is idle, and the autoscaler
removes it. The cluster is stopped by killing its processes by pid (never `ray stop`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import ray

from runtime import Runtime, Settings, TaskStatus, ToolSettings
from runtime.actors.cluster import use_local_token_if_any
from runtime.actors.handles import actor_names
from runtime.core.config import SimulatedEngineConfig
from tests.cluster.test_multinode import all_ended, check_effects, submit, workers_by_node
from tests.conftest import ROOT, wait_for
from tests.e2e.live import free_port
from tests.faults import Kind

BIN = Path(sys.executable).parent
WORKER_TYPE = "raysquad.worker"


def _config(gcs_address: str) -> dict[str, Any]:
    return {
        "cluster_name": f"rs-{uuid.uuid4().hex[:6]}",
        "max_workers": 1,
        "provider": {"type": "fake_multinode", "gcs_address": gcs_address, "use_node_id_as_ip": True,
                     "disable_node_updaters": True, "disable_launch_config_check": True},
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 2, "worker_slot": 1}, "node_config": {},
                                 "max_workers": 0},
            WORKER_TYPE: {"resources": {"CPU": 1, "worker_slot": 2,
                                        "object_store_memory": 80 * 1024**2},
                          "node_config": {}, "min_workers": 0, "max_workers": 1},
        },
        "head_node_type": "ray.head.default",
        "auth": {}, "upscaling_speed": 1.0, "idle_timeout_minutes": 0.1, "docker": {},
        "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
        "worker_setup_commands": [], "head_start_ray_commands": [], "worker_start_ray_commands": [],
        "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
        "rsync_exclude": [], "rsync_filter": [],
    }


def _processes_of(temp_dir: Path) -> list[psutil.Process]:
    found: dict[int, psutil.Process] = {}
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(str(temp_dir) in part for part in proc.info["cmdline"] or ()):
                found[proc.pid] = proc
                found.update({c.pid: c for c in proc.children(recursive=True)})
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return list(found.values())


@pytest.fixture
def autoscaling(tmp_path: Path) -> Iterator[str]:
    temp_dir = Path(f"/tmp/rs-{uuid.uuid4().hex[:8]}")
    port = free_port()
    address = f"{ray.util.get_node_ip_address()}:{port}"
    config = tmp_path / "autoscaler.json"
    config.write_text(json.dumps(_config(address)))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_FAKE_CLUSTER": "1",
           "AUTOSCALER_UPDATE_INTERVAL_S": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    started = subprocess.run(
        [str(BIN / "ray"), "start", "--head", f"--port={port}", "--num-cpus=2",
         '--resources={"worker_slot": 1}', f"--temp-dir={temp_dir}",
         f"--autoscaling-config={config}", "--include-dashboard=false", "--disable-usage-stats"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert started.returncode == 0, started.stdout + started.stderr
    try:
        yield address
    finally:
        if ray.is_initialized():
            ray.shutdown()
        procs = _processes_of(temp_dir)
        for proc in procs:
            try:
                proc.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(procs, timeout=30)
        shutil.rmtree(temp_dir, ignore_errors=True)


def alive_nodes() -> list[dict[str, Any]]:
    return [n for n in ray.nodes() if n["Alive"]]


def test_pending_workers_bring_a_node_and_its_removal_follows_the_shrink(
        autoscaling: str, tmp_path: Path) -> None:
    use_local_token_if_any()
    namespace = f"as-{uuid.uuid4().hex[:8]}"
    ray.init(address=autoscaling, namespace=namespace, logging_level=logging.WARNING,
             log_to_driver=False)
    assert len(alive_nodes()) == 1
    side = tmp_path / "effects"
    side.mkdir()
    settings = Settings(
        ray_address=autoscaling, namespace=namespace, data_dir=tmp_path / "state", workers=1,
        workers_max=3, worker_target_backlog=2, tasks_per_worker=2, worker_idle_s=2.0,
        worker_resources={"worker_slot": 1}, lease_s=5.0, sweep_interval_s=0.2,
        tools=ToolSettings(executors=1), simulated=SimulatedEngineConfig(ttft_s=0.3))
    rt = Runtime.start(settings, apps=["tests.apps.chaos"])
    try:
        ids = submit(rt, side, 20)
        wait_for(lambda: len(actor_names(namespace, Kind.WORKER.value)) == 3, timeout_s=60,
                 what="the pool to ask for three workers")
        wait_for(lambda: len(alive_nodes()) == 2, timeout_s=120, interval_s=0.5,
                 what="the autoscaler to add a node for the pending workers")
        head_id = ray.get_runtime_context().get_node_id()
        wait_for(lambda: any(node != head_id and len(names) == 2
                             for node, names in workers_by_node(namespace).items()),
                 timeout_s=120, interval_s=0.5, what="two workers on the new node")
        wait_for(lambda: all_ended(tmp_path / "state" / "raysquad.db", ids), timeout_s=180,
                 interval_s=0.3, what="every task to end")
        check_effects(tmp_path / "state" / "raysquad.db", side, ids)
        assert all(rt.client().get(t).status is TaskStatus.SUCCEEDED for t in ids)
        wait_for(lambda: len(actor_names(namespace, Kind.WORKER.value)) == 1, timeout_s=60,
                 interval_s=0.3, what="the pool to shrink back to one worker")
        assert list(workers_by_node(namespace)) == [head_id]  # the newest workers went first
        wait_for(lambda: len(alive_nodes()) == 1, timeout_s=120, interval_s=1.0,
                 what="the autoscaler to remove the idle node")
    finally:
        rt.stop(shutdown_ray=False)
