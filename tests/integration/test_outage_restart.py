"""A control-plane actor that Ray restarts during a database outage keeps trying to rebuild, the
readiness check says what it waits for, and once the database is back, work runs.

The outage is real as the runtime's processes see it: their PostgreSQL connections go through a
TCP forwarder that the test cuts (connections reset, new ones refused) and restores.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from runtime import Runtime, TaskStatus
from tests.conftest import wait_for
from tests.faults import Kind, kill, pick
from tests.integration.conftest import PG_URL
from tests.tcp_proxy import tcp_proxy


def test_restarted_during_a_database_outage_recovers_and_readiness_says_so(
        make_runtime, side_dir: Path) -> None:
    params = conninfo_to_dict(PG_URL)
    schema = f"rs_outage_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    try:
        with tcp_proxy((str(params.get("host", "127.0.0.1")), int(params.get("port", 5432)))) as db:
            url = make_conninfo(PG_URL, host="127.0.0.1", port=db.port, connect_timeout=2,
                                options=f"-c search_path={schema}")
            rt: Runtime = make_runtime(store="postgres", postgres_url=url)
            client = rt.client()
            warm = client.submit("five_steps", {"dir": str(side_dir), "steps": 1})
            assert client.wait(warm.id, timeout_s=60).status is TaskStatus.SUCCEEDED
            assert set(client.readiness().values()) == {"ok"}

            db.cut()
            victims = [pick(kind, rt.settings.namespace) for kind in (Kind.DISPATCHER, Kind.EVENTS)]
            for victim in victims:
                assert victim is not None
                kill(victim)

            last: list[dict[str, str]] = []

            def waiting() -> dict[str, str] | None:
                ready = client.readiness()
                last[:] = [ready]
                parts = (ready.get("dispatcher", ""), ready.get("events", ""))
                return ready if all("failing" in p for p in parts) else None

            try:
                seen = wait_for(waiting, timeout_s=60, interval_s=0.2,
                                what="readiness to say the restarted actors wait for the database")
            except AssertionError as e:
                raise AssertionError(f"{e}; readiness said {last}") from None
            assert "rebuilding the dispatch index" in seen["dispatcher"], seen

            db.restore()
            wait_for(lambda: set(client.readiness().values()) == {"ok"}, timeout_s=90,
                     interval_s=0.5, what="every part ready once the database is back")
            after = client.submit("five_steps", {"dir": str(side_dir), "steps": 2})
            assert client.wait(after.id, timeout_s=90).status is TaskStatus.SUCCEEDED
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
