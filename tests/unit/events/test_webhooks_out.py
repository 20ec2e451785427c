"""Outbound webhooks without a network: the address guard refuses private targets before any
connection (the inner backend fails the test if it is ever asked to connect), the body and its
signature, and the backoff between attempts; one send bounded in time and in what it reads back,
and what it says of a failure free of the target's URL."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from runtime.core.config import Settings, WebhookTarget
from runtime.core.models import TopicEvent
from runtime.events.webhooks import Outcome, backoff_s, body_of, message_id, send
from runtime.tools.fetch import GuardedBackend, GuardedTransport
from tests.unit.tools.test_tool_guards import NeverConnect

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

    async def run() -> Outcome:
        async with httpx.AsyncClient(transport=GuardedTransport(backend)) as client:
            target = WebhookTarget(url=url, topics=("orders.*",), secret=SECRET, tenant="*")
            return await send(client, target, EVENT)

    outcome = asyncio.run(run())
    assert outcome.ok is False and outcome.final is True
    assert outcome.detail.startswith("refused")


def test_the_body_is_the_event_and_its_signature_verifies() -> None:
    body = body_of(EVENT)
    payload = json.loads(body)
    assert payload == {"id": "e1", "topic": "orders.new", "key": "k", "tenant": "t",
                       "source": "client", "data": {"n": 1}, "published_at": 1.0}
    msg_id = message_id(EVENT)
    assert msg_id == message_id(EVENT.model_copy()) and msg_id.startswith("msg_")
    # Not the seq alone: a database made anew (or another deployment) repeats seqs, not ids.
    assert message_id(EVENT.model_copy(update={"created_at": 2.0})) != msg_id
    assert message_id(EVENT.model_copy(update={"tenant": "u"})) != msg_id
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    headers = {"webhook-id": msg_id, "webhook-timestamp": str(int(now.timestamp())),
               "webhook-signature": Webhook(SECRET).sign(msg_id, now, body)}
    assert Webhook(SECRET).verify(body, headers) == payload


def test_backoff_doubles_up_to_a_cap() -> None:
    waits = [backoff_s(n, 1.0) for n in range(1, 12)]
    assert 0.8 <= waits[0] <= 1.2 and 1.6 <= waits[1] <= 2.4 and 6.4 <= waits[3] <= 9.6
    assert max(waits) <= 300 * 1.2


def test_outbound_targets_are_checked_in_the_settings() -> None:
    ok = Settings(webhooks_out={"a": {"url": "https://x.example/h", "topics": ["task.*"],
                                      "secret": SECRET, "tenant": "*"}})
    assert ok.webhooks_out["a"].topics == ("task.*",)
    for bad in ({"url": "ftp://x", "topics": ["a"], "secret": SECRET, "tenant": "*"},
                {"url": "http://x", "topics": [], "secret": SECRET, "tenant": "*"},
                {"url": "http://x", "topics": ["a..b"], "secret": SECRET, "tenant": "*"},
                {"url": "http://x", "topics": ["a"], "secret": SECRET}):  # whose events? say so
        with pytest.raises(ValueError):
            Settings(webhooks_out={"a": bad})


TARGET = WebhookTarget(url="http://hooks.example/h", topics=("orders.*",), secret=SECRET, tenant="*")


def _send_to(stream: httpx.AsyncByteStream, timeout_s: float = 10.0) -> Outcome:
    async def run() -> Outcome:
        transport = httpx.MockTransport(lambda request: httpx.Response(200, stream=stream))
        async with httpx.AsyncClient(transport=transport) as client:
            return await send(client, TARGET, EVENT, timeout_s=timeout_s)

    return asyncio.run(run())


class Endless(httpx.AsyncByteStream):
    """A response body that never ends: 1 KB at a time, quickly or trickling."""

    def __init__(self, pause_s: float = 0.0) -> None:
        self.pause_s = pause_s
        self.sent = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            if self.pause_s:
                await asyncio.sleep(self.pause_s)
            self.sent += 1024
            yield b"x" * 1024


def test_a_send_reads_only_a_few_kb_of_the_response() -> None:
    body = Endless()
    outcome = _send_to(body)
    assert outcome.ok and outcome.detail == "HTTP 200"
    assert body.sent <= 8 * 1024


def test_a_trickling_receiver_is_cut_off_at_the_sends_deadline() -> None:
    body = Endless(pause_s=0.2)  # a chunk now and then: no single read ever times out
    started = time.monotonic()
    outcome = _send_to(body, timeout_s=0.3)
    assert not outcome.ok and outcome.detail == "timed out after 0.3 s"
    assert time.monotonic() - started < 5 and body.sent >= 1024


def test_what_a_failure_says_never_holds_the_url() -> None:
    async def run() -> Outcome:
        def refuse(request: httpx.Request) -> httpx.Response:
            raise httpx.ConnectError(f"cannot reach {request.url}", request=request)

        async with httpx.AsyncClient(transport=httpx.MockTransport(refuse)) as client:
            return await send(client, TARGET, EVENT)

    outcome = asyncio.run(run())
    assert outcome.detail == "ConnectError"
