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


#: How long a pool waits for a member to answer a question about its load.
PROBE_S = 1.0


async def probe(members: list[Member], ask: Callable[[Member], Awaitable[Any]]) -> list[Any]:
    """``ask`` each member, within PROBE_S each; a failure comes back as its exception. A member
    that answers once is marked ``answered``: one that never has is still pending (no node has had
    room for it yet), which makes it the first to go when the pool shrinks."""
    results = await asyncio.gather(*(asyncio.wait_for(ask(m), PROBE_S) for m in members),
                                   return_exceptions=True)
    for member, result in zip(members, results, strict=True):
        if not isinstance(result, BaseException):
            member.info["answered"] = True
    return results


async def retire(members: list[Member], answers: list[Any], surplus: int,
                 idle: Callable[[Any], bool]) -> list[Member]:
    """Stop up to ``surplus`` members: pending ones first (killed: they hold nothing), then those
    whose answer says ``idle`` (asked to stop: their loop ends and the pool's exit hook frees the
    process). The pool shrinks from its newest end, as a stack: an idle member goes only when every
    member newer than it is going too. The pool grew onto the newest capacity last, so a node an
    autoscaler added for it empties and can go away, rather than keeping one busy member while an
    old node's member is stopped. Returns the members retired."""
    retired: list[Member] = []
    newest_first = list(zip(members, answers, strict=True))[::-1]
    never_answered = [m for m, a in newest_first
                      if isinstance(a, BaseException) and not m.info.get("answered")]
    idle_now = []
    for member, answer in newest_first:
        if member in never_answered:
            continue
        if isinstance(answer, BaseException) or not idle(answer):
            break  # a newer member is busy (or did not answer): the older ones wait for it
        idle_now.append(member)
    for member in never_answered[:surplus]:
        member.stopping = True
        await member.handle.kill()
        retired.append(member)
    for member in idle_now[:surplus - len(retired)]:
        member.stopping = True
        await member.handle.stop()
        retired.append(member)
    return retired
