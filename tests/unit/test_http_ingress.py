"""Which Serve path `raysquad up` takes (serve.http.direct_ingress_env): the direct one for one
replica on a fixed port, the proxy otherwise."""

from __future__ import annotations

import pytest

from runtime.config import Settings
from serve.http import direct_ingress_env


def test_one_replica_on_a_fixed_port_serves_directly_on_that_port() -> None:
    env = direct_ingress_env(Settings(http_port=8123))

    assert env["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1"
    # Serve's port range is half-open: the replica gets 8123 and nothing else.
    assert (env["RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT"],
            env["RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT"]) == ("8123", "8124")
    assert env["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"] == "0"
    assert env["RAY_SERVE_PORT_QUARANTINE_S"] == "0"


@pytest.mark.parametrize("settings", [
    {"http_ingress": "proxy"},
    {"http_replicas_max": 3},
    {"http_port": 0},
])
def test_the_proxy_stays_where_the_direct_path_does_not_hold(settings: dict[str, object]) -> None:
    assert direct_ingress_env(Settings(**settings)) == {}  # type: ignore[arg-type]
