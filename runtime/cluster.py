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
    return True
