"""The shared `raysquad up` of the HTTP suites: one server for the modules in a row that use ``api``."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.e2e.live import Api, SharedServer


@pytest.fixture(scope="session")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SharedServer]:
    server = SharedServer(tmp_path_factory.mktemp("http"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def api(shared_server: SharedServer, request: pytest.FixtureRequest) -> Iterator[Api]:
    """The shared server. After this module, it keeps running only if the next module uses it too
    (an idle server costs the tests after it CPU)."""
    yield shared_server.get()
    items = request.session.items
    mine = [i for i, item in enumerate(items) if item.module is request.module]
    following = items[mine[-1] + 1:] if mine else []
    if not following or "api" not in getattr(following[0], "fixturenames", ()):
        shared_server.stop()


@pytest.fixture(scope="module")
def a(api: Api) -> httpx.Client:
    return api.client("key-a")


@pytest.fixture(scope="module")
def b(api: Api) -> httpx.Client:
    return api.client("key-b")
