"""Rows to models for every SQL Store: both schemas name their columns alike, so one reading of a
task, summary or dead-letter row serves SQLite (``sqlite3.Row``) and PostgreSQL (``dict_row``)."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Protocol

from runtime.core.models import DeadLetter, TaskRecord, TaskStatus, TaskSummary


class Row(Protocol):
    """A result row whose columns are read by name."""

    def __getitem__(self, key: str, /) -> Any: ...


def rank_order(aging_per_s: float) -> str:
    """The ORDER BY of queued tasks in the dispatcher's order (runtime/flow/queue.py): the key
    ``aging_per_s * created_at - priority``, lowest first, then the oldest, then by id. The key is
    fixed while a task waits (every task ages alike), so an index can hold it."""
    return f"(created_at * {float(aging_per_s)!r} - priority), created_at, id"


def rank_index_name(aging_per_s: float) -> str:
    return "tasks_rank_" + hashlib.sha1(repr(float(aging_per_s)).encode()).hexdigest()[:10]


def rank_index(aging_per_s: float) -> str:
    """The partial index of queued tasks in ``rank_order`` (named after the aging it ranks by; made
    when a Store opens, since the aging is a setting)."""
    return (f"CREATE INDEX IF NOT EXISTS {rank_index_name(aging_per_s)} ON tasks "
            f"({rank_order(aging_per_s)}) WHERE status = 'queued'")


TASK_COLUMNS = (
    "id, workflow, input, status, priority, tenant, idempotency_key, output, error, runs, created_at, "
    "updated_at, started_at, finished_at, owner, lease_until, cancel_requested, waiting_for, wake_at, "
    "crashes, trace_parent, token_budget, usage"
)

#: A task without its input and output, for lists.
SUMMARY_COLUMNS = (
    "id, workflow, status, priority, tenant, idempotency_key, error, runs, created_at, updated_at, "
    "started_at, finished_at, owner, cancel_requested, waiting_for, crashes, input_bytes"
)

DEAD_LETTER_COLUMNS = (
    "id, tool, args, error, error_type, attempts, task_id, step_key, tenant, created_at, status, "
    "replayed_at, result"
)


def task(row: Row) -> TaskRecord:
    return TaskRecord(
        id=row["id"], workflow=row["workflow"], input=json.loads(row["input"]),
        status=TaskStatus(row["status"]), priority=row["priority"], tenant=row["tenant"],
        idempotency_key=row["idempotency_key"],
        output=json.loads(row["output"]) if row["output"] is not None else None,
        error=row["error"], runs=row["runs"], created_at=row["created_at"],
        updated_at=row["updated_at"], started_at=row["started_at"], finished_at=row["finished_at"],
        owner=row["owner"], lease_until=row["lease_until"],
        cancel_requested=bool(row["cancel_requested"]), waiting_for=row["waiting_for"],
        wake_at=row["wake_at"], crashes=row["crashes"], trace_parent=row["trace_parent"],
        token_budget=row["token_budget"],
        usage=json.loads(row["usage"]) if row["usage"] else {},
    )


def summary(row: Row) -> TaskSummary:
    return TaskSummary(
        id=row["id"], workflow=row["workflow"], status=TaskStatus(row["status"]),
        priority=row["priority"], tenant=row["tenant"], idempotency_key=row["idempotency_key"],
        error=row["error"], runs=row["runs"], created_at=row["created_at"],
        updated_at=row["updated_at"], started_at=row["started_at"], finished_at=row["finished_at"],
        owner=row["owner"], cancel_requested=bool(row["cancel_requested"]),
        waiting_for=row["waiting_for"], crashes=row["crashes"], input_bytes=row["input_bytes"],
    )


def dead_letter(row: Row) -> DeadLetter:
    return DeadLetter(
        id=row["id"], tool=row["tool"], args=json.loads(row["args"]), error=row["error"],
        error_type=row["error_type"], attempts=row["attempts"], task_id=row["task_id"],
        step_key=row["step_key"], tenant=row["tenant"], created_at=row["created_at"],
        status=row["status"], replayed_at=row["replayed_at"],
        result=json.loads(row["result"]) if row["result"] is not None else None,
    )


def step_event(key: str, size: int, blobs: list[str], elapsed_s: float | None = None
               ) -> dict[str, Any]:
    """A ``step`` event's data: the key, the output's size, its blobs, and how long the step ran
    (when the runner said; timelines draw it)."""
    data: dict[str, Any] = {"key": key, "bytes": size, "blobs": blobs}
    if elapsed_s is not None:
        data["elapsed_s"] = round(elapsed_s, 6)
    return data
