"""The tool executor's logic in one process: batching windows, per-item retries, dead letters, replay.

The Store here is an in-memory stand-in with the Store actor's call shape (``method.remote(...)``
returning an awaitable); the Ray path itself is covered by tests/integration/test_flow_control.py.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pydantic import BaseModel

from runtime.core.config import RetryPolicy, Settings
from runtime.core.errors import ToolFailed
from runtime.core.models import DeadLetter
from runtime.flow.gates import GateClient
from runtime.tools import Batch, Registry, tool
from runtime.tools.executor import Caller, ToolExecutor


class _Call:
    def __init__(self, fn: Any) -> None:
        self.fn = fn

    def remote(self, *args: Any) -> Any:
        async def run() -> Any:
            return self.fn(*args)

        return run()


class MemoryStore:
    """The part of the Store's protocol an executor calls (dead letters), in memory."""

    def __init__(self) -> None:
        self.letters: dict[str, DeadLetter] = {}

    async def add_dead_letter(self, letter: DeadLetter) -> None:
        self.letters[letter.id] = letter

    async def get_dead_letter(self, letter_id: str) -> DeadLetter:
        return self.letters[letter_id]

    async def replayed(self, letter_id: str, ok: bool, result: Any, error: str, attempts: int,
                       step_output: bytes | None = None) -> DeadLetter:
        update = {"status": "replayed", "result": result} if ok else {"error": error}
        self.letters[letter_id] = self.letters[letter_id].model_copy(update=update)
        return self.letters[letter_id]


class Key(BaseModel):
    key: str


calls: list[list[str]] = []
failing: set[str] = set()
down = {"batch": 0}


@tool(batch=Batch(max_size=3, max_wait_s=0.05),
      retry=RetryPolicy(max_attempts=3, initial_backoff_s=0.01, jitter=0))
async def upper(items: list[Key]) -> list[Any]:
    """Upper-case keys; a key in ``failing`` fails alone, ``down`` fails whole batches."""
    calls.append([i.key for i in items])
    if down["batch"] > 0:
        down["batch"] -= 1
        raise ConnectionError("upstream down")
    return [ValueError(f"bad {i.key}") if i.key in failing else i.key.upper() for i in items]


@pytest.fixture
def executor() -> tuple[ToolExecutor, MemoryStore]:
    calls.clear()
    failing.clear()
    down["batch"] = 0
    store = MemoryStore()
    return ToolExecutor(Settings(), Registry({"upper": upper}), store, GateClient(None)), store


def run_all(executor: ToolExecutor, keys: list[str]) -> list[Any]:
    async def go() -> list[Any]:
        return await asyncio.gather(*(executor.call("upper", {"key": k}, Caller(task_id="t"))
                                      for k in keys), return_exceptions=True)

    return asyncio.run(go())


def test_calls_fold_into_batches_and_each_caller_gets_its_own_result(
        executor: tuple[ToolExecutor, MemoryStore]) -> None:
    ex, _ = executor
    assert run_all(ex, ["a", "b", "c", "d", "e", "f", "g"]) == list("ABCDEFG")
    assert [len(c) for c in calls] == [3, 3, 1]


def test_a_failed_batch_retries_its_calls_in_a_later_batch(
        executor: tuple[ToolExecutor, MemoryStore]) -> None:
    ex, store = executor
    down["batch"] = 2
    assert run_all(ex, ["a", "b"]) == ["A", "B"]
    assert calls == [["a", "b"], ["a", "b"], ["a", "b"]]
    assert store.letters == {}


def test_an_item_that_keeps_failing_becomes_a_dead_letter_and_replays(
        executor: tuple[ToolExecutor, MemoryStore]) -> None:
    ex, store = executor
    failing.add("b")
    a, b = run_all(ex, ["a", "b"])
    assert a == "A"
    assert isinstance(b, ToolFailed) and b.attempts == 3 and b.error_type == "ValueError"
    (letter,) = store.letters.values()
    assert (letter.id, letter.args, letter.task_id) == (b.dead_letter, {"key": "b"}, "t")

    failing.clear()
    replayed = asyncio.run(ex.replay(letter.id))
    assert replayed.status == "replayed" and replayed.result == "B"
    assert calls[-1] == ["b"]  # a batch of one


# -- an attempt that times out stops its work, not only its await (audit M8) -------------------------

PG = "postgresql://postgres@127.0.0.1:5432/test"


def test_a_timed_out_sql_query_frees_its_thread_and_connection() -> None:
    import threading
    import time
    import uuid

    import psycopg

    from runtime.core.config import ToolSettings
    from runtime.tools.sql import sql_query
    from tests.conftest import wait_for

    name = f"probe_{uuid.uuid4().hex[:10]}"

    def running() -> int:
        with psycopg.connect(PG) as conn:
            row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
                               "AND application_name = %s", [name]).fetchone()
            assert row is not None
            return int(row[0])

    # The query's own limit (60 s) is far off: only the attempt's timeout (1 s) can stop it.
    tools = ToolSettings(sql_url=f"{PG}?application_name={name}", sql_timeout_s=60, timeout_s=1)
    ex = ToolExecutor(Settings(tools=tools), Registry({"sql_query": sql_query}), MemoryStore(),
                      GateClient(None))
    threads = threading.active_count()
    start = time.monotonic()
    with pytest.raises(ToolFailed, match="sql_query"):
        asyncio.run(ex.call("sql_query", {"sql": "SELECT pg_sleep(30)"},
                            Caller(task_id="t")))
    assert time.monotonic() - start < 3
    wait_for(lambda: running() == 0, 5, what="the server to stop the abandoned query")
    wait_for(lambda: threading.active_count() <= threads, 5, what="the query's thread to end")
    assert asyncio.run(ex.call("sql_query", {"sql": "SELECT 1 AS n"}, Caller(task_id="t"))).rows == [[1]]
