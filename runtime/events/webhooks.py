"""Webhooks out: events POSTed to outside systems, signed by the Standard Webhooks scheme.

A target (``RAYSQUAD_WEBHOOKS_OUT``) names a URL, the topic patterns it wants (``task.failed``,
``orders.*``) and a ``whsec_`` secret. The event bus routes matching events to it like to any
subscriber (target ``webhook:<name>``) and sends each with ``send``: the body is the event as JSON;
``webhook-id`` is the same on every retry of one event (the receiver de-duplicates by it) and
differs between events of different databases or deployments (a hash of the event as kept). A
failed attempt (a connection error, a timeout, a status other than 2xx) is retried with
exponential backoff; after ``event_max_attempts`` the event becomes a dead letter (tool
``webhook:<name>``), which ``raysquad replay`` sends again. Connections go through the address
guard of ``http_fetch`` (its networks and ports settings): a private address is refused before
any packet leaves, and that is final.

One send is bounded as a whole (``SEND_TIMEOUT_S``, however slowly the receiver trickles) and
reads back at most ``MAX_RESPONSE_BYTES`` of the response, which it discards. What an attempt came
to names the kind of failure only (``ConnectError``, ``HTTP 503``): a tenant reads it in its
event's report, and the target's URL is the operator's.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import random
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from runtime.core.config import WebhookTarget
from runtime.core.errors import AddressRefused
from runtime.core.models import TopicEvent

if TYPE_CHECKING:
    import httpx

log = logging.getLogger(__name__)

#: Longest wait between two attempts of one webhook.
MAX_BACKOFF_S = 300.0
#: One attempt, connect to the last byte read, whatever the receiver does.
SEND_TIMEOUT_S = 10.0
#: What is read of a response (then the connection is closed): its status is all that counts.
MAX_RESPONSE_BYTES = 4096


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
    """The ``webhook-id`` of an event: the same on each retry, unique per event, and unlike any
    of another database's events (a seq alone repeats when a database is made anew)."""
    kept = f"{event.tenant}\n{event.id}\n{event.seq}\n{event.created_at!r}"
    return "msg_" + hashlib.sha256(kept.encode()).hexdigest()[:32]


async def send(client: httpx.AsyncClient, target: WebhookTarget, event: TopicEvent,
               timeout_s: float = SEND_TIMEOUT_S) -> Outcome:
    """POST ``event`` to ``target``, signed; what came of it, within ``timeout_s`` in all."""
    # Imported here: httpx brings its command line (rich, click, pygments), 10 MiB in every
    # process that imports this module, and only the event bus sends.
    import httpx
    from standardwebhooks.webhooks import Webhook

    body = body_of(event)
    msg_id = message_id(event)
    now = datetime.now(UTC)
    headers = {"webhook-id": msg_id, "webhook-timestamp": str(int(now.timestamp())),
               "webhook-signature": Webhook(target.secret).sign(msg_id, now, body),
               "content-type": "application/json", "user-agent": "raysquad-webhooks"}
    try:
        async with asyncio.timeout(timeout_s), client.stream(
                "POST", target.url, content=body, headers=headers, timeout=timeout_s) as response:
            read = 0
            async for chunk in response.aiter_raw():
                read += len(chunk)
                if read >= MAX_RESPONSE_BYTES:
                    break
    except AddressRefused as e:
        log.warning("webhook to %s refused by the address guard: %s", target.url, e)
        return Outcome(False, "refused by the address guard", final=True)
    except TimeoutError:
        return Outcome(False, f"timed out after {timeout_s:g} s")
    except httpx.HTTPError as e:
        log.info("webhook to %s failed: %s: %s", target.url, type(e).__name__, e)
        return Outcome(False, type(e).__name__)
    return Outcome(200 <= response.status_code < 300, f"HTTP {response.status_code}")


def backoff_s(attempt: int, base_s: float) -> float:
    """The wait after failed attempt ``attempt`` (1, 2, ...): exponential, capped, with jitter."""
    return min(MAX_BACKOFF_S, base_s * 2 ** (attempt - 1)) * random.uniform(0.8, 1.2)
