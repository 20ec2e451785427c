"""The built-in tools stay bounded and safe under hostile input (issue 10).

http_fetch: no test here lets a packet leave the process. Names resolve through a fake resolver, and
the guard's inner backend either fails the test when it is asked to connect (``NeverConnect``) or
answers from memory with a canned HTTP response (``Canned``), so decoding, ports, redirects and gates
run end to end without a network.

sql_query: SQLite files under tmp_path, and PostgreSQL at 127.0.0.1:5432 (database ``test``) on a
table of the test's own.
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import sqlite3
import threading
import time
import tracemalloc
import uuid
import zlib
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpcore
import httpx
import psycopg
import pytest
from pydantic import ValidationError

from runtime.core.config import ToolSettings
from runtime.core.errors import AddressRefused, QueryRefused, ResponseTooLarge
from runtime.tools import sql as sql_module
from runtime.tools.fetch import GuardedBackend, fetch, http_fetch, refusal
from runtime.tools.sql import query
from tests.conftest import wait_for

PUBLIC = {"a.example": "93.184.215.14", "b.example": "93.184.215.15", "example.com": "93.184.215.16"}

# -- a network that is not one ----------------------------------------------------------------------


class NeverConnect(httpcore.AsyncNetworkBackend):
    """An inner backend that fails the test if the guard ever lets a connection through."""

    async def connect_tcp(self, host: str, port: int, *args: Any, **kwargs: Any) -> Any:
        pytest.fail(f"the guard let a connection to {host}:{port} through")

    async def connect_unix_socket(self, path: str, *args: Any, **kwargs: Any) -> Any:
        pytest.fail(f"the guard let a connection to {path} through")

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


def resolve_from(table: dict[str, str]) -> Any:
    async def resolve(host: str, port: int) -> list[str]:
        return [table[host.rstrip(".").lower()]]

    return resolve


def response(status: int = 200, body: bytes = b"", headers: list[tuple[str, str]] | None = None,
             length: bool = True) -> bytes:
    """A raw HTTP/1.1 response; without ``length`` its body runs to the end of the connection."""
    lines = [f"HTTP/1.1 {status} X", *(f"{k}: {v}" for k, v in headers or []),
             *([f"Content-Length: {len(body)}"] if length else []), "Connection: close", "", ""]
    return "\r\n".join(lines).encode() + body


Route = Callable[[str, int, bytes], bytes]  # (address, port, request head) -> raw HTTP response


class _CannedStream(httpcore.AsyncNetworkStream):
    def __init__(self, route: Route, address: str, port: int, requests: list[bytes]) -> None:
        self.route, self.address, self.port, self.requests = route, address, port, requests
        self.inbox = b""
        self.out: bytearray | None = None

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self.inbox += buffer

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        if self.out is None:
            self.requests.append(self.inbox)
            self.out = bytearray(self.route(self.address, self.port, self.inbox))
        data = bytes(self.out[:max_bytes])
        del self.out[:max_bytes]
        return data

    async def aclose(self) -> None:
        pass

    def get_extra_info(self, info: str) -> Any:
        return None


class Canned(httpcore.AsyncNetworkBackend):
    """An inner backend that answers from memory; records every connection in ``events``."""

    def __init__(self, route: Route, events: list[str] | None = None) -> None:
        self.route = route
        self.events = events if events is not None else []
        self.requests: list[bytes] = []

    async def connect_tcp(self, host: str, port: int, *args: Any, **kwargs: Any) -> Any:
        self.events.append(f"connect {host}:{port}")
        return _CannedStream(self.route, host, port, self.requests)

    async def connect_unix_socket(self, path: str, *args: Any, **kwargs: Any) -> Any:
        pytest.fail("no unix sockets here")

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


def guarded(inner: httpcore.AsyncNetworkBackend, settings: ToolSettings,
            names: dict[str, str] | None = None) -> GuardedBackend:
    return GuardedBackend.from_settings(settings, inner=inner, resolve=resolve_from(names or PUBLIC))


def run_fetch(url: str, route: Route, settings: ToolSettings | None = None, **kwargs: Any) -> Any:
    settings = settings or ToolSettings()
    backend = guarded(Canned(route), settings)
    return asyncio.run(fetch(url, settings, backend=backend, **kwargs))


def serve(body: bytes, *headers: tuple[str, str]) -> Route:
    return lambda address, port, request: response(200, body, list(headers))


# -- http_fetch: content codings ----------------------------------------------------------------------


def gzipped(data: bytes) -> bytes:
    z = zlib.compressobj(9, zlib.DEFLATED, 31)
    return z.compress(data) + z.flush()


def gzip_bomb(decoded_mib: int) -> bytes:
    z = zlib.compressobj(9, zlib.DEFLATED, 31)
    chunk = bytes(1 << 20)
    return b"".join(z.compress(chunk) for _ in range(decoded_mib)) + z.flush()


def test_a_gzip_bomb_stops_at_the_cap_without_decoding_the_rest() -> None:
    bomb = gzip_bomb(64)  # 64 MiB decoded from about 64 KB
    assert len(bomb) < 100_000
    settings = ToolSettings(http_max_bytes=1 << 20)
    tracemalloc.start()
    try:
        with pytest.raises(ResponseTooLarge, match="exceeds 1048576 bytes"):
            run_fetch("http://a.example/", serve(bomb, ("Content-Encoding", "gzip")), settings)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, f"peak {peak / 2**20:.1f} MiB while decoding a bomb capped at 1 MiB"


@pytest.mark.parametrize("headers", [
    [("Content-Encoding", "gzip, gzip")], [("Content-Encoding", "gzip"), ("Content-Encoding", "gzip")],
    [("Content-Encoding", "deflate, gzip")],
])
def test_stacked_content_codings_are_refused(headers: list[tuple[str, str]]) -> None:
    body = gzipped(gzipped(b"hello"))
    with pytest.raises(httpx.DecodingError, match="more than one content-coding"):
        run_fetch("http://a.example/", serve(body, *headers))


@pytest.mark.parametrize("coding", ["br", "zstd", "compress", "x-custom"])
def test_unknown_content_codings_are_refused(coding: str) -> None:
    with pytest.raises(httpx.DecodingError, match=f"content-coding {coding!r} is not supported"):
        run_fetch("http://a.example/", serve(b"\x00\x01binary", ("Content-Encoding", coding)))


@pytest.mark.parametrize(("coding", "encode"), [
    ("gzip", gzipped), ("x-gzip", gzipped), ("GZip", gzipped), ("deflate", zlib.compress),
    ("deflate", lambda d: zlib.compress(d)[2:-4]),  # raw deflate, as some servers send it
    ("identity", lambda d: d), ("identity, gzip", gzipped),
])
def test_the_supported_codings_decode(coding: str, encode: Callable[[bytes], bytes]) -> None:
    text = "<p>h\u00e9llo</p>" * 1000
    out = run_fetch("http://a.example/", serve(encode(text.encode()), ("Content-Encoding", coding),
                                               ("Content-Type", "text/html; charset=utf-8")))
    assert out.text == text and out.bytes == len(text.encode())


def test_only_the_supported_codings_are_asked_for() -> None:
    backend = Canned(serve(b"ok"))
    asyncio.run(fetch("http://a.example/", ToolSettings(), backend=guarded(backend, ToolSettings())))
    assert b"accept-encoding: gzip, deflate\r\n" in backend.requests[0].lower()


def test_raw_bytes_count_too() -> None:
    # A gzip member, then bytes that decode to nothing, with no Content-Length: the raw stream passes
    # the cap while the decoded body stays tiny.
    body = gzipped(b"x") + bytes(1_200_000)
    route: Route = lambda address, port, request: response(  # noqa: E731
        200, body, [("Content-Encoding", "gzip")], length=False)
    with pytest.raises(ResponseTooLarge):
        run_fetch("http://a.example/", route, ToolSettings(http_max_bytes=1 << 20))


# -- http_fetch: addresses that embed an IPv4 address ---------------------------------------------------


def teredo(client: str, server: str = "65.54.227.120") -> str:
    import ipaddress

    s, c = int(ipaddress.IPv4Address(server)), int(ipaddress.IPv4Address(client)) ^ 0xFFFFFFFF
    return str(ipaddress.IPv6Address((0x20010000 << 96) | (s << 64) | (0x8000_63BF << 32) | c))


@pytest.mark.parametrize(("address", "reason"), [
    ("2002:a00:1::", "private"), ("2002:7f00:1::1", "loopback"), ("2002:a9fe:a9fe::", "cloud metadata"),
    (teredo("127.0.0.1"), "loopback"), (teredo("169.254.169.254"), "cloud metadata"),
    (teredo("8.8.8.8", server="10.1.2.3"), "private"),
    ("64:ff9b::a00:1", "private"), ("64:ff9b::7f00:1", "loopback"), ("64:ff9b::a9fe:a9fe", "cloud metadata"),
    ("64:ff9b:1::808:808", "local-use NAT64"), ("64:ff9b:1:a00:1::", "local-use NAT64"),
    ("::a00:1", "private"), ("::7f00:1", "loopback"), ("::a9fe:a9fe", "cloud metadata"),
    ("::ffff:7f00:1", "loopback"), ("::ffff:a00:1", "private"),
])
def test_addresses_that_embed_an_ipv4_address_are_judged_by_it(address: str, reason: str) -> None:
    assert refusal(address) == reason


@pytest.mark.parametrize("address", ["2002:808:808::1", teredo("8.8.8.8"), "64:ff9b::808:808"])
def test_embedded_public_addresses_pass(address: str) -> None:
    assert refusal(address) is None


@pytest.mark.parametrize("address", ["2002:a00:1::", "64:ff9b::a9fe:a9fe", "::7f00:1"])
def test_fetch_refuses_an_embedded_private_address_before_connecting(address: str) -> None:
    backend = guarded(NeverConnect(), ToolSettings(), {"sneaky.example": address})
    with pytest.raises(AddressRefused):
        asyncio.run(fetch(f"http://[{address}]/", ToolSettings(), backend=backend))
    with pytest.raises(AddressRefused):
        asyncio.run(fetch("http://sneaky.example/", ToolSettings(), backend=backend))


def test_a_refusal_does_not_name_the_address_a_host_resolved_to(caplog: pytest.LogCaptureFixture) -> None:
    backend = guarded(NeverConnect(), ToolSettings(), {"internal.example": "10.0.0.5"})
    with caplog.at_level(logging.WARNING, logger="runtime.tools.fetch"):
        with pytest.raises(AddressRefused) as caught:
            asyncio.run(fetch("http://internal.example/", ToolSettings(), backend=backend))
    error = caught.value
    assert str(error) == ("refused to connect to internal.example: it resolves to a private address; "
                          "allow it with RAYSQUAD_TOOLS__HTTP_ALLOW_NETWORKS")
    assert "10.0.0.5" not in repr(pickle.loads(pickle.dumps(error)).args)
    assert "10.0.0.5" in caplog.text  # the operator still sees it


def test_a_literal_address_is_named_as_given() -> None:
    backend = guarded(NeverConnect(), ToolSettings())
    with pytest.raises(AddressRefused, match=r"^refused to connect to 127\.0\.0\.1: loopback address;"):
        asyncio.run(fetch("http://127.0.0.1/", ToolSettings(), backend=backend))


# -- http_fetch: ports ---------------------------------------------------------------------------------


def test_ports_other_than_80_and_443_are_refused_by_default() -> None:
    backend = guarded(NeverConnect(), ToolSettings())
    with pytest.raises(AddressRefused, match="port 8080 is not allowed.*RAYSQUAD_TOOLS__HTTP_ALLOW_PORTS"):
        asyncio.run(fetch("http://example.com:8080/", ToolSettings(), backend=backend))


@pytest.mark.parametrize(("url", "ports"), [
    ("http://example.com/", (80, 443)), ("http://example.com:8080/", ("8000-8100",)),
    ("http://example.com:8080/", (8080,)), ("http://example.com:8080/", ("8080",)),
    ("http://example.com:65535/", ("1-65535",)),
])
def test_allowed_ports_are_reached(url: str, ports: tuple[int | str, ...]) -> None:
    settings = ToolSettings(http_allow_ports=ports)
    assert run_fetch(url, serve(b"ok"), settings).text == "ok"


@pytest.mark.parametrize("spec", ["0", 0, 65536, "90-80", "http", "", "1-", "-5", "1-70000"])
def test_a_bad_port_spec_fails_at_configuration(spec: Any) -> None:
    with pytest.raises(ValidationError, match="http_allow_ports: .* is neither a port"):
        ToolSettings(http_allow_ports=(spec,))


def test_allowed_ports_read_from_json() -> None:
    settings = ToolSettings.model_validate_json('{"http_allow_ports": [80, "8000-8100"]}')
    assert settings.port_ranges() == (range(80, 81), range(8000, 8101))


# -- http_fetch: the gate key ----------------------------------------------------------------------------


def gate_key(url: str) -> str:
    return http_fetch.gate_key(http_fetch.validate({"url": url}))


@pytest.mark.parametrize(("urls", "key"), [
    (["http://Example.COM./a", "http://example.com/b", "https://EXAMPLE.com:8443/"], "http:example.com"),
    (["http://[::1]/", "http://[0:0::1]:8080/", "http://[0000::0001]/"], "http:::1"),
    (["http://b\u00fccher.de/", "http://B\u00dcCHER.de./", "http://xn--bcher-kva.de/"],
     "http:xn--bcher-kva.de"),
    (["http://127.0.0.1/", "http://2130706433/", "http://127.1/", "http://0x7f.0.0.1/"], "http:127.0.0.1"),
    (["http://[::ffff:127.0.0.1]/", "http://[::FFFF:7f00:1]/"], "http:::ffff:7f00:1"),
])
def test_the_gate_key_is_the_normalised_host(urls: list[str], key: str) -> None:
    assert {gate_key(u) for u in urls} == {key}


# -- http_fetch: redirects --------------------------------------------------------------------------------


def redirects(table: dict[str, bytes]) -> Route:
    """Answers by (address, path)."""

    def route(address: str, port: int, request: bytes) -> bytes:
        path = request.split(b" ", 2)[1].decode()
        return table[f"{address}{path}"]

    return route


def moved(location: str, status: int = 302) -> bytes:
    return response(status, b"moved", [("Location", location)])


def test_a_redirect_on_the_same_host_is_followed() -> None:
    a = PUBLIC["a.example"]
    out = run_fetch("http://a.example/one", redirects({
        f"{a}/one": moved("/two"), f"{a}/two": moved("http://A.EXAMPLE./three", 301),
        f"{a}/three": response(200, b"done")}))
    assert (out.status, out.text, out.url, out.location) == (200, "done", "http://a.example./three", None)


def test_a_redirect_to_another_host_is_not_followed_without_a_gate() -> None:
    a = PUBLIC["a.example"]
    events: list[str] = []
    backend = guarded(Canned(redirects({f"{a}/": moved("http://b.example/x")}), events), ToolSettings())
    out = asyncio.run(fetch("http://a.example/", ToolSettings(), backend=backend))
    assert (out.status, out.location) == (302, "http://b.example/x")
    assert events == [f"connect {a}:80"]  # b.example was never reached


def test_a_redirect_to_another_host_passes_that_hosts_gate_first() -> None:
    a, b = PUBLIC["a.example"], PUBLIC["b.example"]
    events: list[str] = []

    @asynccontextmanager
    async def gate(key: str) -> AsyncIterator[None]:
        events.append(f"enter {key}")
        yield
        events.append(f"leave {key}")

    route = redirects({f"{a}/": moved("http://b.example/x"), f"{b}/x": moved("http://b.example/y"),
                       f"{b}/y": moved("http://a.example/z"), f"{a}/z": response(200, b"back")})
    backend = guarded(Canned(route, events), ToolSettings())
    out = asyncio.run(fetch("http://a.example/", ToolSettings(), backend=backend, gate=gate))
    assert out.text == "back"
    # a.example's gate is the caller's (held for the whole call); b.example's is held while there.
    assert events == [f"connect {a}:80", "enter http:b.example", f"connect {b}:80", f"connect {b}:80",
                      "leave http:b.example", f"connect {a}:80"]


def test_a_redirect_to_an_internal_address_is_refused() -> None:
    a = PUBLIC["a.example"]
    route = redirects({f"{a}/": moved("http://internal.example/")})
    backend = GuardedBackend.from_settings(ToolSettings(), inner=Canned(route), resolve=resolve_from(
        {**PUBLIC, "internal.example": "169.254.169.254"}))

    @asynccontextmanager
    async def gate(key: str) -> AsyncIterator[None]:
        yield

    with pytest.raises(AddressRefused, match="internal.example: it resolves to a cloud metadata") as e:
        asyncio.run(fetch("http://a.example/", ToolSettings(), backend=backend, gate=gate))
    assert "169.254" not in str(e.value)


def test_a_redirect_to_a_port_not_allowed_is_refused() -> None:
    a = PUBLIC["a.example"]
    with pytest.raises(AddressRefused, match="port 6379 is not allowed"):
        run_fetch("http://a.example/", redirects({f"{a}/": moved("http://a.example:6379/")}))


def test_redirects_are_counted() -> None:
    a = PUBLIC["a.example"]
    with pytest.raises(httpx.TooManyRedirects):
        run_fetch("http://a.example/0", redirects({f"{a}/{i}": moved(f"/{i + 1}") for i in range(5)}),
                  ToolSettings(http_max_redirects=3))


# -- sql_query: SQLite ---------------------------------------------------------------------------------


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Path:
    path = tmp_path / "facts.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE facts (id INTEGER PRIMARY KEY, name TEXT, at TEXT)")
        conn.executemany("INSERT INTO facts (name, at) VALUES (?, '2026-01-02')",
                         [(f"n{i}" * 100,) for i in range(200)])
    return path


def sqlite_settings(path: Path, **kwargs: Any) -> ToolSettings:
    return ToolSettings(sql_url=str(path), **kwargs)


@pytest.mark.parametrize("sql", [
    "SELECT 1; DELETE FROM facts", "SELECT 1; SELECT 2", "SELECT 1;;",
    "SELECT 1; ATTACH DATABASE ':memory:' AS m",
])
def test_sqlite_runs_exactly_one_statement(sqlite_db: Path, sql: str) -> None:
    with pytest.raises(QueryRefused, match="exactly one SQL statement"):
        query(sql, sqlite_settings(sqlite_db))
    with sqlite3.connect(sqlite_db) as conn:
        assert conn.execute("SELECT count(*) FROM facts").fetchone() == (200,)


@pytest.mark.parametrize("sql", ["SELECT count(*) FROM facts;", "SELECT count(*) FROM facts; -- done\n",
                                 "SELECT count(*) FROM facts /* all */ ;  "])
def test_sqlite_a_trailing_semicolon_or_comment_is_fine(sqlite_db: Path, sql: str) -> None:
    assert query(sql, sqlite_settings(sqlite_db)).rows == [[200]]


@pytest.mark.parametrize("expr", [
    "count(*)", "sum(id)", "avg(id)", "min(id)", "max(id)", "total(id)", "abs(-id)", "lower(name)",
    "upper(name)", "length(name)", "substr(name, 1, 2)", "coalesce(NULL, id)", "ifnull(NULL, 1)",
    "round(id / 3.0, 1)", "date(at)", "datetime(at)", "strftime('%Y', at)", "julianday(at)",
    "json_extract('{\"a\": 1}', '$.a')", "'{\"a\": 2}' ->> '$.a'", "typeof(id)", "instr(name, '1')",
    "replace(name, 'n', 'm')", "trim(name)", "group_concat(id)", "printf('%d', id)", "format('%d', id)",
    "nullif(id, 1)", "CAST(id AS TEXT)", "name LIKE 'n1%'", "name GLOB 'n*'", "iif(id > 1, 1, 0)",
    "row_number() OVER (ORDER BY id)", "hex(id)", "quote(name)", "CURRENT_TIMESTAMP",
])
def test_sqlite_ordinary_functions_are_allowed(sqlite_db: Path, expr: str) -> None:
    out = query(f"SELECT {expr} FROM facts WHERE id <= 2", sqlite_settings(sqlite_db))
    assert out.rows


@pytest.mark.parametrize(("sql", "function"), [
    ("SELECT randomblob(900000000)", "randomblob"), ("SELECT zeroblob(900000000)", "zeroblob"),
    ("SELECT load_extension('/tmp/x.so')", "load_extension"), ("SELECT sqlite_version()", "sqlite_version"),
    ("SELECT length(randomblob(900000000))", "randomblob"),
    ("SELECT changes()", "changes"), ("SELECT last_insert_rowid()", "last_insert_rowid"),
])
def test_sqlite_other_functions_are_refused(sqlite_db: Path, sql: str, function: str) -> None:
    start = time.monotonic()
    with pytest.raises(QueryRefused, match=f"function {function}\\(\\) is not allowed"):
        query(sql, sqlite_settings(sqlite_db))
    assert time.monotonic() - start < 1.0


def test_sqlite_a_runaway_recursive_query_stops_at_the_time_limit(sqlite_db: Path) -> None:
    sql = "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT count(*) FROM r"
    start = time.monotonic()
    with pytest.raises(QueryRefused, match="ran over 0.5s"):
        query(sql, sqlite_settings(sqlite_db, sql_timeout_s=0.5))
    assert time.monotonic() - start < 2.5


#: Each row costs a count to 1,000 (a FETCH of 64 rows takes about 0.2 s): one FETCH is under the
#: time limit, all of them are not.
SLOW_ROWS = ("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) "
             "SELECT i, (WITH RECURSIVE m(j) AS (SELECT 1 UNION ALL SELECT j + 1 FROM m "
             "WHERE j < 1000 + i) SELECT count(*) FROM m) FROM n")


def test_sqlite_one_deadline_for_the_whole_query_not_each_fetch(sqlite_db: Path) -> None:
    start = time.monotonic()
    with pytest.raises(QueryRefused, match=r"query ran over 0.5s"):
        query(SLOW_ROWS, sqlite_settings(sqlite_db, sql_timeout_s=0.5, sql_max_rows=100_000))
    assert time.monotonic() - start < 1.5


def test_sqlite_a_query_stops_once_its_call_is_over(sqlite_db: Path) -> None:
    over = threading.Event()
    threading.Timer(0.3, over.set).start()
    start = time.monotonic()
    with pytest.raises(QueryRefused):
        query(SLOW_ROWS, sqlite_settings(sqlite_db, sql_timeout_s=30, sql_max_rows=100_000), over=over)
    assert time.monotonic() - start < 1.5


@pytest.mark.parametrize("sql", [
    "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r LIMIT 300000) "
    "SELECT group_concat(n) FROM r",
    "SELECT replace(replace(replace(printf('%.*c', 90000, 'x'), 'x', 'xxxxxxxxxx'), 'x', 'xxxxxxxxxx'),"
    " 'x', 'xxxxxxxxxx')",
])
def test_sqlite_a_value_larger_than_the_byte_cap_is_refused(sqlite_db: Path, sql: str) -> None:
    with pytest.raises(QueryRefused, match="a value is larger than 100000 bytes"):
        query(sql, sqlite_settings(sqlite_db, sql_max_bytes=100_000))


def test_sqlite_printf_cannot_build_a_value_past_the_byte_cap(sqlite_db: Path) -> None:
    out = query("SELECT printf('%.*c', 100000000, 'x')", sqlite_settings(sqlite_db, sql_max_bytes=100_000))
    assert out.rows == [[None]]  # SQLite's printf answers NULL where its result would be too big


def test_sqlite_results_are_cut_at_the_byte_cap(sqlite_db: Path) -> None:
    out = query("SELECT id, name FROM facts ORDER BY id", sqlite_settings(sqlite_db, sql_max_bytes=10_000))
    assert out.truncated and 0 < len(out.rows) < 200
    assert sum(8 + len(name) for _, name in out.rows) <= 10_000
    out = query("SELECT id, name FROM facts ORDER BY id", sqlite_settings(sqlite_db, sql_max_bytes=400))
    assert out.truncated and out.rows == [[1, "n0" * 100]] and out.columns == ["id", "name"]


def test_sqlite_a_stored_value_past_the_byte_cap_refuses_the_query(sqlite_db: Path) -> None:
    with pytest.raises(QueryRefused, match="a value is larger than 100 bytes"):
        query("SELECT name FROM facts", sqlite_settings(sqlite_db, sql_max_bytes=100))


def test_sqlite_results_under_both_caps_are_whole(sqlite_db: Path) -> None:
    out = query("SELECT id FROM facts ORDER BY id", sqlite_settings(sqlite_db, sql_max_rows=200))
    assert not out.truncated and len(out.rows) == 200


# -- sql_query: PostgreSQL -----------------------------------------------------------------------------

PG = "postgresql://postgres@127.0.0.1:5432/test"


@pytest.fixture
def pg_table() -> Iterator[str]:
    table = f"guards_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (id int, name text)")
        conn.execute(f"INSERT INTO {table} SELECT g, repeat('n', 100) FROM generate_series(1, 200) g")
    yield table
    with psycopg.connect(PG, autocommit=True) as conn:
        conn.execute(f"DROP TABLE {table}")


def pg_count(table: str) -> int:
    with psycopg.connect(PG) as conn:
        row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
        assert row is not None
        return int(row[0])


@pytest.mark.parametrize("template", [
    "COMMIT; DELETE FROM {t}; SELECT 1", "SELECT 1; DELETE FROM {t}", "ROLLBACK; DELETE FROM {t}",
    "SELECT count(*) FROM {t}; SELECT 2",
])
def test_postgres_runs_exactly_one_statement(pg_table: str, template: str) -> None:
    with pytest.raises(QueryRefused, match="exactly one SQL statement"):
        query(template.format(t=pg_table), ToolSettings(sql_url=PG))
    assert pg_count(pg_table) == 200


def test_postgres_a_second_statement_cannot_escape_the_timeout() -> None:
    start = time.monotonic()
    with pytest.raises(QueryRefused, match="exactly one SQL statement"):
        query("COMMIT; SELECT pg_sleep(3)", ToolSettings(sql_url=PG, sql_timeout_s=1.0))
    assert time.monotonic() - start < 2.5


@pytest.mark.parametrize("sql", ["SELECT pg_sleep(3)",
                                 "SELECT set_config('statement_timeout', '0', false), pg_sleep(3)"])
def test_postgres_the_server_enforces_the_timeout(sql: str) -> None:
    start = time.monotonic()
    with pytest.raises(QueryRefused, match="ran over 0.5s"):
        query(sql, ToolSettings(sql_url=PG, sql_timeout_s=0.5))
    assert time.monotonic() - start < 2.5


#: The audit's M8 query: row 1 turns statement_timeout off for the session, rows 2-64 fill the first
#: FETCH, and row 65 (in the second FETCH) would count to 1e12.
TIMEOUT_OFF = ("SELECT CASE WHEN g=1 THEN set_config('statement_timeout','0',false) WHEN g<=64 THEN 'x' "
               "ELSE (SELECT count(*)::text FROM generate_series(1,1e12)) END FROM generate_series(1,100) g")


def pg_named() -> str:
    """PG with an application_name of its own, to find the query's server process by."""
    return f"{PG}?application_name=probe_{uuid.uuid4().hex[:10]}"


