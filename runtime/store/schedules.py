"""Cron schedules and the scheduler's lease, on either database (mixed into both Store backends,
like store/outbox.py, with the same ``?`` placeholders).

A schedule row keeps its next tick (``next_at``). Firing a tick is two writes: the task (its
idempotency key names the schedule and the tick) and then ``advance``, a compare-and-set on
``next_at``. A scheduler that dies between them leaves the tick due; the next one submits it again,
gets the same task back, and advances: each tick starts at most one task, however often it is
tried. The lease (``take_lease``) keeps a second scheduler from doing the same work meanwhile.
"""

from __future__ import annotations

import json
from typing import Any

from runtime.models import Schedule
from runtime.store.outbox import PortableSQL

_COLUMNS = ("id, tenant, workflow, cron, timezone, input, catch_up, overlap, paused, next_at, "
            "last_tick, last_task_id, created_at, updated_at")

MIGRATION = """
CREATE TABLE schedules (
    id TEXT NOT NULL,
    tenant TEXT NOT NULL,
    workflow TEXT NOT NULL,
    cron TEXT NOT NULL,
    timezone TEXT NOT NULL,
    input TEXT NOT NULL,
    catch_up TEXT NOT NULL,
    overlap TEXT NOT NULL,
    paused BOOLEAN NOT NULL DEFAULT FALSE,
    next_at {real} NOT NULL,
    last_tick {real},
    last_task_id TEXT,
    created_at {real} NOT NULL,
    updated_at {real} NOT NULL,
    PRIMARY KEY (tenant, id)
);
CREATE INDEX schedules_due ON schedules(next_at) WHERE NOT paused;
CREATE TABLE leases (
    name TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    until {real} NOT NULL
)
"""


def _schedule(row: Any) -> Schedule:
    fields = {k: row[k] for k in _COLUMNS.split(", ")}
    fields["input"] = json.loads(fields["input"])
    fields["paused"] = bool(fields["paused"])
    return Schedule(**fields)


class Schedules(PortableSQL):
    """Schedules and the scheduler's lease."""

    def put_schedule(self, schedule: Schedule) -> tuple[Schedule, bool]:
        """Create the schedule, or replace its definition (keeping its last tick and task); a
        schedule whose cron, time zone and pause are unchanged keeps its next tick too."""
        s = schedule
        with self._tx() as c:
            old = self._get_schedule(c, s.tenant, s.id, lock=True)
            if old is None:
                c.execute(self._q(f"INSERT INTO schedules ({_COLUMNS}) VALUES "
                                  "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"),
                          (s.id, s.tenant, s.workflow, s.cron, s.timezone, json.dumps(s.input),
                           s.catch_up, s.overlap, s.paused, s.next_at, None, None, s.created_at,
                           s.updated_at))
                return s, True
            keep_next = (old.cron, old.timezone, old.paused) == (s.cron, s.timezone, s.paused)
            next_at = old.next_at if keep_next else s.next_at
            c.execute(self._q(
                "UPDATE schedules SET workflow = ?, cron = ?, timezone = ?, input = ?, catch_up = ?, "
                "overlap = ?, paused = ?, next_at = ?, updated_at = ? WHERE tenant = ? AND id = ?"),
                (s.workflow, s.cron, s.timezone, json.dumps(s.input), s.catch_up, s.overlap,
                 s.paused, next_at, s.updated_at, s.tenant, s.id))
            updated = self._get_schedule(c, s.tenant, s.id)
            assert updated is not None
            return updated, False

    def _get_schedule(self, c: Any, tenant: str, schedule_id: str,
                      lock: bool = False) -> Schedule | None:
        row = c.execute(self._q(f"SELECT {_COLUMNS} FROM schedules WHERE tenant = ? AND id = ?")
                        + (self._lock_row if lock else ""), (tenant, schedule_id)).fetchone()
        return _schedule(row) if row is not None else None

    _lock_row = ""  # PostgreSQL: FOR UPDATE

    def get_schedule(self, tenant: str, schedule_id: str) -> Schedule | None:
        with self._tx() as c:
            return self._get_schedule(c, tenant, schedule_id)

    def list_schedules(self, tenant: str | None = None) -> list[Schedule]:
        sql = f"SELECT {_COLUMNS} FROM schedules"
        args: tuple[Any, ...] = ()
        if tenant is not None:
            sql, args = sql + " WHERE tenant = ?", (tenant,)
        with self._tx() as c:
            return [_schedule(r) for r in c.execute(self._q(sql + " ORDER BY tenant, id"), args)]

    def delete_schedule(self, tenant: str, schedule_id: str) -> bool:
        with self._tx() as c:
            return bool(c.execute(self._q("DELETE FROM schedules WHERE tenant = ? AND id = ?"),
                                  (tenant, schedule_id)).rowcount)

    def pause_schedule(self, tenant: str, schedule_id: str, paused: bool, next_at: float,
                       now: float) -> Schedule | None:
        """Pause, or resume from ``next_at`` (the first tick after now: a resume catches up
        nothing)."""
        with self._tx() as c:
            c.execute(self._q("UPDATE schedules SET paused = ?, next_at = ?, updated_at = ? "
                              "WHERE tenant = ? AND id = ?"),
                      (paused, next_at, now, tenant, schedule_id))
            return self._get_schedule(c, tenant, schedule_id)

    def due_schedules(self, now: float, limit: int) -> list[Schedule]:
        with self._tx() as c:
            rows = c.execute(self._q(f"SELECT {_COLUMNS} FROM schedules WHERE NOT paused "
                                     "AND next_at <= ? ORDER BY next_at LIMIT ?"), (now, limit))
            return [_schedule(r) for r in rows]

    def next_schedule_at(self) -> float | None:
        """The earliest next tick of a schedule that is not paused."""
        with self._tx() as c:
            row = c.execute("SELECT min(next_at) AS n FROM schedules WHERE NOT paused").fetchone()
        return None if row is None or row["n"] is None else float(row["n"])

    def advance_schedule(self, tenant: str, schedule_id: str, expected_next_at: float,
                         next_at: float, tick: float | None, task_id: str | None,
                         now: float) -> bool:
        """Move the schedule past a tick (recording the tick and the task it started, if any),
        unless someone moved it already: False then."""
        with self._tx() as c:
            moved = c.execute(self._q(
                "UPDATE schedules SET next_at = ?, last_tick = coalesce(?, last_tick), "
                "last_task_id = coalesce(?, last_task_id), updated_at = ? "
                "WHERE tenant = ? AND id = ? AND next_at = ?"),
                (next_at, tick, task_id, now, tenant, schedule_id, expected_next_at)).rowcount
            return bool(moved)

    def take_lease(self, name: str, owner: str, ttl_s: float, now: float) -> bool:
        """Hold the lease ``name`` for ``ttl_s`` more: True if ``owner`` holds it now (it was
        free, ran out, or was this owner's already)."""
        with self._tx() as c:
            c.execute(self._q("INSERT INTO leases (name, owner, until) VALUES (?, ?, ?) "
                              "ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, "
                              "until = excluded.until "
                              "WHERE leases.owner = excluded.owner OR leases.until < ?"),
                      (name, owner, now + ttl_s, now))
            row = c.execute(self._q("SELECT owner FROM leases WHERE name = ?"), (name,)).fetchone()
            return row is not None and row["owner"] == owner


def migration(real: str) -> str:
    return MIGRATION.format(real=real)
