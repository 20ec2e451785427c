"""``http_fetch``: GET a URL with httpx, with timeouts, a size cap, and a guard on where it connects.

Where it connects. The guard sits where the connection is made (an httpcore network backend), not in
front of the URL: it resolves the host itself, refuses if *any* address is loopback, private,
link-local (cloud metadata lives there), shared, multicast, reserved or otherwise not global, and
then connects to the address it checked, so a DNS answer that changes between check and use does not
get through. An IPv6 address that stands for an IPv4 one (IPv4-mapped or -compatible, 6to4, Teredo,
NAT64) is judged by the IPv4 address it embeds. Only the ports ``RAYSQUAD_TOOLS__HTTP_ALLOW_PORTS``
lists (80 and 443 by default) are reached, and ``RAYSQUAD_TOOLS__HTTP_ALLOW_NETWORKS`` lists networks
that may be reached although they are private (tests allow 127.0.0.1/32). A refusal names the host
as it was given, never the address it resolved to (that goes to the log only). Environment proxies
are ignored: a proxy would connect for us, past the guard.

How much it reads. The cap counts the body as it arrives and again as it decodes: the raw bytes are
decoded here, one step at a time, and no step may yield more than what is left under the cap, so a
small compressed body cannot expand past it in memory (a gzip bomb stops at the cap). A body has one
content-coding at most, gzip or deflate (the only ones asked for); stacked codings and any other
(br, zstd, ...) are refused.

Gates and redirects. The gate key is ``http:<host>`` with the host normalised (lower case, IDNA, no
trailing dot; an IP literal in its canonical form), so spellings of one host share one gate.
Redirects are followed here rather than by httpx: one on the same host is followed; one to another
host passes that host's gate first where the caller gives ``fetch`` a way to (``gate``). Without one
it is not followed: the result is the redirect itself, with its ``location``, for the caller to fetch
with a call of its own, which passes that host's gate. The caller's headers go to the URL's own origin
(scheme, host and port) only: a hop to another origin carries just ``CARRIED_HEADERS`` of them, since
any other (an ``X-Api-Key``, a ``Private-Token``) may be a credential for the first origin. A redirect
from https to http is refused (``AddressRefused``): the request would travel in clear text.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import re
import socket
import ssl
import zlib
from collections.abc import Awaitable, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpcore
import httpx
from pydantic import BaseModel, Field

from runtime.core.config import RetryPolicy, ToolSettings
from runtime.core.errors import AddressRefused, ResponseTooLarge, UpstreamError
from runtime.tools.registry import ToolContext, tool

log = logging.getLogger(__name__)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Awaitable[list[str]]]
#: Enters the gate of a resource key for as long as the context is held.
Gate = Callable[[str], AbstractAsyncContextManager[object]]

METADATA = {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")}
IPV4_COMPATIBLE = ipaddress.ip_network("::/96")
NAT64 = ipaddress.ip_network("64:ff9b::/96")
NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")
DEFAULT_PORTS = (range(80, 81), range(443, 444))
#: The content-codings decoded, and so the only ones asked for.
CODINGS = {"gzip": "gzip", "x-gzip": "gzip", "deflate": "deflate"}
ACCEPT_ENCODING = "gzip, deflate"
#: The caller's headers that a redirect to another origin still carries: none of them is a credential.
CARRIED_HEADERS = frozenset({"accept", "accept-language", "user-agent"})
_DEFAULT_PORTS = {"http": 80, "https": 443}


# -- where it may connect ---------------------------------------------------------------------------


def embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address stands for: IPv4-mapped and -compatible, 6to4, Teredo (its
    server and its client) and NAT64's well-known prefix; none for any other."""
    if ip.ipv4_mapped is not None:
        return [ip.ipv4_mapped]
    if ip.sixtofour is not None:
        return [ip.sixtofour]
    if ip.teredo is not None:
        return list(ip.teredo)
    if ip in NAT64 or (ip in IPV4_COMPATIBLE and int(ip) > 1):  # not :: nor ::1
        return [ipaddress.IPv4Address(int(ip) & 0xFFFF_FFFF)]
    return []


