"""The Store actor's admission Tally: the queue is counted rarely, never past a bound for it."""

from __future__ import annotations

import uuid
from pathlib import Path

from runtime.core.config import Settings
from runtime.core.errors import QueueFull, TenantQuotaExceeded
from runtime.core.models import SubmitRequest, TaskStatus
from runtime.store.service import Tally, admit
from runtime.store.sqlite import SQLiteStore


class CountingStore(SQLiteStore):
    """A real SQLite Store that counts how often admission counts the queue."""

    counts = 0

    def count_tasks(self, status: TaskStatus) -> int:
        self.counts += 1
        return super().count_tasks(status)


def items(n: int, size: int = 10) -> list[tuple[str, SubmitRequest]]:
    return [(uuid.uuid4().hex, SubmitRequest(workflow="wf", input={"x": "a" * size}))
            for _ in range(n)]


def test_the_queue_is_counted_once_then_only_near_the_bound(tmp_path: Path) -> None:
    store = CountingStore(tmp_path / "s.db", tmp_path / "blobs")
    settings = Settings(data_dir=tmp_path, queue_capacity=100, tenant_queued_tasks=100)
    tally = Tally(fresh_s=3600)

    for _ in range(8):  # 80 admitted: counted once, then the tally adds what it admitted
        assert all(isinstance(r, tuple) for r in admit(store, settings, items(10), 1.0, tally))
    assert store.counts == 1

    # Tasks leave the queue (claimed): the tally does not know, and errs high.
    store.claim([row[0] for row in store.queued_index(50)], "w1", 30.0, 2.0)
    results = admit(store, settings, items(30), 3.0, tally)
    # 80 + 30 > 100 by the tally: counted afresh (30 queued), so all 30 fit.
    assert store.counts == 2
    assert all(isinstance(r, tuple) for r in results)
    # Now 60 queued; 50 more pass the bound at 40 of them, whatever the tally held.
    results = admit(store, settings, items(50), 4.0, tally)
    assert sum(isinstance(r, tuple) for r in results) == 40
    assert all(isinstance(r, QueueFull) for r in results[40:])
    assert store.count_tasks(TaskStatus.QUEUED) == 100


def test_a_tenants_queued_bytes_are_checked_afresh_before_a_refusal(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db", tmp_path / "blobs")
    settings = Settings(data_dir=tmp_path, tenant_queued_bytes=1000)
    tally = Tally(fresh_s=3600)
    first = admit(store, settings, items(4, size=200), 1.0, tally)  # about 4 x 210 bytes
    assert all(isinstance(r, tuple) for r in first)
    store.claim([r[0].id for r in first if isinstance(r, tuple)], "w1", 30.0, 2.0)

    # By the tally the tenant holds about 840 bytes; in the Store, none: the recount admits it.
    assert all(isinstance(r, tuple) for r in admit(store, settings, items(4, size=200), 3.0, tally))
    refused = admit(store, settings, items(1, size=200), 4.0, tally)
    assert isinstance(refused[0], TenantQuotaExceeded)