def pg_running(url: str) -> list[str]:
    """What the server processes of ``url``'s application_name are running (a cursor's FETCH
    shows as ``FETCH FORWARD ...``, not as the query)."""
    name = url.rpartition("application_name=")[2]
    with psycopg.connect(PG) as conn:
        rows = conn.execute("SELECT query FROM pg_stat_activity WHERE state = 'active' "
                            "AND application_name = %s", [name]).fetchall()
    return [r[0] for r in rows]


def test_postgres_one_deadline_for_the_whole_query_whatever_it_sets() -> None:
    url = pg_named()
    threads = threading.active_count()
    start = time.monotonic()
    with pytest.raises(QueryRefused, match=r"query ran over 1.0s"):
        query(TIMEOUT_OFF, ToolSettings(sql_url=url, sql_timeout_s=1.0))
    assert time.monotonic() - start < 3.0
    # The server stopped it (cancelled, not only left behind), and this process holds nothing for it.
    wait_for(lambda: not pg_running(url), 5, what="the server to end the cancelled query")
    assert threading.active_count() == threads
    assert query("SELECT 1", ToolSettings(sql_url=url)).rows == [[1]]


def test_postgres_a_query_stops_once_its_call_is_over() -> None:
    url, over = pg_named(), threading.Event()
    threading.Timer(0.5, over.set).start()
    start = time.monotonic()
    with pytest.raises(QueryRefused):
        query("SELECT pg_sleep(20)", ToolSettings(sql_url=url, sql_timeout_s=30), over=over)
    assert time.monotonic() - start < 2.5
    wait_for(lambda: not pg_running(url), 5, what="the server to end the query")