def refusal(address: str, allow: Sequence[Network] = ()) -> str | None:
    """Why ``address`` may not be reached (``None``: it may)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if any(ip in net for net in allow):
        return None
    if isinstance(ip, ipaddress.IPv6Address):
        if ip in NAT64_LOCAL:  # where its IPv4 address sits depends on the local prefix length
            return "local-use NAT64"
        embedded = embedded_ipv4(ip)
        if embedded:
            return next(filter(None, (refusal(str(v4), allow) for v4 in embedded)), None)
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


def _a(reason: str) -> str:
    return f"{'an' if reason[0] in 'aeiou' else 'a'} {reason}"


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """Connects, through ``inner``, only to addresses that pass ``refusal`` and only on allowed ports:
    it resolves the host itself and connects to the very addresses it checked."""

    def __init__(self, allow: Sequence[Network] = (), inner: httpcore.AsyncNetworkBackend | None = None,
                 resolve: Resolver = system_resolve, ports: Sequence[range] = DEFAULT_PORTS) -> None:
        self.allow = list(allow)
        self.inner = inner or httpcore.AnyIOBackend()
        self.resolve = resolve
        self.ports = list(ports)

    @classmethod
    def from_settings(cls, settings: ToolSettings, inner: httpcore.AsyncNetworkBackend | None = None,
                      resolve: Resolver = system_resolve) -> GuardedBackend:
        return cls(allowed_networks(settings.http_allow_networks), inner, resolve, settings.port_ranges())

    async def check(self, host: str, port: int) -> list[str]:
        """The addresses of ``host``, all of them allowed, or AddressRefused."""
        try:
            addresses, literal = [str(ipaddress.ip_address(host.strip("[]")))], True
        except ValueError:
            addresses, literal = await self.resolve(host, port), False
        for address in addresses:
            reason = refusal(address, self.allow)
            if reason is None:
                continue
            if literal:
                raise AddressRefused(host, f"{reason} address")
            log.warning("http_fetch refused %s port %d: it resolves to %s, %s address", host, port,
                        address, _a(reason))
            raise AddressRefused(host, f"it resolves to {_a(reason)} address")
        if not any(port in allowed for allowed in self.ports):
            raise AddressRefused(host, f"port {port} is not allowed", "RAYSQUAD_TOOLS__HTTP_ALLOW_PORTS")
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
        raise AddressRefused(path, "unix sockets are never reached", "")

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


# -- the gate key ------------------------------------------------------------------------------------

_NUMERIC_IPV4 = re.compile(r"[0-9][0-9a-fx.]*")  # 2130706433, 127.1, 0x7f.0.0.1: getaddrinfo reads them


def normal_host(host: str) -> str:
    """``host`` as gates compare it: an IP literal in its canonical form (IPv4 also in the numeric
    spellings the resolver accepts), a name in lower case without its trailing dot."""
    bare = host.strip().removeprefix("[").removesuffix("]")
    try:
        return ipaddress.ip_address(bare).compressed
    except ValueError:
        pass
    name = bare.rstrip(".").lower()
    if _NUMERIC_IPV4.fullmatch(name):
        try:
            return str(ipaddress.IPv4Address(socket.inet_aton(name)))
        except OSError:
            pass
    return name


def host_of(url: str | httpx.URL) -> str:
    """The normalised host of ``url``, IDNA-encoded as httpx sends it."""
    try:
        raw = httpx.URL(url).raw_host.decode("ascii")
    except httpx.InvalidURL:  # fetch refuses it anyway; the key just has to be a key
        raw = urlsplit(str(url)).hostname or ""
    return normal_host(raw)


def gate_key(url: str | httpx.URL) -> str:
    return f"http:{host_of(url)}"


def origin_of(url: httpx.URL) -> tuple[str, str, int | None]:
    """Scheme, normalised host and port: what a browser calls the origin."""
    return url.scheme, host_of(url), url.port or _DEFAULT_PORTS.get(url.scheme)


def carried(headers: dict[str, str] | None) -> dict[str, str]:
    """The caller's headers that may go to another origin."""
    return {k: v for k, v in (headers or {}).items() if k.lower() in CARRIED_HEADERS}


# -- how much it reads -------------------------------------------------------------------------------


class _Decoder:
    """One content-coding, decoded a step at a time; no step yields more than it is allowed."""

    def __init__(self, coding: str) -> None:
        self._zlib = zlib.decompressobj(zlib.MAX_WBITS | 16 if coding == "gzip" else zlib.MAX_WBITS)
        self._raw_deflate_possible = coding == "deflate"  # some servers send deflate without zlib's header

    def decode(self, data: bytes, room: int) -> bytes | None:
        """``data`` decoded, or None when that would be more than ``room`` bytes."""
        try:
            out = self._zlib.decompress(data, room + 1)
        except zlib.error as e:
            if not self._raw_deflate_possible:
                raise httpx.DecodingError(f"the body does not decode: {e}") from None
            self._zlib = zlib.decompressobj(-zlib.MAX_WBITS)
            self._raw_deflate_possible = False
            return self.decode(data, room)
        self._raw_deflate_possible = False
        return None if len(out) > room else out


def _decoder(headers: httpx.Headers) -> _Decoder | None:
    value = ", ".join(headers.get_list("content-encoding"))
    codings = [c for c in (c.strip().lower() for c in value.split(",")) if c and c != "identity"]
    if len(codings) > 1:
        raise httpx.DecodingError(f"refused a body with more than one content-coding ({value})")
    if not codings:
        return None
    if codings[0] not in CODINGS:
        raise httpx.DecodingError(f"content-coding {codings[0]!r} is not supported (only gzip and deflate)")
    return _Decoder(CODINGS[codings[0]])


