"""Webhooks out: events POSTed to outside systems, signed by the Standard Webhooks scheme.

A target (``RAYSQUAD_WEBHOOKS_OUT``) names a URL, the topic patterns it wants (``task.failed``,
``orders.*``) and a ``whsec_`` secret. The event bus routes matching events to it like to any
subscriber (target ``webhook:<name>``) and sends each with ``send``: the body is the event as JSON;
``webhook-id`` is the same on every retry of one event (the receiver de-duplicates by it). A
failed attempt (a connection error, a timeout, a status other than 2xx) is retried with
exponential backoff; after ``event_max_attempts`` the event becomes a dead letter (tool
``webhook:<name>``), which ``raysquad replay`` sends again. Connections go through the address
guard of ``http_fetch`` (its networks and ports settings): a private address is refused before
any packet leaves, and that is final.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx
from standardwebhooks.webhooks import Webhook

from runtime.config import WebhookTarget
from runtime.errors import AddressRefused
from runtime.models import TopicEvent

#: Longest wait between two attempts of one webhook.
MAX_BACKOFF_S = 300.0
SEND_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Outcome:
    ok: bool
    detail: str  # "HTTP 200", "HTTP 503", "ConnectError: ...", "refused: ..."
    final: bool = False  # a failure that no retry can mend (the address guard refused)


def body_of(event: TopicEvent) -> bytes:
    return json.dumps({"id": event.id, "topic": event.topic, "key": event.key,
                       "tenant": event.tenant, "source": event.source, "data": event.data,
                       "published_at": event.created_at}, separators=(",", ":")).encode()


def message_id(event: TopicEvent) -> str:
    """The ``webhook-id`` of an event: the same on each retry, unique per event."""
    return f"msg_{event.seq}"


async def send(client: httpx.AsyncClient, target: WebhookTarget, event: TopicEvent) -> Outcome:
    """POST ``event`` to ``target``, signed; what came of it."""
    body = body_of(event)
    msg_id = message_id(event)
    now = datetime.now(UTC)
    headers = {"webhook-id": msg_id, "webhook-timestamp": str(int(now.timestamp())),
               "webhook-signature": Webhook(target.secret).sign(msg_id, now, body),
               "content-type": "application/json", "user-agent": "raysquad-webhooks"}
    try:
        response = await client.post(target.url, content=body, headers=headers,
                                     timeout=SEND_TIMEOUT_S)
    except AddressRefused as e:
        return Outcome(False, f"refused: {e}", final=True)
    except httpx.HTTPError as e:
        return Outcome(False, f"{type(e).__name__}: {e}"[:300])
    return Outcome(200 <= response.status_code < 300, f"HTTP {response.status_code}")


def backoff_s(attempt: int, base_s: float) -> float:
    """The wait after failed attempt ``attempt`` (1, 2, ...): exponential, capped, with jitter."""
    return min(MAX_BACKOFF_S, base_s * 2 ** (attempt - 1)) * random.uniform(0.8, 1.2)
