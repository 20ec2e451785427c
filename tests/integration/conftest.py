"""One real local Ray cluster for the integration tests, package-scoped: where a test process
runs other packages' modules in between (a pytest-xdist worker does), the cluster is stopped for them
and started again, so a module that starts a Ray cluster of its own finds none running.

A test gets a runtime (own namespace, own SQLite) in one of two ways: ``make_runtime`` starts a
fresh one for this test alone; ``shared_runtime`` hands the same running one to consecutive tests
that ask for the same configuration and only read their own tasks by id (keep such tests next to
each other in their module).

A test needs a fresh runtime when it stops or restarts it, kills or freezes its processes, counts
anything Store-wide (tasks, dead letters, gate or executor stats, engine timelines), changes its
configuration at run time, or needs its queue empty or its workers idle.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import ray
from psycopg import sql
from psycopg.conninfo import make_conninfo

from runtime import Runtime, Settings, ToolSettings
from tests.e2e.live import free_port

DEFAULT_APPS = ["tests.apps.basic"]
# One tool executor unless a test asks for more: each actor is a process, and starting one costs
# about a CPU-second on this machine.
TEST_DEFAULTS: dict[str, Any] = {"lease_s": 5.0, "sweep_interval_s": 0.2,
                                 "tools": ToolSettings(executors=1)}


METRICS_PORT = free_port()  # the session cluster's Prometheus endpoint
# Ray gives a new node's raylet 30 s (fixed) to register with the GCS; on two cores shared with
# another test process starting vLLM or a cluster of its own, that once ran out: start again.
STARTS = 2


@pytest.fixture(scope="package")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    # The example newsroom app keeps its files where its processes are told (agents/newsroom.py).
    newsroom = tmp_path_factory.mktemp("newsroom")
    for attempt in range(1, STARTS + 1):
        try:
            ray.init(address="local", num_cpus=4, object_store_memory=300 * 1024**2,
                     include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False,
                     _metrics_export_port=METRICS_PORT,
                     runtime_env={"env_vars": {"RAYSQUAD_NEWSROOM_DIR": str(newsroom)}})
            break
        except Exception as e:  # Ray's own, when its raylet is not registered within 30 s
            if attempt == STARTS or "timed out during startup" not in str(e):
                raise
            ray.shutdown()  # what it started, then once more
    yield
    ray.shutdown()
    _drop_schemas()


# RAYSQUAD_TEST_STORE=postgres runs the suite on PostgreSQL: each runtime (one namespace) gets a
# schema of its own in the database at RAYSQUAD_TEST_POSTGRES_URL, so a restart finds its state.
TEST_STORE = os.environ.get("RAYSQUAD_TEST_STORE", "sqlite")
PG_URL = os.environ.get("RAYSQUAD_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


SCHEMAS: set[str] = set()  # made by this session, dropped at its end


def _drop_schemas() -> None:
    if not SCHEMAS:
        return
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        for schema in sorted(SCHEMAS):
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
    SCHEMAS.clear()


def _store_settings(namespace: str, store: str = TEST_STORE) -> dict[str, Any]:
    """The Store settings of a runtime: ``store`` (the suite's, unless a test asks for one)."""
    if store != "postgres":
        return {}
    schema = f"rs_{namespace.replace('-', '_')}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
    SCHEMAS.add(schema)
    return {"store": "postgres",
            "postgres_url": make_conninfo(PG_URL, options=f"-c search_path={schema}")}


def _settings(data_dir: Path, namespace: str, overrides: dict[str, Any]) -> Settings:
    store = _store_settings(namespace, overrides.pop("store", TEST_STORE))
    return Settings(data_dir=data_dir, namespace=namespace,
                    **{**TEST_DEFAULTS, **store, **overrides})


@pytest.fixture
def make_runtime(ray_cluster: None, tmp_path: Path) -> Iterator[Callable[..., Runtime]]:
    """Start a runtime on the session's cluster; every one started is stopped after the test.

    Every call in one test uses the same namespace and Store: a second call is a restart."""
    started: list[Runtime] = []
    namespace = f"t-{uuid.uuid4().hex[:8]}"

    def make(apps: list[str] | None = None, **overrides: Any) -> Runtime:
        rt = Runtime.start(_settings(tmp_path / "state", namespace, overrides),
                           apps=apps or DEFAULT_APPS)
        started.append(rt)
        return rt

    yield make
    for rt in started:
        rt.stop(shutdown_ray=False)


class SharedRuntimeSlot:
    """The session's shared runtime: one configuration (apps and settings overrides) at a time.

    Only one is kept, and only while the tests that run one after another use it: an idle runtime
    is not free (its actors poll: about 0.4 CPU-seconds a second for tests.apps.basic, more for
    agents), so keeping one alive for a test further on costs more than starting it again there."""

    def __init__(self, tmp_path_factory: pytest.TempPathFactory) -> None:
        self._tmp_path_factory = tmp_path_factory
        self._key: str | None = None
        self._runtime: Runtime | None = None

    def get(self, apps: list[str] | None = None, **overrides: Any) -> Runtime:
        apps = list(apps or DEFAULT_APPS)
        # The settings themselves are the key, so two spellings of one configuration share.
        probe = Settings(data_dir=Path("."), namespace="probe", **{**TEST_DEFAULTS, **overrides})
        key = repr((apps, probe.model_dump(mode="json", exclude={"data_dir", "namespace"})))
        if self._runtime is None or key != self._key:
            self.stop()
            data_dir = self._tmp_path_factory.mktemp("shared") / "state"
            self._runtime = Runtime.start(_settings(data_dir, f"s-{uuid.uuid4().hex[:8]}", overrides),
                                          apps=apps)
            self._key = key
        return self._runtime

    def stop(self) -> None:
        if self._runtime is not None:
            self._runtime.stop(shutdown_ray=False)
        self._key, self._runtime = None, None


@pytest.fixture(scope="package")
def shared_runtime_slot(ray_cluster: None,
                        tmp_path_factory: pytest.TempPathFactory) -> Iterator[SharedRuntimeSlot]:
    shared = SharedRuntimeSlot(tmp_path_factory)
    yield shared
    shared.stop()


@pytest.fixture
def shared_runtime(shared_runtime_slot: SharedRuntimeSlot,
                   request: pytest.FixtureRequest) -> Iterator[Callable[..., Runtime]]:
    """A running runtime for this configuration (apps and settings overrides), shared with the tests
    next to this one that ask for the same; its own namespace and Store.

    Only for tests that leave it as they found it: nothing stopped, killed or reconfigured, and every
    check on their own tasks by id (other tests' tasks are in the same Store)."""
    yield shared_runtime_slot.get
    items = request.session.items
    following = items[items.index(request.node) + 1:]
    if not following or "shared_runtime" not in getattr(following[0], "fixturenames", ()):
        shared_runtime_slot.stop()


@pytest.fixture
def side_dir(tmp_path: Path) -> Path:
    d = tmp_path / "effects"
    d.mkdir()
    return d
