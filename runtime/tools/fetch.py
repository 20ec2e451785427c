"""``http_fetch``: GET a URL with httpx, with timeouts, a size cap, and a guard on where it connects.

The guard sits where the connection is made (an httpcore network backend), not in front of the URL:
it resolves the host itself, refuses if *any* address is loopback, private, link-local (cloud
metadata lives there), shared, multicast, reserved or otherwise not global, and then connects to the
address it checked, so neither a DNS answer that changes between check and use nor a redirect to an
internal host gets through. ``RAYSQUAD_TOOLS__HTTP_ALLOW_NETWORKS`` lists networks that may be
reached anyway (tests allow 127.0.0.1/32). Environment proxies are ignored: a proxy would connect for
us, past the guard.
"""

from __future__ import annotations

import functools
import ipaddress
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpcore
import httpx
from pydantic import BaseModel

from runtime.config import RetryPolicy, ToolSettings
from runtime.errors import AddressRefused, ResponseTooLarge, UpstreamError
from runtime.tools.registry import ToolContext, tool

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Awaitable[list[str]]]

METADATA = {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")}


def refusal(address: str, allow: Sequence[Network] = ()) -> str | None:
    """Why ``address`` may not be reached (``None``: it may)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if any(ip in net for net in allow):
        return None
    checks = (
        (ip in METADATA, "cloud metadata"), (ip.is_loopback, "loopback"),
        (ip.is_link_local, "link-local"), (ip.is_private, "private"),
        (ip.is_multicast, "multicast"), (ip.is_unspecified, "unspecified"),
        (ip.is_reserved, "reserved"), (not ip.is_global, "non-global"),
    )
    return next((reason for refused, reason in checks if refused), None)


def allowed_networks(cidrs: Iterable[str]) -> list[Network]:
    return [ipaddress.ip_network(c, strict=False) for c in cidrs]


async def system_resolve(host: str, port: int) -> list[str]:
    infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """Connects only to addresses that pass ``refusal``; everything else goes to ``inner``."""

    def __init__(self, allow: Sequence[Network] = (), inner: httpcore.AsyncNetworkBackend | None = None,
                 resolve: Resolver = system_resolve) -> None:
        self.allow = list(allow)
        self.inner = inner or httpcore.AnyIOBackend()
        self.resolve = resolve

    async def check(self, host: str, port: int) -> list[str]:
        """The addresses of ``host``, all of them allowed, or AddressRefused."""
        try:
            addresses = [str(ipaddress.ip_address(host.strip("[]")))]
        except ValueError:
            addresses = await self.resolve(host, port)
        for address in addresses:
            reason = refusal(address, self.allow)
            if reason is not None:
                raise AddressRefused(host, address, reason)
        return addresses

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None,
                          socket_options: Iterable[Any] | None = None) -> httpcore.AsyncNetworkStream:
        last: Exception | None = None
        for address in await self.check(host, port):
            try:
                return await self.inner.connect_tcp(address, port, timeout, local_address,
                                                    socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as e:
                last = e
        raise last or httpcore.ConnectError(f"no address for {host}")

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: Iterable[Any] | None = None) -> httpcore.AsyncNetworkStream:
        raise AddressRefused(path, path, "unix socket")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


@functools.cache
def _tls() -> ssl.SSLContext:
    """One TLS context per process: building one reads the CA bundle (tens of milliseconds)."""
    return httpx.create_ssl_context()


class GuardedTransport(httpx.AsyncHTTPTransport):
    """httpx's transport with its connection pool on a ``GuardedBackend``."""

    def __init__(self, backend: httpcore.AsyncNetworkBackend) -> None:
        super().__init__(verify=_tls(), trust_env=False)
        # httpx builds its pool without a way to pass a network backend; this is the same pool on ours.
        self._pool = httpcore.AsyncConnectionPool(ssl_context=_tls(), network_backend=backend)


class FetchResult(BaseModel):
    url: str
    status: int
    content_type: str
    text: str
    bytes: int


async def fetch(url: str, settings: ToolSettings, headers: dict[str, str] | None = None,
                max_bytes: int | None = None, backend: httpcore.AsyncNetworkBackend | None = None,
                reached: Callable[[], None] | None = None) -> FetchResult:
    """GET ``url``: 429 and 5xx raise (retryable), other statuses are returned. ``reached`` is called
    when the response's headers arrive (the server surely has the request)."""
    scheme = urlsplit(url).scheme
    if scheme not in ("http", "https"):
        raise ValueError(f"http_fetch fetches http and https URLs, not {scheme or 'no scheme'!r}")
    cap = min(max_bytes or settings.http_max_bytes, settings.http_max_bytes)
    backend = backend or GuardedBackend(allowed_networks(settings.http_allow_networks))
    async with httpx.AsyncClient(transport=GuardedTransport(backend), trust_env=False,
                                 timeout=settings.http_timeout_s, follow_redirects=True,
                                 max_redirects=settings.http_max_redirects) as client:
        async with client.stream("GET", url, headers=headers) as response:
            if reached is not None:
                reached()
            if response.status_code == 429 or response.status_code >= 500:
                raise UpstreamError(url, response.status_code,
                                    _retry_after(response.headers.get("retry-after")))
            declared = response.headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > cap:
                raise ResponseTooLarge(url, cap)
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > cap:
                    raise ResponseTooLarge(url, cap)
            return FetchResult(url=str(response.url), status=response.status_code,
                               content_type=response.headers.get("content-type", ""),
                               text=body.decode(response.encoding or "utf-8", errors="replace"),
                               bytes=len(body))


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def _host_gate(args: BaseModel) -> str:
    return f"http:{urlsplit(args.url).hostname or ''}"  # type: ignore[attr-defined]


@tool(gate=_host_gate, retry_on=(httpx.TransportError, UpstreamError),
      retry=RetryPolicy(max_attempts=4, initial_backoff_s=0.5, max_backoff_s=10.0))
async def http_fetch(url: str, ctx: ToolContext, headers: dict[str, str] | None = None,
                     max_bytes: int | None = None) -> FetchResult:
    """Fetch a web page or API response by HTTP GET. Returns the status, content type and text.

    Refuses private, loopback, link-local and metadata addresses unless configuration allows them.
    Passes the gate ``http:<host>``; retries connection errors, 429 and 5xx with backoff.
    """
    return await fetch(url, ctx.settings, headers, max_bytes, reached=ctx.reached)
