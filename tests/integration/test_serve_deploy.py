"""The shipped Serve config, deployed on a real Serve (audit H4): with no API key and Serve's
``http_options.host`` on 0.0.0.0, the builder refuses before anything starts, and Serve shows the
reason as one line. Serve runs without proxies here (``proxy_location: Disabled``), so nothing
listens on 0.0.0.0 meanwhile; the controller still holds the config's host, which is what the
builder reads."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from ray import serve

from runtime.actors.handles import actor_names
from tests.conftest import ROOT, wait_for
from tests.e2e.live import free_port


@pytest.fixture
def serve_on_all_interfaces(ray_cluster: None) -> Iterator[Any]:
    from ray.serve.context import _get_global_client

    serve.start(proxy_location="Disabled", http_options={"host": "0.0.0.0", "port": free_port()})
    try:
        yield _get_global_client()
    finally:
        serve.shutdown()


def test_the_shipped_config_without_a_key_is_refused_in_one_line(
        serve_on_all_interfaces: Any) -> None:
    from ray.serve.schema import ServeDeploySchema

    config = yaml.safe_load((ROOT / "deploy" / "serve.yaml").read_text())
    (application,) = config["applications"]
    application["runtime_env"].pop("working_dir")  # the code is installed here
    application["name"] = namespace = "deploy-refused"
    application["route_prefix"] = "/deploy-refused"
    env = application["runtime_env"]["env_vars"]
    env["RAYSQUAD_NAMESPACE"] = namespace
    del env["RAYSQUAD_HTTP_HOST"]  # the runtime's own host stays loopback: Serve's is what counts
    assert "RAYSQUAD_API_KEYS" not in env

    serve_on_all_interfaces.deploy_apps(ServeDeploySchema(applications=[application]))

    status = wait_for(lambda: (app := serve.status().applications.get(namespace)) and
                      app.status == "DEPLOY_FAILED" and app, timeout_s=120,
                      what="the deploy to fail")
    # Serve's own heading ("Deploying app ... failed with exception:"), then the reason: one line,
    # no traceback.
    *heading, reason = status.message.strip().splitlines()
    assert len(heading) <= 1 and "Traceback" not in status.message, status.message
    assert reason.startswith(
        "refusing to serve on 0.0.0.0 (Serve's http_options.host) without API keys"), reason
    assert not actor_names(namespace)  # the runtime did not start
