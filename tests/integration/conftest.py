"""One real local Ray cluster per test session; a fresh runtime (own namespace, own SQLite) per test."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import ray

from runtime import Runtime, Settings


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[None]:
    ray.init(num_cpus=4, object_store_memory=300 * 1024**2, include_dashboard=False,
             logging_level=logging.WARNING, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture
def make_runtime(ray_cluster: None, tmp_path: Path) -> Iterator[Callable[..., Runtime]]:
    """Start a runtime on the session's cluster; every one started is stopped after the test."""
    started: list[Runtime] = []
    namespace = f"t-{uuid.uuid4().hex[:8]}"

    def make(apps: list[str] | None = None, **overrides: Any) -> Runtime:
        settings = Settings(data_dir=tmp_path / "state", namespace=namespace,
                            **{"lease_s": 5.0, "sweep_interval_s": 0.2, **overrides})
        rt = Runtime.start(settings, apps=apps or ["tests.apps.basic"])
        started.append(rt)
        return rt

    yield make
    for rt in started:
        rt.stop(shutdown_ray=False)


@pytest.fixture
def side_dir(tmp_path: Path) -> Path:
    d = tmp_path / "effects"
    d.mkdir()
    return d
