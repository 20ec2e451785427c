"""The Ingress without Ray: which Serve path `raysquad up` takes (serve.launch.direct_ingress_env),
the body guard's cost and limits, API keys and the no-key mode's Host check, the Serve deploy
builder's refusal, and the overview's lookups."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

from runtime.core.config import Settings
from serve.auth import key_tenant, loopback_host
from serve.errors import _deeper_than, body_limit, strict_json_problem
from serve.launch import direct_ingress_env
from tests.conftest import ROOT


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
def test_the_proxy_stays_where_the_direct_path_does_not_hold(settings: dict[str, Any]) -> None:
    assert direct_ingress_env(Settings(**settings)) == {}


# -- the body guard: the cost of a body is its size's, and a big limit needs a key (audit H1) ------

def wide_and_deep(depth: int = 62, width: int = 1_000_000) -> bytes:
    return ('{"a":' * depth + "[" + ",".join(["0"] * width) + "]" + "}" * depth).encode()


def test_a_wide_array_deep_in_a_body_is_checked_in_one_pass_and_small_memory() -> None:
    import time
    import tracemalloc

    body = wide_and_deep()
    started = time.process_time()
    assert strict_json_problem(body, 64) is None
    took = time.process_time() - started
    value = json.loads(body)
    tracemalloc.start()
    try:
        assert strict_json_problem(b"[" + b"0," * 200_000 + b"0]", 64) is None
        assert not _deeper_than(value, 64)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    # The parse itself is most of it (the old walk copied the path per element: seconds, GBs).
    assert took < 2.0, took
    assert peak < 16 << 20, peak  # the parsed value, not a copy of the path per element


@pytest.mark.parametrize(("body", "where"), [
    (b'{"a": [1, {"b": 1e999}]}', "body.a.1.b: number 1e999 is out of range"),
    (b'{"a": [1, {"b": "\\ud800"}]}', "body.a.1.b: string is not valid Unicode"),
    (b'{"a": "\\udc00\\ud83d"}', "body.a: string is not valid Unicode"),
    (b'{"\\ud800": 1}', "key is not valid Unicode"),
    (b'{"x": ' * 65 + b"1" + b"}" * 65, "body.x.x.x...: nested deeper than 64 levels"),
    (b"[" * 65 + b"]" * 65, "nested deeper than 64 levels"),
])
def test_each_problem_is_named_with_its_path(body: bytes, where: str) -> None:
    problem = strict_json_problem(body, 64)

    assert problem is not None and problem[0] == 422 and where in problem[2], problem


@pytest.mark.parametrize("body", [b"[" * 64 + b"]" * 64, b'"\\ud83d\\ude00"', b'{"a": [[[]]], "b": 1}',
                                  '"\U0001f600"'.encode()])
def test_what_json_allows_passes(body: bytes) -> None:
    assert strict_json_problem(body, 64) is None


def test_only_the_batch_route_with_a_known_key_gets_the_batch_limit() -> None:
    keyed = Settings(api_keys={"key-a": "tenant-a"})
    batch = keyed.max_batch_body_bytes

    assert body_limit(keyed, "POST", "/v1/tasks:batch", "Bearer key-a") == batch
    for method, path, authorization in [
            ("POST", "/v1/tasks:batch", None), ("POST", "/v1/tasks:batch", "Bearer nope"),
            ("POST", "/v1/tasks:batch", "Bearer "), ("POST", "/nothing:batch", "Bearer key-a"),
            ("POST", "/v1/tasks", "Bearer key-a"), ("PUT", "/v1/tasks:batch", "Bearer key-a")]:
        assert body_limit(keyed, method, path, authorization) == keyed.max_body_bytes
    # Without keys (loopback only) there is no key to know.
    assert body_limit(Settings(), "POST", "/v1/tasks:batch", None) == batch


def test_an_empty_bearer_key_is_no_key() -> None:
    keys = {"key-a": "tenant-a"}

    assert key_tenant(keys, "Bearer key-a") == "tenant-a"
    assert key_tenant(keys, "bearer key-a") == "tenant-a"
    for authorization in (None, "", "Bearer ", "Bearer", "Basic key-a", "Bearer key-b"):
        assert key_tenant(keys, authorization) is None


@pytest.mark.parametrize(("host", "ok"), [
    ("localhost", True), ("localhost:8000", True), ("127.0.0.1:8000", True), ("127.0.0.1", True),
    ("[::1]:8000", True), ("[::1]", True), ("LOCALHOST:1", True),
    ("evil.example:8000", False), ("127.0.0.1.nip.io:8000", False), ("0.0.0.0:8000", False),
    ("10.0.0.1", False), ("", False), (None, False), ("localhost:80x", False), ("[::1]x", False),
])
def test_no_key_mode_answers_only_loopback_host_names(host: str | None, ok: bool) -> None:
    assert loopback_host(host) is ok


# -- the Serve deploy path: no keys means loopback only there too (audit H4) ----------------------

def test_the_deploy_builder_refuses_a_public_serve_host_without_keys_before_starting_anything(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from ray.serve.exceptions import RayServeException

    import runtime.control.launch
    from serve import deploy

    def must_not_start(*args: object, **kwargs: object) -> None:
        raise AssertionError("the runtime started although the deploy is refused")

    monkeypatch.delenv("RAYSQUAD_API_KEYS", raising=False)
    monkeypatch.setattr(runtime.control.launch.Runtime, "start", must_not_start)
    monkeypatch.setattr(deploy, "serve_http_host", lambda: "0.0.0.0")

    with pytest.raises(RayServeException) as caught:
        deploy.app({"settings": {"http_host": "127.0.0.1"}})

    reason = str(caught.value)
    assert "\n" not in reason
    assert "refusing to serve on 0.0.0.0 (Serve's http_options.host) without API keys" in reason
    # With a key, or with Serve on loopback, the same check lets it through.
    keyed = Settings(api_keys={"k" * 32: "default"})
    assert deploy.deploy_refusal(keyed, "0.0.0.0") is None
    assert deploy.deploy_refusal(Settings(), "127.0.0.1") is None
    assert deploy.deploy_refusal(Settings(http_host="0.0.0.0"), "127.0.0.1") is not None


def test_the_shipped_serve_config_holds_no_usable_key_and_so_is_refused(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import yaml

    from serve.deploy import deploy_refusal

    config = yaml.safe_load((ROOT / "deploy" / "serve.yaml").read_text())
    (application,) = config["applications"]
    env = application["runtime_env"]["env_vars"]
    for name in [n for n in os.environ if n.startswith("RAYSQUAD_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, str(value))

    settings = Settings()

    assert settings.api_keys == {}
    assert deploy_refusal(settings, config["http_options"]["host"]) is not None
    # The KubeRay service ships none either (its keys come from a Secret), nor GCS or the
    # dashboard as container ports.
    service = (ROOT / "deploy" / "rayservice.yaml").read_text()
    assert "RAYSQUAD_API_KEYS:" not in yaml.safe_load(service)["spec"]["serveConfigV2"]
    assert "containerPort: 6379" not in service and "containerPort: 8265" not in service


# -- the overview of a runtime whose worker just went (audit L4) ----------------------------------

def test_the_overview_reports_a_worker_gone_since_it_was_listed_as_down(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    from runtime.client import overview as module

    class Answers:
        def __init__(self, name: str) -> None:
            self.name = name

        async def stats(self, *args: object) -> dict[str, str]:
            return {"name": self.name}

        async def workers(self, *args: object) -> list[str]:
            return ["w1", "gone"]

        async def load(self, *args: object) -> dict[str, int]:
            return {"running": 1}

        async def dead_letters(self, *args: object) -> list[object]:
            return []

    class Named:
        @classmethod
        def named(cls, name: str, namespace: str) -> Answers:
            if name == "worker:gone":
                raise ValueError(f"Failed to look up actor with name '{name}'")
            return Answers(name)

    for handle in ("DispatcherHandle", "GateKeeperHandle", "EventBusHandle", "StoreHandle",
                   "WorkerPoolHandle", "WorkerHandle", "MailboxHandle", "AgentPoolHandle"):
        monkeypatch.setattr(module, handle, Named)
    monkeypatch.setattr(module, "actor_names", lambda namespace, prefix="": [])
    monkeypatch.setattr(module, "find_engines", lambda namespace: {})

    view = asyncio.run(module.overview("ns"))

    assert view["workers"] == {"w1": {"running": 1}, "gone": None}
    assert view["tasks"] == {"name": "dispatcher"}
