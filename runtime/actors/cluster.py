"""Start or join Ray."""

from __future__ import annotations

import logging
import socket
from pathlib import Path
from typing import Any

import ray

from runtime.core.config import Settings
from runtime.core.errors import ClusterStartFailed, ClusterUnreachable

log = logging.getLogger(__name__)


def connect(settings: Settings, ship: list[Path] | None = None) -> bool:
    """Join the cluster at ``settings.ray_address``, or start a local one; True if we started it.
    Joining, the files and folders ``ship`` go to every node as Ray's ``py_modules``, so the
    runtime's actors import them wherever they run (a local cluster's workers get this process's
    current folder on their path from Ray itself)."""
    if ray.is_initialized():
        return False
    if settings.ray_address:
        check_reachable(settings.ray_address)
        use_local_token_if_any()
        runtime_env = {"py_modules": [str(p) for p in ship]} if ship else None
        try:
            ray.init(address=settings.ray_address, namespace=settings.namespace,
                     logging_level=logging.ERROR, log_to_driver=settings.ray_log_to_driver,
                     runtime_env=runtime_env)
        except ConnectionError as e:
            raise ClusterUnreachable(settings.ray_address) from e
        return False
    # "local": a new cluster of our own, even where `ray start` runs one (or left its address file).
    extra: dict[str, Any] = {}
    if settings.ray_metrics_export_port:
        extra["_metrics_export_port"] = settings.ray_metrics_export_port
    for attempt in (1, 2):
        try:
            ray.init(
                address="local",
                namespace=settings.namespace,
                num_cpus=settings.ray_num_cpus,
                object_store_memory=settings.ray_object_store_memory,
                include_dashboard=settings.ray_include_dashboard,
                **extra,
                logging_level=logging.ERROR,
                log_to_driver=settings.ray_log_to_driver,
            )
            break
        except Exception as e:  # noqa: BLE001 - Ray raises a bare Exception when its node fails
            ray.shutdown()
            if attempt == 2:
                raise ClusterStartFailed(str(e)) from None
            # A raylet that did not register in time (a loaded machine, or the processes of a
            # crashed cluster still letting go of their ports): one more try.
            log.warning("starting a local Ray cluster failed (%s); trying once more", e)
    if not settings.ray_log_to_driver:
        quiet_driver()
    return True


def use_local_token_if_any() -> None:
    """Do for an explicit address what ``ray.init`` does for "auto": use ~/.ray/auth_token if present
    (a cluster started by `ray start` or `raysquad up` uses that token)."""
    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )
    except ImportError:  # a Ray without token auth
        return
    logging.getLogger(maybe_enable_token_auth_if_token_available.__module__).setLevel(logging.ERROR)
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


def check_reachable(address: str, timeout_s: float = 3.0) -> None:
    """Fail at once, not after Ray's own minute of retries, when a ``host:port`` address does not
    accept connections ("auto" and ``ray://`` addresses are left to Ray)."""
    host, sep, port = address.rpartition(":")
    if address == "auto" or "://" in address or not sep or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise ClusterUnreachable(address, e.strerror or str(e)) from None


def quiet_driver() -> None:
    """Keep the raylet's notices off this process's terminal (they stay in Ray's log files).

    With ``log_to_driver`` off, Ray still prints what the raylet publishes on its error channel, such
    as "N PYTHON worker processes have been started ... the maximum expected startup concurrency",
    which every runtime on a small machine triggers (it starts one process per actor). The user's
    terminal is raysquad's; ``RAYSQUAD_RAY_LOG_TO_DRIVER=true`` brings all of Ray's output back.
    """
    import ray._private.worker as ray_worker

    ray_worker._worker_logs_enabled = False


# -- where the runtime's actors run ----------------------------------------------------------------

#: The resource only the head node has (Ray Train pins its state actor with it the same way).
HEAD_NODE_RESOURCE = "node:__internal_head__"


def named_actor_options(settings: Settings, name: str, **options: Any) -> dict[str, Any]:
    """Ray options of a control-plane actor: named in the runtime's namespace, restarted whenever it
    dies, and detached when the runtime must outlive the process that started it."""
    base: dict[str, Any] = {"name": name, "namespace": settings.namespace, "max_restarts": -1,
                            "num_cpus": 0, **metrics_off(settings)}
    if settings.detached:
        base["lifetime"] = "detached"
    return {**base, **options}


def metrics_off(settings: Settings) -> dict[str, Any]:
    """The actor option that turns raysquad's metrics off in its process (when they are off)."""
    return {} if settings.metrics else {"runtime_env": {"env_vars": {"RAYSQUAD_METRICS": "false"}}}


def member_actor_options(settings: Settings, name: str, num_cpus: float,
                         resources: dict[str, float], **options: Any) -> dict[str, Any]:
    """Ray options of a pool member (a workflow worker, an agent replica): replaced by its pool,
    not restarted, and spread over the nodes that have the resources it asks for. A member the
    cluster has no room for waits as a pending actor, which is what asks an autoscaling cluster for
    a node. Members belong to their pool actor, so they outlive the launcher when it is detached."""
    return {"name": name, "namespace": settings.namespace, "max_restarts": 0,
            "num_cpus": num_cpus, "resources": dict(resources), "scheduling_strategy": "SPREAD",
            **metrics_off(settings), **options}


def store_placement(settings: Settings) -> dict[str, Any]:
    """The SQLite Store is pinned to the head node (its file is there); PostgreSQL's is not."""
    if settings.store == "sqlite":
        return {"resources": {HEAD_NODE_RESOURCE: 0.001}}
    return {}
