"""What http_fetch carries to whom, and what its errors and dead letters show (audit L7, M9).

Real local servers (tests/servers.py) on 127.0.0.1, two of them for two origins (the same host on
two ports), and one with TLS for a downgrade; the guard allows 127.0.0.1/32 only, so nothing here can
reach another address.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import ipaddress
import ssl
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from runtime.core.config import RetryPolicy, Settings, ToolSettings
from runtime.core.errors import AddressRefused, ResponseTooLarge, ToolFailed, UpstreamError, public_url
from runtime.core.models import DeadLetter
from runtime.flow.gates import GateClient
from runtime.tools import Registry
from runtime.tools import fetch as fetch_module
from runtime.tools.executor import Caller, ToolExecutor
from runtime.tools.fetch import fetch, http_fetch
from serve.http import redacted
from tests.servers import Upstream, _handler, upstream

LOOPBACK = ToolSettings(http_allow_networks=("127.0.0.1/32",), http_allow_ports=("1024-65535",))
SECRET_HEADERS = {"X-Api-Key": "k-secret", "Private-Token": "p-secret", "Authorization": "Bearer b",
                  "Accept": "text/html", "Accept-Language": "fr", "User-Agent": "raysquad-test"}


@asynccontextmanager
async def any_gate(key: str) -> AsyncIterator[None]:
    yield


def run(url: str, **kwargs: Any) -> Any:
    return asyncio.run(fetch(url, LOOPBACK, gate=any_gate, **kwargs))


def to(up: Upstream, target: str) -> str:
    return up.url(f"/redirect?to={quote(target, safe='')}")


# -- L7: the caller's headers stay with their origin ------------------------------------------------


def test_a_redirect_to_another_origin_carries_only_harmless_headers() -> None:
    with upstream() as a, upstream() as b:
        out = run(to(a, b.url("/ok")), headers=SECRET_HEADERS)
        assert out.status == 200
        (first,), (second,) = a.of("/redirect"), b.of("/ok")
    assert first.headers["x-api-key"] == "k-secret" and first.headers["private-token"] == "p-secret"
    sent = second.headers
    assert not {"x-api-key", "private-token", "authorization"} & set(sent)
    assert (sent["accept"], sent["accept-language"], sent["user-agent"]) == (
        "text/html", "fr", "raysquad-test")


def test_a_redirect_on_the_same_origin_keeps_the_callers_headers() -> None:
    with upstream() as a:
        run(to(a, a.url("/ok")), headers=SECRET_HEADERS)
        (hit,) = a.of("/ok")
    assert hit.headers["x-api-key"] == "k-secret" and hit.headers["private-token"] == "p-secret"


def test_back_on_the_first_origin_the_headers_are_its_own_again() -> None:
    with upstream() as a, upstream() as b:
        run(to(a, to(b, a.url("/ok"))), headers=SECRET_HEADERS)
        (at_b,), (back,) = b.of("/redirect"), a.of("/ok")
    assert "x-api-key" not in at_b.headers and back.headers["x-api-key"] == "k-secret"


def _certificate(tmp: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@contextmanager
def tls_upstream(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Upstream]:
    """tests/servers.py's upstream behind TLS, with a certificate for 127.0.0.1 that fetch trusts."""
    cert, key = _certificate(tmp)
    up = Upstream()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(up))
    server.daemon_threads = True
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    up.port = server.server_address[1]
    trusted = ssl.create_default_context(cafile=str(cert))
    monkeypatch.setattr(fetch_module, "_tls", lambda: trusted)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield up
    finally:
        server.shutdown()
        server.server_close()


def test_a_redirect_from_https_to_http_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with tls_upstream(tmp_path, monkeypatch) as secure, upstream() as plain:
        page = secure.url("/ok").replace("http://", "https://")
        assert run(page, headers=SECRET_HEADERS).status == 200  # TLS works: the refusal is the redirect's
        redirect = to(secure, plain.url("/ok")).replace("http://", "https://")
        with pytest.raises(AddressRefused, match="a redirect from https to http is not followed"):
            run(redirect, headers=SECRET_HEADERS)
        assert secure.count("/redirect") == 1 and plain.hits == []


# -- M9: URLs in errors and dead letters -------------------------------------------------------------


