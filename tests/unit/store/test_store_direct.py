"""The PostgreSQL Store reached directly (store/direct.py, store/listen.py), on a real server: two
``DirectStore`` objects stand for two processes of one runtime, each with its own pool and its own
LISTEN connection. No Ray."""

from __future__ import annotations

import asyncio
import contextlib
import pickle
import socket
import time
import types
import uuid
from pathlib import Path
from typing import Any

import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from runtime.core.config import Settings
from runtime.core.errors import LeaseLost, QueueFull
from runtime.core.models import Lease, SubmitRequest, TaskStatus
from runtime.store import direct, listen
from runtime.store.direct import DirectStore
from runtime.store.listen import Listener
from runtime.store.postgres import PostgresStore
from tests.tcp_proxy import TcpProxy
from tests.unit.stores import PostgresBackend

WAIT_S = 30.0  # far longer than a NOTIFY takes: a wake that came by timeout would fail the test


def settings(backend: PostgresBackend, tmp_path: Path, **extra: Any) -> Settings:
    return Settings(store="postgres", postgres_url=backend.url, data_dir=tmp_path,
                    namespace=f"ns-{uuid.uuid4().hex[:8]}", **extra)


def test_a_submit_in_one_process_feeds_the_dispatcher_in_another(
        postgres_backend: PostgresBackend, tmp_path: Path) -> None:
    s = settings(postgres_backend, tmp_path)
    ingress, dispatcher = DirectStore(s), DirectStore(s)

    async def run() -> tuple[list[tuple[str, int, float, str]], float]:
        assert await dispatcher.take_submitted(0.01) == []  # listening from here on
        record, created = await ingress.submit(SubmitRequest(workflow="wf", priority=2, tenant="t b"))
        assert created
        started = time.monotonic()
        fed = await dispatcher.take_submitted(WAIT_S)
        return [(i, p, round(at, 3), t) for i, p, at, t in fed], time.monotonic() - started

    fed, waited = asyncio.run(run())
    (task,) = [t for t in postgres_backend.query("SELECT id, priority, created_at FROM tasks")]
    assert fed == [(task[0], 2, round(task[2], 3), "t b")]
    assert waited < WAIT_S / 2


def test_an_event_written_elsewhere_wakes_a_reader(postgres_backend: PostgresBackend,
                                                   tmp_path: Path) -> None:
    s = settings(postgres_backend, tmp_path)
    reader, worker = DirectStore(s), DirectStore(s)

    async def run() -> list[str]:
        record, _ = await worker.submit(SubmitRequest(workflow="wf"))
        seen = await reader.wait_events(record.id, after=0, timeout_s=0)
        assert [e.kind for e in seen] == ["submitted"]
        waiting = asyncio.create_task(reader.wait_events(record.id, after=seen[-1].seq,
                                                         timeout_s=WAIT_S))
        await asyncio.sleep(0)  # the reader registers before the write
        (claim,) = await worker.claim([record.id], "w1", 30.0)
        started = time.monotonic()
        events = await waiting
        assert time.monotonic() - started < WAIT_S / 2
        assert claim.task.status is TaskStatus.RUNNING
        return [e.kind for e in events]

    assert asyncio.run(run()) == ["started"]


def test_a_reader_times_out_without_an_event(postgres_backend: PostgresBackend,
                                             tmp_path: Path) -> None:
    store = DirectStore(settings(postgres_backend, tmp_path))

    async def run() -> list[object]:
        record, _ = await store.submit(SubmitRequest(workflow="wf"))
        return list(await store.wait_events(record.id, after=1, timeout_s=0.2))

    assert asyncio.run(run()) == []


def test_the_listener_comes_back_after_its_connection_is_killed(
        postgres_backend: PostgresBackend, tmp_path: Path) -> None:
    name = f"listen-{uuid.uuid4().hex[:8]}"
    s = settings(postgres_backend, tmp_path)
    reader = DirectStore(s.model_copy(update={
        "postgres_url": make_conninfo(postgres_backend.url, application_name=name)}))
    writer = DirectStore(s)

    async def run() -> list[str]:
        record, _ = await writer.submit(SubmitRequest(workflow="wf"))
        await reader.wait_events(record.id, timeout_s=0)  # listening
        postgres_backend.query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                               f"WHERE application_name = '{name}'")
        # Whatever the gap dropped, a reader is woken and reads again; later writes are heard.
        kinds: list[str] = []
        after = 1
        deadline = time.monotonic() + WAIT_S
        await writer.append_event(record.id, "progress", {"n": 1})
        while "again" not in kinds and time.monotonic() < deadline:
            events = await reader.wait_events(record.id, after=after, timeout_s=1.0)
            kinds += [e.kind for e in events]
            after = events[-1].seq if events else after
            if "progress" in kinds and "again" not in kinds:
                await writer.append_event(record.id, "again", {})
        return kinds

    assert asyncio.run(run()) == ["progress", "again"]


