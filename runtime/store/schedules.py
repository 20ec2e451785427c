"""Cron schedules and the scheduler's lease, on either database (mixed into both Store backends,
like store/outbox.py, with the same ``?`` placeholders).

A schedule row keeps its next tick (``next_at``). Firing a tick is two writes: the task (its
idempotency key names the schedule and the tick) and then ``advance``, a compare-and-set on
``next_at``. A scheduler that dies between them leaves the tick due; the next one submits it again,
gets the same task back, and advances: each tick starts at most one task, however often it is
tried. The lease (``take_lease``) keeps a second scheduler from doing the same work meanwhile.

``due_at`` (not in the model) is when the scheduler looks at a schedule next: its ``next_at``,
or later when a tick was put off (``defer_schedule``: the Store or the queue refused it for the
time being), so that schedules put off do not keep the others from being looked at.
"""

from __future__ import annotations

import json
from typing import Any

from runtime.core.errors import InvalidSchedule
from runtime.core.models import Schedule
from runtime.store.outbox import PortableSQL

_COLUMNS = ("id, tenant, workflow, cron, timezone, input, catch_up, overlap, paused, next_at, "
            "last_tick, last_task_id, created_at, updated_at, paused_reason")

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


#: Schema version 12: why the scheduler paused a schedule, and when it looks at it next.
MIGRATION_12 = """
ALTER TABLE schedules ADD COLUMN paused_reason TEXT;
ALTER TABLE schedules ADD COLUMN due_at {real};
UPDATE schedules SET due_at = next_at;
DROP INDEX schedules_due;
CREATE INDEX schedules_due ON schedules(due_at) WHERE NOT paused
"""


def _schedule(row: Any) -> Schedule:
    fields = {k: row[k] for k in _COLUMNS.split(", ")}
    fields["input"] = json.loads(fields["input"])
    fields["paused"] = bool(fields["paused"])
    return Schedule(**fields)