@pytest.mark.parametrize(("url", "shown"), [
    ("https://user:pa55@api.example:8443/v1/items?token=t0k&x=1#frag", "https://api.example:8443/v1/items"),
    ("http://tok@[::1]:8080/p;params?q=1", "http://[::1]:8080/p;params"),
    ("http://a@b@host.example/", "http://host.example/"),
    ("https://example.com", "https://example.com"),
    ("http://[::1/", "(an invalid URL)"),
])
def test_public_url_keeps_scheme_host_port_and_path(url: str, shown: str) -> None:
    assert public_url(url) == shown


SECRET_URL_PARTS = ("pa55", "t0k", "user:")


def test_upstream_errors_do_not_carry_userinfo_or_query() -> None:
    with upstream() as up:
        up.down = True
        url = up.url("/flaky?token=t0k").replace("http://", "http://user:pa55@")
        with pytest.raises(UpstreamError) as info:
            run(url)
    assert str(info.value) == f"{up.url('/flaky')} answered HTTP 503"
    assert not any(s in str(info.value) or s in repr(info.value.args) for s in SECRET_URL_PARTS)


def test_response_too_large_does_not_carry_userinfo_or_query() -> None:
    with upstream() as up:
        url = up.url("/ok?token=t0k").replace("http://", "http://user:pa55@")
        with pytest.raises(ResponseTooLarge) as info:
            run(url, max_bytes=10)
    assert str(info.value) == f"response from {up.url('/ok')} exceeds 10 bytes"


class _Letters:
    def __init__(self) -> None:
        self.letters: list[DeadLetter] = []

    async def add_dead_letter(self, letter: DeadLetter) -> None:
        self.letters.append(letter)


def test_a_dead_letter_shows_no_userinfo_or_query_but_replays_the_whole_url() -> None:
    store = _Letters()
    fast = dataclasses.replace(http_fetch, retry=RetryPolicy(max_attempts=2, initial_backoff_s=0.01))
    executor = ToolExecutor(Settings(tools=LOOPBACK), Registry({"http_fetch": fast}), store,
                            GateClient(None))
    with upstream() as up:
        up.down = True
        url = up.url("/flaky?token=t0k").replace("http://", "http://user:pa55@")
        with pytest.raises(ToolFailed) as info:
            asyncio.run(executor.call("http_fetch", {"url": url, "headers": {"X-Api-Key": "k"}},
                                      Caller("t1", "s1", "tenant-a")))
    (letter,) = store.letters
    assert letter.args["url"] == url  # kept whole: a replay fetches the same URL
    shown = redacted(letter)
    assert shown.args["url"] == up.url("/flaky") and shown.args["headers"] == {"X-Api-Key": "[redacted]"}
    for text in (shown.error, str(info.value), shown.model_dump_json()):
        assert not any(s in text for s in SECRET_URL_PARTS), text
    # A replay's result (a FetchResult names the URL it fetched) is shown the same way.
    replayed = letter.model_copy(update={"result": {"url": url, "status": 200, "text": "hello"}})
    assert redacted(replayed).result == {"url": up.url("/flaky"), "status": 200, "text": "hello"}


def test_a_model_calls_letter_shows_its_token_counts_but_not_its_tokens() -> None:
    """Names like secrets are redacted at any depth; counts of tokens (``max_tokens``, a usage's
    ``prompt_tokens``) are not secrets and stay readable."""
    letter = DeadLetter(id="d1", tool="llm:m", args={
        "request": {"max_tokens": 64, "messages": [], "access_token": "s3cret"},
        "auth": {"token": "s3cret"}}, attempts=2, error="boom", error_type="ModelFailed",
        task_id="t1", step_key="llm",
        tenant="a", status="dead", created_at=0.0,
        result={"usage": {"prompt_tokens": 5, "completion_tokens": 7}, "id_token": "s3cret"})
    shown = redacted(letter)
    assert shown.args == {"request": {"max_tokens": 64, "messages": [], "access_token": "[redacted]"},
                          "auth": {"token": "[redacted]"}}
    assert shown.result == {"usage": {"prompt_tokens": 5, "completion_tokens": 7},
                            "id_token": "[redacted]"}
