"""One runtime owns a SQLite Store: its Store actor holds a lock on the file for as long as it lives.

A second runtime started on the same file (a second ``raysquad up`` in the same folder, on a new
local cluster, passes the namespace check) would run ``recover`` and make the first runtime's
running tasks queued again, so their steps in flight would run twice. The Store actor takes an
``flock`` on ``<database>.lock`` as it opens; the kernel drops it when the process ends however it
ends, so a crashed runtime never leaves a stale lock behind. A restarted Store actor, or a runtime
started again at once after a crash, waits a moment for the dying process to let go.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path

from runtime.errors import StoreInUse

#: How long a Store waits for the lock of a process that may be dying.
OWNER_WAIT_S = 30.0


class StoreLock:
    """An exclusive flock on ``<database>.lock``, held until ``release`` or the process ends."""

    def __init__(self, database: Path, wait_s: float = OWNER_WAIT_S) -> None:
        self.path = database.with_name(database.name + ".lock")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    holder = self._holder()
                    self.release()
                    raise StoreInUse(str(database), holder) from None
                time.sleep(0.1)
        os.ftruncate(self._fd, 0)
        os.write(self._fd, f"pid {os.getpid()} on {os.uname().nodename}\n".encode())

    def _holder(self) -> str:
        with contextlib.suppress(OSError):
            return self.path.read_text().strip()
        return ""

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor drops the flock
            self._fd = None
