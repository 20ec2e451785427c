"""A server without API keys (loopback only) over real HTTP: a name that is not loopback in
``Host`` (DNS rebinding) gets 421, and a state-changing request without a JSON content type
(what a page of another site can send without a preflight) gets 415, bodiless ones included;
raysquad's own clients send it (audit M10)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pytest

from serve.http_client import HttpClient
from tests.e2e.live import raysquad_up


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with raysquad_up(Path(tmp_path_factory.mktemp("nokey")), "tests.apps.basic",
                     RAYSQUAD_API_KEYS="{}") as base:
        yield base


def test_only_loopback_host_names_are_answered(url: str) -> None:
    port = urlparse(url).port
    with httpx.Client(base_url=url, timeout=30) as client:
        for host in (f"evil.example:{port}", "evil.example", f"127.0.0.1.nip.io:{port}",
                     f"10.0.0.7:{port}"):
            r = client.get("/v1/tasks", headers={"Host": host})
            assert r.status_code == 421, (host, r.status_code, r.text)
            assert "localhost, 127.0.0.1 or [::1]" in r.json()["error"]["message"]
        for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", "localhost"):
            assert client.get("/v1/tasks", headers={"Host": host}).status_code == 200, host


def test_a_state_changing_request_needs_a_json_content_type_even_without_a_body(
        url: str, tmp_path: Path) -> None:
    with httpx.Client(base_url=url, timeout=30) as client:
        r = client.post("/v1/tasks", json={"workflow": "approval", "input": {"dir": str(tmp_path)}})
        assert r.status_code == 202, r.text
        task_id = r.json()["id"]
        # What fetch(url, {method: "POST", mode: "no-cors"}) sends: no body, no content type; or
        # a form's content type.
        for headers in ({}, {"Content-Type": "text/plain"},
                        {"Content-Type": "application/x-www-form-urlencoded"}):
            for path in (f"/v1/tasks/{task_id}/cancel", f"/v1/tasks/{task_id}/signals/approve"):
                r = client.post(path, headers=headers)
                assert r.status_code == 415, (path, headers, r.text)
                assert "Content-Type: application/json" in r.json()["error"]["message"]
        r = client.delete("/v1/gates/api:x")
        assert r.status_code == 415, r.text
        assert client.get(f"/v1/tasks/{task_id}").json()["cancel_requested"] is False

    # raysquad's HTTP client sends the content type on its bodiless POSTs.
    cancelled = HttpClient(url).cancel(task_id)
    assert cancelled.status.value == "cancelled" or cancelled.cancel_requested
