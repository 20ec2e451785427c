"""The pieces a crashed runtime comes back with: a rebuild tried until it works, the health it
reports meanwhile, one runtime per SQLite Store, and the API port's wait."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from runtime.core.errors import StoreInUse
from runtime.core.recovery import OK, Rebuild, Rounds, loops_health
from runtime.store.owner import StoreLock
from serve.ports import bindable, wait_until_bindable


def test_a_rebuild_is_tried_until_it_succeeds_and_says_what_it_waits_for() -> None:
    async def scenario() -> list[str]:
        tries = 0

        async def attempt() -> None:
            nonlocal tries
            tries += 1
            if tries < 3:
                raise ConnectionError("postgres://user:secret@db/x unreachable")

        rebuild = Rebuild("rebuilding", attempt, first_backoff_s=0.01, max_backoff_s=0.02)
        seen = [rebuild.health()]
        rebuild.start()
        while tries < 2:
            await asyncio.sleep(0.001)
        seen.append(rebuild.health())
        while not rebuild.done:
            await asyncio.sleep(0.005)
        seen.append(rebuild.health())
        return seen

    before, failing, after = asyncio.run(scenario())
    assert before.startswith("rebuilding: in progress")
    assert "failing" in failing and "ConnectionError" in failing
    assert "secret" not in failing  # only the class: /readyz is public
    assert after == OK


def test_rounds_and_loops_report_failure_until_a_round_succeeds() -> None:
    rounds = Rounds("sweeping")
    assert rounds.health() == OK
    rounds.failed(TimeoutError())
    assert "sweeping: failing" in rounds.health() and "TimeoutError" in rounds.health()
    rounds.succeeded()
    assert rounds.health() == OK

    async def loops() -> tuple[str, str]:
        async def boom() -> None:
            raise RuntimeError("x")

        crashed = asyncio.get_running_loop().create_task(boom())
        running = asyncio.get_running_loop().create_task(asyncio.sleep(10))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        result = (loops_health({"a": running, "b": crashed}), loops_health({"a": running}))
        running.cancel()
        return result

    stopped, ok = asyncio.run(loops())
    assert stopped == "b: stopped (RuntimeError)" and ok == OK


def test_one_runtime_holds_a_sqlite_store_until_its_process_ends(tmp_path: Path) -> None:
    database = tmp_path / "raysquad.db"
    # Another process holds it (a running runtime's Store actor).
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; "
         "from runtime.store.owner import StoreLock; StoreLock(Path(sys.argv[1])); "
         "print('held', flush=True); time.sleep(60)", str(database)],
        stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[3])
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(StoreInUse) as refused:
            StoreLock(database, wait_s=0.3)
        assert f"pid {holder.pid}" in str(refused.value)
    finally:
        holder.kill()  # a crash: the kernel lets go of the lock
        holder.wait()
    StoreLock(database, wait_s=5).release()  # free at once, no stale lock left behind


def test_the_port_wait_sees_a_listener_and_its_going() -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    assert not bindable("127.0.0.1", port)
    why = wait_until_bindable("127.0.0.1", port, timeout_s=0.3)
    assert why is not None and f"port {port}" in why and f"pid {os.getpid()}" in why
    server.close()
    assert wait_until_bindable("127.0.0.1", port, timeout_s=5) is None


def test_one_runtime_holds_a_postgres_store_schema(tmp_path: Path) -> None:
    import uuid

    import psycopg
    from psycopg import sql
    from psycopg.conninfo import make_conninfo

    from runtime.core.config import Settings
    from runtime.store.owner import PostgresLock, own_store

    base = os.environ.get("RAYSQUAD_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
    schema = f"rs_owner_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    url = make_conninfo(base, options=f"-c search_path={schema}")
    settings = Settings(data_dir=tmp_path, store="postgres", postgres_url=url)
    try:
        first = own_store(settings)
        assert isinstance(first, PostgresLock)
        with pytest.raises(StoreInUse) as refused:
            PostgresLock(url, wait_s=0.3)
        assert schema in str(refused.value)
        # A restarted Store goes on without it (its own previous process may still hold it).
        assert own_store(settings, restarted=True, wait_s=0.3) is None
        first.release()
        PostgresLock(url, wait_s=5).release()  # the session ended: free at once
    finally:
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


def test_a_restarted_store_keeps_its_ownership_across_tries_to_open(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The lock is taken once: a second take would wait out ``OWNER_WAIT_S`` on this process's own
    lock, then go on without it."""
    from runtime.core.config import Settings
    from runtime.core.errors import StoreError
    from runtime.store import service

    settings = Settings(data_dir=tmp_path)
    real_open, fails = service.open_store, [StoreError("the store is unavailable (a test)")] * 2

    def open_store(s: Settings) -> object:
        if fails:
            raise fails.pop()
        return real_open(s)

    monkeypatch.setattr(service, "open_store", open_store)
    owner, _ = service.open_until_open(settings)  # after 0.5 + 1 s of backoff
    try:
        assert isinstance(owner, StoreLock) and not fails
        with pytest.raises(StoreInUse):  # held: by this process, through the owner returned
            StoreLock(settings.database_path, wait_s=0.2)
    finally:
        assert owner is not None
        owner.release()