async def _read(response: httpx.Response, cap: int) -> bytes:
    """The decoded body, or ResponseTooLarge as soon as its raw or its decoded bytes pass ``cap``."""
    url = str(response.url)
    declared = response.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > cap:
        raise ResponseTooLarge(url, cap)
    decoder = _decoder(response.headers)
    body, raw = bytearray(), 0
    async for chunk in response.aiter_raw():
        raw += len(chunk)
        piece = chunk if decoder is None else decoder.decode(chunk, cap - len(body))
        if raw > cap or piece is None or len(body) + len(piece) > cap:
            raise ResponseTooLarge(url, cap)
        body += piece
    return bytes(body)


# -- the tool -----------------------------------------------------------------------------------------


class FetchResult(BaseModel):
    url: str
    status: int
    content_type: str
    text: str
    bytes: int
    location: str | None = Field(
        None, description="a redirect to another host, not followed: fetch it with a call of its own")


async def fetch(url: str, settings: ToolSettings, headers: dict[str, str] | None = None,
                max_bytes: int | None = None, backend: httpcore.AsyncNetworkBackend | None = None,
                reached: Callable[[], None] | None = None, gate: Gate | None = None) -> FetchResult:
    """GET ``url``: 429 and 5xx raise (retryable), other statuses are returned. ``reached`` is called
    when the first response's headers arrive (the server surely has the request). The caller holds
    the gate of ``url``'s host; ``gate`` enters another host's, for a redirect there (without it,
    such a redirect is returned rather than followed)."""
    scheme = urlsplit(url).scheme
    if scheme not in ("http", "https"):
        raise ValueError(f"http_fetch fetches http and https URLs, not {scheme or 'no scheme'!r}")
    cap = min(max_bytes or settings.http_max_bytes, settings.http_max_bytes)
    backend = backend or GuardedBackend.from_settings(settings)
    async with httpx.AsyncClient(transport=GuardedTransport(backend), trust_env=False,
                                 timeout=settings.http_timeout_s, follow_redirects=False,
                                 headers={"Accept-Encoding": ACCEPT_ENCODING}) as client:
        request = client.build_request("GET", url, headers=headers)
        origin = host = host_of(request.url)
        home = origin_of(request.url)  # where the caller's headers may go
        hops = 0
        hop_gate = AsyncExitStack()  # the gate of the host a redirect led to, while there
        try:
            while True:
                response = await client.send(request, stream=True)
                try:
                    if hops == 0 and reached is not None:
                        reached()
                    redirect = response.next_request
                    if redirect is None:
                        return await _result(response, cap, None)
                    target = host_of(redirect.url)
                    if redirect.url.scheme not in ("http", "https") or (target != host and gate is None):
                        return await _result(response, cap, str(redirect.url))  # not followed
                    if hops == settings.http_max_redirects:
                        raise httpx.TooManyRedirects(f"more than {hops} redirects", request=request)
                    if request.url.scheme == "https" and redirect.url.scheme == "http":
                        raise AddressRefused(target, "a redirect from https to http is not followed "
                                                     "(the request would travel in clear text)", "")
                finally:
                    await response.aclose()
                if target != host:
                    await hop_gate.aclose()
                    hop_gate = AsyncExitStack()
                    if target != origin:
                        assert gate is not None
                        await hop_gate.enter_async_context(gate(f"http:{target}"))
                    host = target
                hop_headers = headers if origin_of(redirect.url) == home else carried(headers)
                request = client.build_request("GET", redirect.url, headers=hop_headers)
                hops += 1
        finally:
            await hop_gate.aclose()


async def _result(response: httpx.Response, cap: int, location: str | None) -> FetchResult:
    if response.status_code == 429 or response.status_code >= 500:
        raise UpstreamError(str(response.url), response.status_code,
                            _retry_after(response.headers.get("retry-after")))
    body = await _read(response, cap)
    return FetchResult(url=str(response.url), status=response.status_code,
                       content_type=response.headers.get("content-type", ""),
                       text=body.decode(response.encoding or "utf-8", errors="replace"),
                       bytes=len(body), location=location)


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def _host_gate(args: BaseModel) -> str:
    return gate_key(args.model_dump(include={"url"})["url"])


@tool(gate=_host_gate, retry_on=(httpx.TransportError, UpstreamError),
      retry=RetryPolicy(max_attempts=4, initial_backoff_s=0.5, max_backoff_s=10.0))
async def http_fetch(url: str, ctx: ToolContext, headers: dict[str, str] | None = None,
                     max_bytes: int | None = None) -> FetchResult:
    """Fetch a web page or API response by HTTP GET. Returns the status, content type and text.

    Refuses private, loopback, link-local and metadata addresses and ports other than 80 and 443
    unless configuration allows them. Passes the gate ``http:<host>``, and a redirect to another host
    that host's gate too; retries connection errors, 429 and 5xx with backoff.
    """
    return await fetch(url, ctx.settings, headers, max_bytes, reached=ctx.reached, gate=ctx.gate)