class Schedules(PortableSQL):
    """Schedules and the scheduler's lease."""

    def put_schedule(self, schedule: Schedule,
                     max_per_tenant: int | None = None) -> tuple[Schedule, bool]:
        """Create the schedule, or replace its definition (keeping its last tick and task); a
        schedule whose cron, time zone and pause are unchanged keeps its next tick too. A new one
        past ``max_per_tenant`` of its tenant's is refused (InvalidSchedule)."""
        s = schedule
        with self._tx() as c:
            old = self._get_schedule(c, s.tenant, s.id, lock=True)
            if old is None:
                if max_per_tenant is not None:
                    row = c.execute(self._q("SELECT count(*) AS n FROM schedules WHERE tenant = ?"),
                                    (s.tenant,)).fetchone()
                    if row["n"] >= max_per_tenant:
                        raise InvalidSchedule(
                            f"tenant {s.tenant!r} has {row['n']} schedules, the most it may keep "
                            f"(max_schedules_per_tenant); delete one first")
                c.execute(self._q(f"INSERT INTO schedules ({_COLUMNS}, due_at) VALUES "
                                  "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"),
                          (s.id, s.tenant, s.workflow, s.cron, s.timezone, json.dumps(s.input),
                           s.catch_up, s.overlap, s.paused, s.next_at, None, None, s.created_at,
                           s.updated_at, None, s.next_at))
                return s.model_copy(update={"paused_reason": None}), True
            keep_next = (old.cron, old.timezone, old.paused) == (s.cron, s.timezone, s.paused)
            next_at = old.next_at if keep_next else s.next_at
            # A new definition is its owner's word: whatever paused it before is no longer the reason.
            c.execute(self._q(
                "UPDATE schedules SET workflow = ?, cron = ?, timezone = ?, input = ?, catch_up = ?, "
                "overlap = ?, paused = ?, next_at = ?, updated_at = ?, paused_reason = NULL, "
                "due_at = CASE WHEN next_at = ? THEN due_at ELSE ? END "
                "WHERE tenant = ? AND id = ?"),
                (s.workflow, s.cron, s.timezone, json.dumps(s.input), s.catch_up, s.overlap,
                 s.paused, next_at, s.updated_at, next_at, next_at, s.tenant, s.id))
            updated = self._get_schedule(c, s.tenant, s.id)
            assert updated is not None
            return updated, False

    def _get_schedule(self, c: Any, tenant: str, schedule_id: str,
                      lock: bool = False) -> Schedule | None:
        row = c.execute(self._q(f"SELECT {_COLUMNS} FROM schedules WHERE tenant = ? AND id = ?")
                        + (self._lock_row if lock else ""), (tenant, schedule_id)).fetchone()
        return _schedule(row) if row is not None else None

    def get_schedule(self, tenant: str, schedule_id: str) -> Schedule | None:
        with self._tx() as c:
            return self._get_schedule(c, tenant, schedule_id)

    def list_schedules(self, tenant: str | None = None, limit: int | None = None,
                       after: str | None = None) -> list[Schedule]:
        """Schedules by tenant and id; with ``after`` (an id), those of ``tenant`` after it."""
        where: list[str] = []
        args: list[Any] = []
        if tenant is not None:
            where, args = ["tenant = ?"], [tenant]
            if after is not None:
                where, args = [*where, "id > ?"], [*args, after]
        sql = f"SELECT {_COLUMNS} FROM schedules" + (" WHERE " + " AND ".join(where) if where else "")
        sql += " ORDER BY tenant, id"
        if limit is not None:
            sql, args = sql + " LIMIT ?", [*args, limit]
        with self._tx() as c:
            return [_schedule(r) for r in c.execute(self._q(sql), tuple(args))]

    def delete_schedule(self, tenant: str, schedule_id: str) -> bool:
        with self._tx() as c:
            return bool(c.execute(self._q("DELETE FROM schedules WHERE tenant = ? AND id = ?"),
                                  (tenant, schedule_id)).rowcount)

    def pause_schedule(self, tenant: str, schedule_id: str, paused: bool, next_at: float,
                       now: float) -> Schedule | None:
        """Pause, or resume from ``next_at`` (the first tick after now: a resume catches up
        nothing); either way by its owner, so a reason the scheduler gave is dropped."""
        with self._tx() as c:
            c.execute(self._q("UPDATE schedules SET paused = ?, next_at = ?, due_at = ?, "
                              "updated_at = ?, paused_reason = NULL WHERE tenant = ? AND id = ?"),
                      (paused, next_at, next_at, now, tenant, schedule_id))
            return self._get_schedule(c, tenant, schedule_id)

    def due_schedules(self, now: float, limit: int) -> list[Schedule]:
        """The schedules to look at now, longest due first (a tick put off waits its turn)."""
        with self._tx() as c:
            rows = c.execute(self._q(f"SELECT {_COLUMNS} FROM schedules WHERE NOT paused "
                                     "AND due_at <= ? ORDER BY due_at LIMIT ?"), (now, limit))
            return [_schedule(r) for r in rows]

    def next_schedule_at(self) -> float | None:
        """When the scheduler should look next: the earliest due time of a schedule not paused."""
        with self._tx() as c:
            row = c.execute("SELECT min(due_at) AS n FROM schedules WHERE NOT paused").fetchone()
        return None if row is None or row["n"] is None else float(row["n"])

    def advance_schedule(self, tenant: str, schedule_id: str, expected_next_at: float,
                         next_at: float, tick: float | None, task_id: str | None,
                         now: float) -> bool:
        """Move the schedule past a tick (recording the tick and the task it started, if any),
        unless someone moved it already: False then."""
        with self._tx() as c:
            moved = c.execute(self._q(
                "UPDATE schedules SET next_at = ?, due_at = ?, last_tick = coalesce(?, last_tick), "
                "last_task_id = coalesce(?, last_task_id), updated_at = ? "
                "WHERE tenant = ? AND id = ? AND next_at = ?"),
                (next_at, next_at, tick, task_id, now, tenant, schedule_id,
                 expected_next_at)).rowcount
            return bool(moved)

    def defer_schedule(self, tenant: str, schedule_id: str, expected_next_at: float,
                       due_at: float, now: float) -> bool:
        """Leave the tick ``expected_next_at`` due but look at it again only at ``due_at``
        (its start failed for a passing reason); False if the schedule moved meanwhile."""
        with self._tx() as c:
            return bool(c.execute(self._q(
                "UPDATE schedules SET due_at = ?, updated_at = ? "
                "WHERE tenant = ? AND id = ? AND next_at = ?"),
                (due_at, now, tenant, schedule_id, expected_next_at)).rowcount)

    def halt_schedule(self, tenant: str, schedule_id: str, expected_next_at: float, reason: str,
                      now: float) -> bool:
        """Pause the schedule at its tick ``expected_next_at`` with the ``reason`` it cannot
        run; False if the schedule moved (or was redefined) meanwhile."""
        with self._tx() as c:
            return bool(c.execute(self._q(
                "UPDATE schedules SET paused = ?, paused_reason = ?, updated_at = ? "
                "WHERE tenant = ? AND id = ? AND next_at = ? AND NOT paused"),
                (True, reason, now, tenant, schedule_id, expected_next_at)).rowcount)

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
