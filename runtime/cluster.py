"""Start or join Ray."""

from __future__ import annotations

import logging

import ray

from runtime.config import Settings

log = logging.getLogger(__name__)


def connect(settings: Settings) -> bool:
    """Join the cluster at ``settings.ray_address``, or start a local one; True if we started it."""
    if ray.is_initialized():
        return False
    if settings.ray_address:
        ray.init(address=settings.ray_address, namespace=settings.namespace,
                 logging_level=logging.ERROR, log_to_driver=settings.ray_log_to_driver)
        return False
    ray.init(
        namespace=settings.namespace,
        num_cpus=settings.ray_num_cpus,
        object_store_memory=settings.ray_object_store_memory,
        include_dashboard=settings.ray_include_dashboard,
        logging_level=logging.ERROR,
        log_to_driver=settings.ray_log_to_driver,
    )
    if not settings.ray_log_to_driver:
        quiet_driver()
    return True


def quiet_driver() -> None:
    """Keep the raylet's notices off this process's terminal (they stay in Ray's log files).

    With ``log_to_driver`` off, Ray still prints what the raylet publishes on its error channel, such
    as "N PYTHON worker processes have been started ... the maximum expected startup concurrency",
    which every runtime on a small machine triggers (it starts one process per actor). The user's
    terminal is raysquad's; ``RAYSQUAD_RAY_LOG_TO_DRIVER=true`` brings all of Ray's output back.
    """
    import ray._private.worker as ray_worker

    ray_worker._worker_logs_enabled = False
