"""LISTEN for a PostgreSQL Store's notifications, so that a write in any process wakes its readers.

The Store's triggers NOTIFY each new event (payload: its task id) and each new task (payload: id,
priority, created_at) on channels named after the schema (``postgres.channels``). One ``Listener``
per process and event loop holds one LISTEN connection and fans the notifications out: to readers
of a task's events (``wait_events``) and to the dispatcher's feed of new tasks (``take_submitted``).
If the connection drops, it reconnects and wakes every reader, which reads again; the dispatcher's
periodic reconcile finds the new tasks a gap dropped. A connection that stops answering without
dropping (a half-open TCP connection, a frozen server) is found by TCP keepalives and by a query
every ``PROBE_S`` of silence, and replaced; PostgreSQL ends a listener that stops reading the same
way, before its notification queue fills.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from runtime.core.models import Event
from runtime.store.base import Queued
from runtime.store.feed import Feed
from runtime.store.postgres import channels

log = logging.getLogger(__name__)

#: How long a first reader waits for the LISTEN connection before it reads anyway.
CONNECT_WAIT_S = 5.0
#: After this long without a notification, the connection is probed with a query (which must
#: answer within PROBE_TIMEOUT_S, or the connection is replaced).
PROBE_S = 30.0
PROBE_TIMEOUT_S = 10.0
#: libpq TCP keepalives for the LISTEN connection: a peer silent for about 10 + 3 x 5 s is dead.
KEEPALIVES = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5,
              "keepalives_count": 3}
#: How long ``close`` waits for the listening task to end once cancelled.
CLOSE_WAIT_S = 5.0


class Listener:
    """One LISTEN connection, started on first use on the running event loop."""

    def __init__(self, conninfo: str, schema: str, feed_capacity: int = 100_000) -> None:
        self._conninfo = conninfo
        self._events_channel, self._tasks_channel = channels(schema)
        self._waiters: dict[str, set[asyncio.Event]] = defaultdict(set)
        self._feed = Feed(feed_capacity)
        self._connected = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None

    async def ready(self) -> None:
        """Start listening if not yet; wait (a little) until the connection listens."""
        if self._runner is None or self._runner.done():
            self._runner = asyncio.get_running_loop().create_task(self._run())
        if not self._connected.is_set():
            try:
                await asyncio.wait_for(self._connected.wait(), CONNECT_WAIT_S)
            except TimeoutError:
                log.warning("no LISTEN connection yet; readers fall back to their timeouts")

    async def close(self) -> None:
        """Stop listening (on the loop it runs on); waits ``CLOSE_WAIT_S`` at most for the
        connection to go."""
        runner, self._runner = self._runner, None
        if runner is not None:
            runner.cancel()
            done, _ = await asyncio.wait({runner}, timeout=CLOSE_WAIT_S)
            if not done:
                log.warning("the LISTEN connection did not close in %.0f s; left to end", CLOSE_WAIT_S)

    async def _run(self) -> None:
        delay = 0.1
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(
                    make_conninfo(self._conninfo, connect_timeout=10, **KEEPALIVES),
                    autocommit=True)
                try:
                    for channel in (self._events_channel, self._tasks_channel):
                        await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
                    self._connected.set()
                    delay = 0.1
                    self._wake_all()  # what was written while nobody listened is read again
                    while True:
                        async for note in conn.notifies(timeout=PROBE_S):
                            self._dispatch(note.channel, note.payload)
                        # Silence: the server must still answer, or the connection is replaced.
                        await asyncio.wait_for(conn.execute("SELECT 1"), PROBE_TIMEOUT_S)
                finally:
                    # Closed without a word to the server (no rollback: nothing to roll back,
                    # and a silent server would never answer one).
                    await conn.close()
            except (psycopg.Error, TimeoutError) as e:
                log.warning("LISTEN connection lost (%s); reconnecting in %.1f s",
                            type(e).__name__ if isinstance(e, TimeoutError) else e, delay)
            self._connected.clear()
            self._wake_all()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    def _dispatch(self, channel: str, payload: str) -> None:
        if channel == self._events_channel:
            for waiter in self._waiters.get(payload, ()):
                waiter.set()
        elif channel == self._tasks_channel:
            # "<id> <priority> <created_at> <tenant>" (a tenant may hold spaces; ids do not)
            task_id, priority, created_at, *tenant = payload.split(" ", 3)
            self._feed.add([(task_id, int(priority), float(created_at), "".join(tenant))])

    def _wake_all(self) -> None:
        for waiters in self._waiters.values():
            for waiter in waiters:
                waiter.set()

    @contextmanager
    def _watching(self, task_id: str) -> Iterator[asyncio.Event]:
        waiter = asyncio.Event()
        self._waiters[task_id].add(waiter)
        try:
            yield waiter
        finally:
            waiters = self._waiters.get(task_id)
            if waiters is not None:
                waiters.discard(waiter)
                if not waiters:
                    del self._waiters[task_id]

    async def wait_events(self, task_id: str, read: Callable[[], Awaitable[list[Event]]],
                          timeout_s: float) -> list[Event]:
        """``read()`` the task's new events; if there are none, wait up to ``timeout_s`` for a
        NOTIFY of one and read again. The reader is registered before the first read, so an event
        committed between the read and the wait still wakes it."""
        await self.ready()
        with self._watching(task_id) as woken:
            events = await read()
            if events or timeout_s <= 0:
                return events
            try:
                await asyncio.wait_for(woken.wait(), timeout_s)
            except TimeoutError:
                return []
        return await read()

    async def take_submitted(self, timeout_s: float) -> list[Queued]:
        """The tasks created (by any process) since the last call, waiting up to ``timeout_s``."""
        await self.ready()
        return await self._feed.take(timeout_s)