class FreezingProxy(TcpProxy):
    """A TcpProxy that can go silent on the connections it holds (a half-open connection: nothing
    is refused or reset, nothing comes back), while new connections are forwarded."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.silent: set[socket.socket] = set()
        super().__init__(target)

    def freeze(self) -> None:
        self.silent |= self._conns

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                if source not in self.silent and sink not in self.silent:
                    sink.sendall(data)


def test_a_listener_on_a_silent_connection_replaces_it(
        postgres_backend: PostgresBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    """The LISTEN connection goes silent (no reset, no answer): after a probe finds it so, the
    listener connects again and hears new tasks; without the probe it would wait forever."""
    monkeypatch.setattr(listen, "PROBE_S", 0.5)
    monkeypatch.setattr(listen, "PROBE_TIMEOUT_S", 0.5)
    params = conninfo_to_dict(postgres_backend.url)
    store = postgres_backend.open()
    assert isinstance(store, PostgresStore)
    proxy = FreezingProxy((str(params.get("host", "127.0.0.1")), int(str(params.get("port", 5432)))))
    listener = Listener(make_conninfo(postgres_backend.url, host="127.0.0.1", port=proxy.port),
                        store.schema)

    async def run() -> list[str]:
        assert await listener.take_submitted(0.01) == []  # listening from here on
        proxy.freeze()
        store.create_task("lost", SubmitRequest(workflow="wf"), time.time())  # its NOTIFY too
        heard: list[str] = []
        deadline = time.monotonic() + WAIT_S
        n = 0
        while "late" not in "".join(heard) and time.monotonic() < deadline:
            n += 1
            store.create_task(f"late{n}", SubmitRequest(workflow="wf"), time.time())
            heard += [task_id for task_id, *_ in await listener.take_submitted(1.0)]
        await listener.close()
        return heard

    try:
        heard = asyncio.run(run())
    finally:
        proxy.close()
    assert any(t.startswith("late") for t in heard), heard


def test_admission_and_fencing_hold_through_the_direct_path(postgres_backend: PostgresBackend,
                                                            tmp_path: Path) -> None:
    store = DirectStore(settings(postgres_backend, tmp_path, queue_capacity=2,
                                 tenant_queued_tasks=2))

    async def run() -> None:
        first, _ = await store.submit(SubmitRequest(workflow="wf"))
        await store.submit(SubmitRequest(workflow="wf"))
        with pytest.raises(QueueFull):
            await store.submit(SubmitRequest(workflow="wf"))
        (claim,) = await store.claim([first.id], "w1", 30.0)
        stale = Lease(task_id=first.id, owner="w1", token=claim.task.runs + 1)
        with pytest.raises(LeaseLost):
            await store.record_step(stale, "a", b"x")
        lease = Lease(task_id=first.id, owner="w1", token=claim.task.runs)
        assert await store.record_step(lease, "a", b"x") is False
        done = await store.finish(lease, TaskStatus.SUCCEEDED, {"ok": True}, None)
        assert done.status is TaskStatus.SUCCEEDED

    asyncio.run(run())


def test_leases_go_by_the_database_clock_whatever_the_processes_clocks(
        postgres_backend: PostgresBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker node's clock an hour behind claims and renews; a dispatcher's an hour ahead
    expires leases: the lease is the database's lease_s all the same, and is not expired."""
    s = settings(postgres_backend, tmp_path)
    worker, dispatcher = DirectStore(s), DirectStore(s)
    real = time.time

    def skewed(by_s: float) -> types.SimpleNamespace:
        return types.SimpleNamespace(time=lambda: real() + by_s, monotonic=time.monotonic)

    def db_now() -> float:
        return float(postgres_backend.query("SELECT extract(epoch FROM clock_timestamp())")[0][0])

    async def run() -> None:
        record, _ = await worker.submit(SubmitRequest(workflow="wf"))
        monkeypatch.setattr(direct, "time", skewed(-3600))
        (claim,) = await worker.claim([record.id], "w1", 30.0)
        assert abs((claim.task.lease_until or 0) - (db_now() + 30.0)) < 5
        assert await worker.renew("w1", {record.id: claim.task.runs}, 30.0) == {record.id: False}
        monkeypatch.setattr(direct, "time", skewed(+3600))
        assert await dispatcher.expire_leases() == []
        assert (await dispatcher.get_task(record.id)).status is TaskStatus.RUNNING
        # A lease that did run out, by the database's clock, is expired.
        postgres_backend.query(f"UPDATE tasks SET lease_until = {db_now() - 1} "
                               f"WHERE id = '{record.id}'")
        assert [t.id for t in await dispatcher.expire_leases()] == [record.id]

    asyncio.run(run())


def test_sent_to_another_process_it_opens_that_process_own(postgres_backend: PostgresBackend,
                                                            tmp_path: Path) -> None:
    s = settings(postgres_backend, tmp_path)
    shared = DirectStore.shared(s)

    assert pickle.loads(pickle.dumps(shared)) is shared
    assert DirectStore.shared(s) is shared
