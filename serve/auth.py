"""Who may reach the API: bearer keys, and the guard of the no-key mode.

Without API keys the API has no authentication and listens on loopback only (``open_bind_refusal``).
Loopback alone does not keep a browser out: a page the developer visits can DNS-rebind its own name
to 127.0.0.1, or send a "simple" cross-origin request (a POST without a body or content type needs
no CORS preflight). So in that mode ``NoKeyGuard`` answers only requests whose ``Host`` is a
loopback name or address, and requires ``Content-Type: application/json`` on every state-changing
request, bodiless ones included (a content type a page cannot send cross-origin without a
preflight, which this server never grants).
"""

from __future__ import annotations

import ipaddress
import secrets

from starlette.types import ASGIApp, Receive, Scope, Send

from serve.answers import reply

STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def key_tenant(keys: dict[str, str], authorization: str | None) -> str | None:
    """The tenant of ``Authorization: Bearer KEY`` if KEY is one of ``keys``; never for an empty
    key (``"Bearer "`` with nothing after it)."""
    scheme, _, key = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not key:
        return None
    found = None
    for known, tenant in keys.items():  # every key compared: the time does not say which matched
        if secrets.compare_digest(key.encode(), known.encode()):
            found = tenant
    return found


def loopback_host(host: str | None) -> bool:
    """Whether a ``Host`` header names this machine's loopback: ``localhost``, or a loopback
    address (``127.0.0.1``, ``[::1]``), with or without a port."""
    if not host:
        return False
    name = host.strip().lower()
    if name.startswith("["):  # an IPv6 literal: [::1] or [::1]:8000
        name, bracket, rest = name[1:].partition("]")
        if not bracket or (rest and not (rest.startswith(":") and rest[1:].isdecimal())):
            return False
    else:
        name, colon, port = name.partition(":")
        if colon and not port.isdecimal():
            return False
    return is_loopback(name)


def is_loopback(host: str) -> bool:
    """Whether a host name or address (no port, no brackets) is this machine's loopback."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def json_content_type(content_type: str | None) -> bool:
    media = (content_type or "").split(";")[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


class NoKeyGuard:
    """Pure ASGI middleware, active only when the server has no API keys (see the module's text):
    421 for a ``Host`` that is not loopback, 415 for a state-changing request without a JSON
    content type."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        settings = getattr(scope["app"].state, "settings", None) if scope["type"] == "http" else None
        if settings is None or settings.api_keys:
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        host = headers.get("host")
        if not loopback_host(host):
            await reply(send, 421, "MisdirectedRequest",
                         f"this server has no API keys and answers only for localhost, 127.0.0.1 "
                         f"or [::1], not Host {(host or '')[:100]!r}")
            return
        ctype = headers.get("content-type")
        if scope["method"] in STATE_CHANGING and not json_content_type(ctype):
            await reply(send, 415, "UnsupportedMediaType",
                         f"{scope['method']} needs Content-Type: application/json here (even "
                         f"without a body; a server without API keys takes no request a web page "
                         f"could send from another site), not {ctype or 'no content type'!r}")
            return
        await self.app(scope, receive, send)
