"""The feed of new tasks: (id, priority, created_at, tenant) of tasks created since its one reader, the
dispatcher, last looked. The Store actor fills it from its own submits, a PostgreSQL ``Listener``
from NOTIFY. It is bounded: what it drops (unread that long, or lost with a restart), the
dispatcher's periodic reconcile with the Store finds."""

from __future__ import annotations

import asyncio

from runtime.store.base import Queued as Entry


class Feed:
    def __init__(self, capacity: int) -> None:
        self._entries: list[Entry] = []
        self._added = asyncio.Event()
        self._capacity = capacity

    def add(self, entries: list[Entry]) -> None:
        if entries:
            self._entries.extend(entries)
            del self._entries[:-self._capacity]
            self._added.set()

    async def take(self, timeout_s: float) -> list[Entry]:
        """Everything added since the last take, waiting up to ``timeout_s`` for something."""
        if not self._entries:
            self._added.clear()
            try:
                await asyncio.wait_for(self._added.wait(), timeout_s)
            except TimeoutError:
                return []
        taken, self._entries = self._entries, []
        return taken
