"""Topic events and their deliveries: the outbox of the event-driven half, on either database.

A publish writes the event, and nothing else, in one transaction (``topic_events``; its id is
unique per tenant, so a retried publish is the same event). The event bus (runtime/events/bus.py) then
routes it: it works out the subscribers and writes one ``deliveries`` row for each, due now or,
debounced, later. A delivery is taken with its attempt counted and its next due time pushed out
(``retry_s``): if whoever took it dies before finishing it, it comes due again, and goes out again
marked as a possible redelivery. What finishes a delivery: the task it started (its id is kept,
for flow control per key), the agent's handler returning, or a rule saying it is not wanted.

``Outbox`` is mixed into both Store backends; its SQL is written once, with ``?`` placeholders
(PostgreSQL's ``%s`` are put in by ``_q``), over the backend's own ``_tx``.
"""

from __future__ import annotations

import json
from contextlib import AbstractContextManager
from typing import Any

from runtime.core.errors import EventQuotaExceeded
from runtime.core.models import Delivery, Route, TopicEvent

_EVENT = "seq, id, topic, key, data, tenant, source, created_at"
_EVENT_E = ", ".join(f"e.{c}" for c in _EVENT.split(", "))
_ACTIVE = "('queued', 'running', 'waiting')"
_DELIVERY = ("target", "key", "attempts", "due_at", "done_at", "outcome", "task_id")

MIGRATION = """
CREATE TABLE topic_events (
    seq {seq},
    id TEXT NOT NULL,
    topic TEXT NOT NULL,
    key TEXT,
    data TEXT NOT NULL,
    tenant TEXT NOT NULL,
    source TEXT NOT NULL,
    created_at {real} NOT NULL,
    routed_at {real},
    UNIQUE (tenant, id)
);
CREATE INDEX topic_events_unrouted ON topic_events(seq) WHERE routed_at IS NULL;
CREATE INDEX topic_events_topic ON topic_events(topic, seq);
CREATE TABLE deliveries (
    event_seq BIGINT NOT NULL,
    target TEXT NOT NULL,
    key TEXT NOT NULL DEFAULT '',
    attempts INTEGER NOT NULL DEFAULT 0,
    due_at {real} NOT NULL,
    done_at {real},
    outcome TEXT,
    task_id TEXT,
    PRIMARY KEY (event_seq, target)
);
CREATE INDEX deliveries_due ON deliveries(due_at) WHERE done_at IS NULL;
CREATE INDEX deliveries_key ON deliveries(target, key, task_id);
"""

# Version 10: flow control per tenant (a delivery's key is its event's tenant's); a tenant's events
# listed through an index, a page at a time; what each tenant keeps, for its quota; the age of
# events, for retention.
MIGRATION_10 = """
ALTER TABLE deliveries ADD COLUMN tenant TEXT NOT NULL DEFAULT '';
UPDATE deliveries SET tenant = COALESCE(
    (SELECT e.tenant FROM topic_events e WHERE e.seq = deliveries.event_seq), '');
DROP INDEX deliveries_key;
CREATE INDEX deliveries_key ON deliveries(target, tenant, key, task_id);
CREATE INDEX topic_events_tenant ON topic_events(tenant, seq);
CREATE INDEX topic_events_tenant_topic ON topic_events(tenant, topic, seq);
CREATE INDEX topic_events_created ON topic_events(created_at);
CREATE TABLE event_usage (
    tenant TEXT PRIMARY KEY,
    events BIGINT NOT NULL,
    bytes BIGINT NOT NULL
);
INSERT INTO event_usage (tenant, events, bytes)
    SELECT tenant, COUNT(*), SUM(length(data)) FROM topic_events GROUP BY tenant;
"""


#: An event and what became of it: one entry per subscriber it was routed to.
EventReport = tuple[TopicEvent, list[dict[str, Any]]]


def _event(row: Any) -> TopicEvent:
    return TopicEvent(seq=row["seq"], id=row["id"], topic=row["topic"], key=row["key"],
                      data=json.loads(row["data"]), tenant=row["tenant"], source=row["source"],
                      created_at=row["created_at"])


class PortableSQL:
    """SQL written once for both backends: the host class supplies ``_tx`` (one transaction) and
    its placeholder style; ``_q`` turns the ``?`` placeholders into it."""

    _placeholder = "?"
    _lock_row = ""  # PostgreSQL: FOR UPDATE, on a row read before it is written

    def _tx(self) -> AbstractContextManager[Any]:
        raise NotImplementedError

    def _q(self, sql: str) -> str:
        return sql if self._placeholder == "?" else sql.replace("?", self._placeholder)