def test_postgres_a_cancel_that_goes_unanswered_cuts_the_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    # As if the server never acted on the cancel request: the watchdog then shuts the socket, and
    # the server, checking its client every second, ends the query it was left with.
    monkeypatch.setattr(psycopg.Connection, "cancel_safe", lambda self, timeout=0: None)
    url = pg_named()
    start = time.monotonic()
    with pytest.raises(QueryRefused, match=r"query ran over 0.5s"):
        query(TIMEOUT_OFF, ToolSettings(sql_url=url, sql_timeout_s=0.5))
    assert 0.5 + sql_module._CANCEL_S <= time.monotonic() - start < 0.5 + sql_module._CANCEL_S + 1.5
    wait_for(lambda: not pg_running(url), 5, what="the server to notice its client gone")


@pytest.mark.parametrize("suffix", [";", "; -- done\n", " /* all */ ;  "])
def test_postgres_a_trailing_semicolon_or_comment_is_fine(pg_table: str, suffix: str) -> None:
    out = query(f"SELECT count(*) FROM {pg_table}{suffix}", ToolSettings(sql_url=PG))
    assert out.rows == [[200]]


def test_postgres_results_are_cut_at_the_byte_cap(pg_table: str) -> None:
    settings = ToolSettings(sql_url=PG, sql_max_bytes=1_000)
    out = query(f"SELECT id, name FROM {pg_table} ORDER BY id", settings)
    assert out.truncated and 0 < len(out.rows) < 10
    out = query(f"SELECT id, name FROM {pg_table} WHERE id > %s ORDER BY id", settings, [500])
    assert out.columns == ["id", "name"] and out.rows == [] and not out.truncated


def test_postgres_percent_signs_need_no_escaping_without_params(pg_table: str) -> None:
    out = query(f"SELECT count(*) FROM {pg_table} WHERE name LIKE 'n%'", ToolSettings(sql_url=PG))
    assert out.rows == [[200]]


def test_sql_max_bytes_is_validated() -> None:
    with pytest.raises(ValidationError, match="sql_max_bytes\n  Input should be greater than or equal to 1"):
        ToolSettings(sql_max_bytes=0)


def test_postgres_a_refused_connection_names_no_conninfo(caplog: pytest.LogCaptureFixture) -> None:
    url = "postgresql://rsq_reader:s3cret@127.0.0.1:1/rsq_reports"
    with pytest.raises(QueryRefused) as info:
        query("SELECT 1", ToolSettings(sql_url=url))
    assert str(info.value) == "query refused: cannot connect to the database (OperationalError)"
    assert "127.0.0.1" in caplog.text and "s3cret" not in caplog.text  # the operator's log says where
