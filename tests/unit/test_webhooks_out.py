"""Outbound webhooks without a network: the address guard refuses private targets before any
connection (the inner backend fails the test if it is ever asked to connect), the body and its
signature, and the backoff between attempts."""

from __future__ import annotations

import asyncio
import base64
import json

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from runtime.config import Settings, WebhookTarget
from runtime.models import TopicEvent
from runtime.tools.fetch import GuardedBackend, GuardedTransport
from runtime.webhooks import backoff_s, body_of, message_id, send
from tests.unit.test_tool_guards import NeverConnect

SECRET = "whsec_" + base64.b64encode(b"unit-test-secret-unit-test-secr").decode()
EVENT = TopicEvent(id="e1", topic="orders.new", key="k", data={"n": 1}, tenant="t",
                   created_at=1.0, seq=42)


async def resolve_private(host: str, port: int) -> list[str]:
    return ["10.0.0.7"]


@pytest.mark.parametrize("url", ["http://10.0.0.5/hook", "http://[::ffff:192.168.1.1]/",
                                 "http://169.254.169.254/latest", "http://127.0.0.1:8080/",
                                 "http://hooks.internal.example/hook"])
def test_private_targets_are_refused_before_any_connection(url: str) -> None:
    backend = GuardedBackend(inner=NeverConnect(), resolve=resolve_private)

    async def run() -> object:
        async with httpx.AsyncClient(transport=GuardedTransport(backend)) as client:
            return await send(client, WebhookTarget(url=url, topics=("orders.*",), secret=SECRET),
                              EVENT)

    outcome = asyncio.run(run())
    assert outcome.ok is False and outcome.final is True  # type: ignore[attr-defined]
    assert outcome.detail.startswith("refused")  # type: ignore[attr-defined]


def test_the_body_is_the_event_and_its_signature_verifies() -> None:
    body = body_of(EVENT)
    payload = json.loads(body)
    assert payload == {"id": "e1", "topic": "orders.new", "key": "k", "tenant": "t",
                       "source": "client", "data": {"n": 1}, "published_at": 1.0}
    assert message_id(EVENT) == "msg_42"
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    headers = {"webhook-id": "msg_42", "webhook-timestamp": str(int(now.timestamp())),
               "webhook-signature": Webhook(SECRET).sign("msg_42", now, body)}
    assert Webhook(SECRET).verify(body, headers) == payload


def test_backoff_doubles_up_to_a_cap() -> None:
    waits = [backoff_s(n, 1.0) for n in range(1, 12)]
    assert 0.8 <= waits[0] <= 1.2 and 1.6 <= waits[1] <= 2.4 and 6.4 <= waits[3] <= 9.6
    assert max(waits) <= 300 * 1.2


def test_outbound_targets_are_checked_in_the_settings() -> None:
    ok = Settings(webhooks_out={"a": {"url": "https://x.example/h", "topics": ["task.*"],
                                      "secret": SECRET}})
    assert ok.webhooks_out["a"].topics == ("task.*",)
    for bad in ({"url": "ftp://x", "topics": ["a"], "secret": SECRET},
                {"url": "http://x", "topics": [], "secret": SECRET},
                {"url": "http://x", "topics": ["a..b"], "secret": SECRET}):
        with pytest.raises(ValueError):
            Settings(webhooks_out={"a": bad})
