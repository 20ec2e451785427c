"""A restarted actor's rebuild, tried until it succeeds, and what it waits for, for ``/readyz``.

An actor that Ray restarts rebuilds what it holds from the Store. If the Store is out at that
moment (PostgreSQL restarting, the Store actor itself restarting past a handle's deadline), one
failed try must not leave the actor alive but idle for good: ``Rebuild`` tries again with backoff
until it succeeds, and says meanwhile what it is waiting for, so the API answers 503 instead of
accepting work nothing will run.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

OK = "ok"


class Rebuild:
    """Run ``attempt`` until it returns, backing off between failures."""

    def __init__(self, what: str, attempt: Callable[[], Awaitable[object]], *,
                 first_backoff_s: float = 0.5, max_backoff_s: float = 10.0) -> None:
        self.what = what
        self._attempt = attempt
        self._first_backoff_s = first_backoff_s
        self._max_backoff_s = max_backoff_s
        self._since = time.monotonic()
        self._failures = 0
        self._last_error = ""
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Begin on the running loop (an async actor's constructor runs on it)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self.run())

    async def run(self) -> None:
        backoff = self._first_backoff_s
        while True:
            try:
                await self._attempt()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - whatever failed, the rebuild must go on
                self._failures += 1
                # The class only: a message may name a database host, and /readyz is public.
                self._last_error = type(e).__name__
                log.warning("%s failed (try %d), trying again in %.1fs: %s", self.what,
                            self._failures, backoff, e)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self._max_backoff_s)
            else:
                if self._failures:
                    log.warning("%s succeeded after %d failed tries", self.what, self._failures)
                return

    @property
    def done(self) -> bool:
        return self._task is not None and self._task.done() and not self._task.cancelled()

    def health(self) -> str:
        """``ok`` once rebuilt; else what it is waiting for."""
        if self.done:
            return OK
        waited = time.monotonic() - self._since
        if not self._failures:
            return f"{self.what}: in progress ({waited:.0f}s)"
        return (f"{self.what}: failing for {waited:.0f}s ({self._failures} tries, last "
                f"{self._last_error}); retrying")


def loops_health(loops: dict[str, asyncio.Task[None] | None]) -> str:
    """``ok`` while every named background loop runs; else which one ended and how."""
    for name, task in loops.items():
        if task is None:
            return f"{name}: not started"
        if task.done():
            error = None if task.cancelled() else task.exception()
            return f"{name}: stopped ({type(error).__name__ if error else 'ended'})"
    return OK


class Rounds:
    """The health of a loop that survives its failed rounds: failing since when, and how."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._failing_since: float | None = None
        self._failures = 0
        self._last_error = ""

    def failed(self, error: BaseException) -> None:
        if self._failing_since is None:
            self._failing_since = time.monotonic()
        self._failures += 1
        self._last_error = type(error).__name__

    def succeeded(self) -> None:
        self._failing_since, self._failures = None, 0

    def health(self) -> str:
        if self._failing_since is None:
            return OK
        return (f"{self.what}: failing for {time.monotonic() - self._failing_since:.0f}s "
                f"({self._failures} rounds, last {self._last_error}); retrying")
