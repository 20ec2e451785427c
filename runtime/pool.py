"""What the agent pools and the workflow-worker pool share: actors that run a loop, watched."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


@dataclass
class Member:
    """One actor of a pool, running its ``run`` loop."""

    id: str
    handle: Any
    watcher: asyncio.Task[None] | None = None
    stopping: bool = False
    info: dict[str, Any] = field(default_factory=dict)


class Members:
    """The live actors of a pool. When a member's loop ends for any reason, ``on_exit`` is awaited."""

    def __init__(self, on_exit: Callable[[Member, BaseException | None], Awaitable[None]]) -> None:
        self.live: dict[str, Member] = {}
        self._on_exit = on_exit

    def __len__(self) -> int:
        return len(self.live)

    def add(self, member: Member, loop_call: Awaitable[Any]) -> None:
        self.live[member.id] = member
        member.watcher = asyncio.create_task(self._watch(member, loop_call))

    async def _watch(self, member: Member, loop_call: Awaitable[Any]) -> None:
        error: BaseException | None = None
        try:
            await loop_call
        except asyncio.CancelledError:
            raise
        except BaseException as e:  # noqa: BLE001 - an actor death arrives as any of several errors
            error = e
        self.live.pop(member.id, None)
        if error is not None and not member.stopping:
            log.warning("pool member %s died: %s", member.id, type(error).__name__)
        try:
            await self._on_exit(member, error)
        except Exception:  # noqa: BLE001 - keep supervising whatever the clean-up hit
            log.exception("clean-up after pool member %s failed", member.id)