class Outbox(PortableSQL):
    """Topic events and deliveries."""

    _lock_taken = ""  # PostgreSQL: lock the deliveries a taker takes, skip those another holds

    def _one_event(self, c: Any, tenant: str, event_id: str) -> TopicEvent | None:
        row = c.execute(self._q(f"SELECT {_EVENT} FROM topic_events WHERE tenant = ? AND id = ?"),
                        (tenant, event_id)).fetchone()
        return _event(row) if row is not None else None

    def publish(self, events: list[TopicEvent],
                quota: tuple[int, int] | None = None) -> list[tuple[TopicEvent, bool]]:
        """Keep each event unless its tenant already has one with its id; (event as kept, new?).
        ``quota``: the (events, bytes of data) a tenant may keep; a new event past it refuses the
        whole call (EventQuotaExceeded, nothing kept)."""
        out: list[tuple[TopicEvent, bool]] = []
        with self._tx() as c:
            for e in events:
                kept = self._one_event(c, e.tenant, e.id)
                if kept is None:
                    data = json.dumps(e.data)  # ASCII: its length is its size in bytes
                    row = c.execute(self._q(
                        "INSERT INTO topic_events (id, topic, key, data, tenant, source, created_at) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING RETURNING seq"),
                        (e.id, e.topic, e.key, data, e.tenant, e.source, e.created_at)).fetchone()
                    if row is not None:
                        self._count_usage(c, e.tenant, len(data), quota)
                        out.append((e.model_copy(update={"seq": row["seq"]}), True))
                        continue
                    kept = self._one_event(c, e.tenant, e.id)  # another process kept it just now
                    assert kept is not None
                out.append((kept, False))
        return out

    def _count_usage(self, c: Any, tenant: str, size: int, quota: tuple[int, int] | None) -> None:
        """Count a new event of ``size`` bytes against its tenant (the row is locked until the
        transaction ends, so concurrent publishes of one tenant cannot both pass the quota)."""
        usage = c.execute(self._q(
            "INSERT INTO event_usage (tenant, events, bytes) VALUES (?, 1, ?) "
            "ON CONFLICT (tenant) DO UPDATE SET events = event_usage.events + 1, "
            "bytes = event_usage.bytes + excluded.bytes RETURNING events, bytes"),
            (tenant, size)).fetchone()
        if quota is not None and (usage["events"] > quota[0] or usage["bytes"] > quota[1]):
            raise EventQuotaExceeded(tenant, int(usage["events"]) - 1,
                                     int(usage["bytes"]) - size, quota[0], quota[1])

    def unrouted_events(self, limit: int) -> list[TopicEvent]:
        with self._tx() as c:
            rows = c.execute(self._q(f"SELECT {_EVENT} FROM topic_events WHERE routed_at IS NULL "
                                     "ORDER BY seq LIMIT ?"), (limit,)).fetchall()
        return [_event(r) for r in rows]

    def route_event(self, seq: int, routes: list[Route], now: float) -> None:
        """Write the event's deliveries and mark it routed; a second call changes nothing. A route
        that ``supersede``s ends its target's pending deliveries for the same key first. A key is
        its event's tenant's: the delivery row carries the tenant, read here from the event
        itself, so no route can reach another tenant's deliveries."""
        with self._tx() as c:
            marked = c.execute(self._q("UPDATE topic_events SET routed_at = ? "
                                       "WHERE seq = ? AND routed_at IS NULL RETURNING tenant"),
                               (now, seq)).fetchone()
            if marked is None:
                return
            tenant = marked["tenant"]
            for r in routes:
                if r.supersede:
                    c.execute(self._q(
                        "UPDATE deliveries SET done_at = ?, outcome = 'superseded' WHERE target = ? "
                        "AND tenant = ? AND key = ? AND done_at IS NULL AND task_id IS NULL"),
                        (now, r.target, tenant, r.key))
                c.execute(self._q("INSERT INTO deliveries (event_seq, target, tenant, key, due_at) "
                                  "VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"),
                          (seq, r.target, tenant, r.key, r.due_at))

    def take_deliveries(self, now: float, limit: int, retry_s: float) -> list[Delivery]:
        """The deliveries due now, oldest first, each with its attempt counted and its next due time
        ``retry_s`` away (it comes back then unless it is finished or deferred)."""
        with self._tx() as c:
            rows = c.execute(self._q(
                f"SELECT d.target, d.attempts, {_EVENT_E} FROM deliveries d "
                "JOIN topic_events e ON e.seq = d.event_seq "
                f"WHERE d.done_at IS NULL AND d.due_at <= ? ORDER BY d.due_at, d.event_seq LIMIT ?"
                + self._lock_taken), (now, limit)).fetchall()
            for r in rows:
                c.execute(self._q("UPDATE deliveries SET attempts = attempts + 1, due_at = ? "
                                  "WHERE event_seq = ? AND target = ?"),
                          (now + retry_s, r["seq"], r["target"]))
        return [Delivery(event=_event(r), target=r["target"], attempt=r["attempts"] + 1) for r in rows]

    def finish_delivery(self, seq: int, target: str, now: float, outcome: str,
                        task_id: str | None = None) -> bool:
        """End a delivery with what became of it; False if it had ended already."""
        with self._tx() as c:
            return bool(c.execute(self._q(
                "UPDATE deliveries SET done_at = ?, outcome = ?, task_id = ? "
                "WHERE event_seq = ? AND target = ? AND done_at IS NULL"),
                (now, outcome[:500], task_id, seq, target)).rowcount)

    def defer_delivery(self, seq: int, target: str, due_at: float,
                       count_attempt: bool = False) -> None:
        """Put a taken delivery off until ``due_at``: a retry after a failed attempt
        (``count_attempt``), or flow control holding it back (the attempt does not count)."""
        with self._tx() as c:
            c.execute(self._q(
                "UPDATE deliveries SET due_at = ?, attempts = CASE WHEN ? OR attempts = 0 THEN attempts "
                "ELSE attempts - 1 END WHERE event_seq = ? AND target = ? AND done_at IS NULL"),
                (due_at, count_attempt, seq, target))

    def redeliver(self, seq: int, target: str, now: float) -> bool:
        """Make an ended delivery due again from its first attempt (a dead letter replayed)."""
        with self._tx() as c:
            return bool(c.execute(self._q(
                "UPDATE deliveries SET done_at = NULL, outcome = NULL, attempts = 0, due_at = ? "
                "WHERE event_seq = ? AND target = ?"), (now, seq, target)).rowcount)

    def active_key_tasks(self, target: str, tenant: str, key: str) -> list[str]:
        """The tasks the target's deliveries for ``tenant``'s ``key`` started that have not ended."""
        with self._tx() as c:
            rows = c.execute(self._q(
                "SELECT d.task_id FROM deliveries d JOIN tasks t ON t.id = d.task_id "
                "WHERE d.target = ? AND d.tenant = ? AND d.key = ? "
                f"AND t.status IN {_ACTIVE} ORDER BY d.event_seq"), (target, tenant, key)).fetchall()
        return [r["task_id"] for r in rows]

    def topic_events(self, topic: str | None = None, tenant: str | None = None, limit: int = 100,
                     before: int | None = None) -> list[TopicEvent]:
        """Events newest first; ``before``: the seq the previous page ended at. The page's seqs
        come off an index (a tenant's: ``(tenant, seq)``, ``(tenant, topic, seq)``), then the
        data of those alone, never the data of every event a sort would read."""
        sql, args = page_sql(topic, tenant, before)
        with self._tx() as c:
            seqs = [r["seq"] for r in c.execute(self._q(sql), (*args, limit)).fetchall()]
            if not seqs:
                return []
            rows = c.execute(self._q(
                f"SELECT {_EVENT} FROM topic_events WHERE seq IN ({', '.join('?' * len(seqs))})"),
                seqs).fetchall()
        return sorted((_event(r) for r in rows), key=lambda e: -e.seq)

    def prune_events(self, before: float, limit: int) -> int:
        """Forget up to ``limit`` events published before ``before`` whose deliveries have all
        ended, with their deliveries (retention); each tenant's usage goes down by them. How many."""
        with self._tx() as c:
            rows = c.execute(self._q(
                "SELECT e.seq, e.tenant, length(e.data) AS bytes FROM topic_events e "
                "WHERE e.created_at < ? AND e.routed_at IS NOT NULL AND NOT EXISTS "
                "(SELECT 1 FROM deliveries d WHERE d.event_seq = e.seq AND d.done_at IS NULL) "
                "ORDER BY e.created_at LIMIT ?"), (before, limit)).fetchall()
            freed: dict[str, list[int]] = {}
            for r in rows:
                c.execute(self._q("DELETE FROM deliveries WHERE event_seq = ?"), (r["seq"],))
                c.execute(self._q("DELETE FROM topic_events WHERE seq = ?"), (r["seq"],))
                tally = freed.setdefault(r["tenant"], [0, 0])
                tally[0] += 1
                tally[1] += int(r["bytes"])
            for tenant, (events, size) in freed.items():
                c.execute(self._q("UPDATE event_usage SET events = events - ?, bytes = bytes - ? "
                                  "WHERE tenant = ?"), (events, size, tenant))
        return len(rows)

    def event_deliveries(self, tenant: str, event_id: str) -> EventReport | None:
        """The event ``event_id`` of ``tenant`` and its deliveries, or None."""
        with self._tx() as c:
            event = self._one_event(c, tenant, event_id)
            if event is None:
                return None
            rows = c.execute(self._q(
                f"SELECT {', '.join(_DELIVERY)} FROM deliveries WHERE event_seq = ? ORDER BY target"),
                (event.seq,)).fetchall()
        return event, [{k: r[k] for k in _DELIVERY} for r in rows]


def page_sql(topic: str | None, tenant: str | None, before: int | None) -> tuple[str, list[Any]]:
    """The seqs of a page of events, newest first (its LIMIT the last placeholder)."""
    where, args = [], []
    for clause, value in (("tenant = ?", tenant), ("topic = ?", topic), ("seq < ?", before)):
        if value is not None:
            where.append(clause)
            args.append(value)
    sql = "SELECT seq FROM topic_events"
    if where:
        sql += " WHERE " + " AND ".join(where)
    return sql + " ORDER BY seq DESC LIMIT ?", args


def migration(seq: str, real: str) -> str:
    """The outbox's tables in a backend's types: ``seq`` the event order's column definition."""
    return MIGRATION.format(seq=seq, real=real)

