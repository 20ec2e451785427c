"""Tools on their own: the registry, http_fetch's address guard, extract_text, sql_query.

No test here lets a packet leave for a non-loopback address, even if the guard were broken: the
guard's inner backend is one that fails the test when it is asked to connect, and names resolve
through a fake resolver.
"""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpcore
import psycopg
import pytest
from pydantic import BaseModel

from runtime.core.config import ToolSettings
from runtime.core.errors import AddressRefused, QueryRefused, ToolArgsInvalid
from runtime.tools import Batch, ToolContext, builtin_tools, tool
from runtime.tools.extract import html_to_text
from runtime.tools.fetch import GuardedBackend, allowed_networks, fetch, refusal
from runtime.tools.sql import query

# -- the registry ----------------------------------------------------------------------------------


@tool
async def search(query: str, limit: int = 5, ctx: ToolContext | None = None) -> list[str]:
    """Search the web.

    Longer text."""
    return [query] * limit


class Item(BaseModel):
    key: str


@tool(batch=Batch(max_size=8, max_wait_s=0.1))
def embed(items: list[Item]) -> list[int]:
    """Embed many."""
    return [len(i.key) for i in items]


def test_arguments_come_from_the_signature_and_the_docstring_describes() -> None:
    schema = search.schema()
    assert schema["name"] == "search"
    assert schema["description"].startswith("Search the web.")
    assert schema["parameters"]["required"] == ["query"]
    assert set(schema["parameters"]["properties"]) == {"query", "limit"}  # ctx is not an argument
    args = search.validate({"query": "ray", "limit": "3"})
    assert (args.query, args.limit) == ("ray", 3)


def test_bad_arguments_name_the_field() -> None:
    with pytest.raises(ToolArgsInvalid, match=r"limit: Input should be a valid integer"):
        search.validate({"query": "x", "limit": "many"})
    with pytest.raises(ToolArgsInvalid, match="surprise: Extra inputs are not permitted"):
        search.validate({"query": "x", "surprise": 1})


def test_a_batching_tool_takes_its_items_model() -> None:
    assert embed.args_model is Item
    assert embed.batch == Batch(8, 0.1)
    ctx = ToolContext(ToolSettings(), "embed")
    assert asyncio.run(embed.call_batch([Item(key="ab"), Item(key="c")], ctx)) == [2, 1]


def test_a_batching_tool_must_take_a_list_of_models() -> None:
    with pytest.raises(TypeError, match="list\\[SomePydanticModel\\]"):
        tool(batch=Batch(2, 0.1))(lambda xs: xs)


def test_the_built_ins_are_registered() -> None:
    assert set(builtin_tools()) == {"http_fetch", "extract_text", "sql_query"}
    assert "ctx" not in builtin_tools()["http_fetch"].args_model.model_fields


# -- http_fetch's guard ----------------------------------------------------------------------------


class NeverConnect(httpcore.AsyncNetworkBackend):
    """An inner backend that fails the test if the guard ever lets a connection through."""

    async def connect_tcp(self, host: str, port: int, *args: Any, **kwargs: Any) -> Any:
        pytest.fail(f"the guard let a connection to {host}:{port} through")

    async def connect_unix_socket(self, path: str, *args: Any, **kwargs: Any) -> Any:
        pytest.fail(f"the guard let a connection to {path} through")

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


def resolver(*addresses: str) -> Any:
    async def resolve(host: str, port: int) -> list[str]:
        return list(addresses)

    return resolve


@pytest.mark.parametrize(("address", "reason"), [
    ("127.0.0.1", "loopback"), ("127.8.9.10", "loopback"), ("::1", "loopback"),
    ("10.0.0.1", "private"), ("10.255.255.255", "private"), ("172.16.5.4", "private"),
    ("192.168.1.1", "private"), ("fd12:3456::1", "private"),
    ("169.254.169.254", "cloud metadata"), ("fd00:ec2::254", "cloud metadata"),
    ("169.254.10.20", "link-local"), ("fe80::1", "link-local"),
    ("100.64.0.1", "non-global"), ("0.0.0.0", "private"), ("224.0.0.1", "multicast"),
    ("::ffff:10.0.0.1", "private"), ("::ffff:169.254.169.254", "cloud metadata"),
    ("240.0.0.1", "private"), ("192.0.2.10", "private"),
])
def test_non_public_addresses_are_refused(address: str, reason: str) -> None:
    assert refusal(address) == reason


@pytest.mark.parametrize("address", ["93.184.215.14", "8.8.8.8", "2606:4700::1111"])
def test_public_addresses_pass(address: str) -> None:
    assert refusal(address) is None


def test_allowed_networks_let_only_themselves_through() -> None:
    allow = allowed_networks(["127.0.0.1/32"])
    assert refusal("127.0.0.1", allow) is None
    assert refusal("127.0.0.2", allow) == "loopback"
    assert refusal("10.0.0.1", allow) == "private"


@pytest.mark.parametrize("url", [
    "http://10.0.0.1/", "http://169.254.169.254/latest/meta-data/", "http://[::1]:8080/",
    "https://192.168.0.10/admin", "http://[fd00:ec2::254]/", "http://0.0.0.0:9/",
])
def test_fetch_refuses_before_connecting(url: str) -> None:
    backend = GuardedBackend((), inner=NeverConnect(), resolve=resolver())
    with pytest.raises(AddressRefused, match="refused to connect"):
        asyncio.run(fetch(url, ToolSettings(), backend=backend))


def test_a_name_that_resolves_to_a_private_address_is_refused() -> None:
    # One public and one metadata answer: any refused address refuses the host.
    backend = GuardedBackend((), inner=NeverConnect(), resolve=resolver("93.184.215.14", "169.254.169.254"))
    with pytest.raises(AddressRefused, match=r"internal\.example: it resolves to a cloud metadata address"):
        asyncio.run(fetch("http://internal.example/", ToolSettings(), backend=backend))


def test_other_schemes_are_refused() -> None:
    with pytest.raises(ValueError, match="not 'file'"):
        asyncio.run(fetch("file:///etc/passwd", ToolSettings(),
                          backend=GuardedBackend((), inner=NeverConnect())))


# -- extract_text ------------------------------------------------------------------------------------


def test_extract_text_keeps_the_words_and_drops_the_code() -> None:
    html = """<!doctype html><html><head><title> The  Title </title><style>p{color:red}</style>
    <script>var secret = 1;</script></head><body><h1>Heading</h1><p>First <b>bold</b> para.</p>
    <ul><li>one</li><li>two</li></ul><noscript>enable js</noscript>
    <p>Link to <a href="/next">next page</a></p><div>unclosed<p>broken</body>"""
    out = html_to_text(html)
    assert out.title == "The Title"
    assert out.text.splitlines()[0] == "Heading"
    assert "First bold para." in out.text and "one\n" in out.text
    assert "secret" not in out.text and "color" not in out.text and "enable js" not in out.text
    assert out.links == ["/next"]
    assert html_to_text("").text == ""


# -- sql_query ----------------------------------------------------------------------------------------


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Path:
    path = tmp_path / "facts.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE facts (id INTEGER PRIMARY KEY, name TEXT)")
        conn.executemany("INSERT INTO facts (name) VALUES (?)", [(f"n{i}",) for i in range(5)])
    return path


def test_sqlite_reads_with_params_and_caps_rows(sqlite_db: Path) -> None:
    settings = ToolSettings(sql_url=str(sqlite_db), sql_max_rows=3)
    out = query("SELECT id, name FROM facts WHERE id > ? ORDER BY id", settings, [1])
    assert out.columns == ["id", "name"]
    assert out.rows == [[2, "n1"], [3, "n2"], [4, "n3"]] and out.truncated


@pytest.mark.parametrize("sql", [
    "INSERT INTO facts (name) VALUES ('x')", "DELETE FROM facts", "DROP TABLE facts",
    "ATTACH DATABASE 'other.db' AS o", "PRAGMA journal_mode=DELETE",
])
def test_sqlite_refuses_writes(sqlite_db: Path, sql: str) -> None:
    with pytest.raises(QueryRefused):
        query(sql, ToolSettings(sql_url=str(sqlite_db)))
    with sqlite3.connect(sqlite_db) as conn:
        assert conn.execute("SELECT count(*) FROM facts").fetchone() == (5,)


def test_no_database_configured_is_a_clear_error() -> None:
    with pytest.raises(QueryRefused, match="RAYSQUAD_TOOLS__SQL_URL"):
        query("SELECT 1", ToolSettings())


PG = "postgresql://postgres@127.0.0.1:5432/test"


@pytest.fixture
def pg_table() -> Iterator[str]:
    table = f"facts_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (id int, name text)")
        conn.execute(f"INSERT INTO {table} SELECT g, 'n' || g FROM generate_series(1, 4) g")
    yield table
    with psycopg.connect(PG, autocommit=True) as conn:
        conn.execute(f"DROP TABLE {table}")


def test_postgres_reads_and_refuses_writes(pg_table: str) -> None:
    settings = ToolSettings(sql_url=PG)
    out = query(f"SELECT id, name FROM {pg_table} WHERE id <= %s ORDER BY id", settings, [2])
    assert out.columns == ["id", "name"] and out.rows == [[1, "n1"], [2, "n2"]]
    with pytest.raises(QueryRefused, match="only reads"):
        query(f"DELETE FROM {pg_table}", settings)
    with psycopg.connect(PG) as conn:
        assert conn.execute(f"SELECT count(*) FROM {pg_table}").fetchone() == (4,)
