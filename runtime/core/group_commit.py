"""Group commit: the calls made during one event-loop turn leave as one remote call.

Concurrent submits each await their own result, but reach the Store together, in one actor call and
one SQLite transaction. Under load this removes most of the per-call cost (an actor call costs each
side about as much CPU as the transaction itself); a lone call waits one loop turn more.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class GroupCommit(Generic[Item, Result]):
    """Batches ``await commit(item)`` calls into ``send(items)``, one call in flight at a time.

    ``send`` returns one result per item, in order; a result that is an exception is raised to that
    item's caller alone. If ``send`` itself fails, every caller of that batch gets the error.
    """

    def __init__(self, send: Callable[[list[Item]], Awaitable[list[Result | BaseException]]],
                 weigh: Callable[[Item], int] = lambda _: 1, max_weight: int | None = None) -> None:
        """``weigh`` and ``max_weight`` bound one batch (say, its bytes): a batch takes items while
        their weight fits, and always at least one."""
        self._send = send
        self._weigh = weigh
        self._max_weight = max_weight
        self._pending: list[tuple[Item, asyncio.Future[Result]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def __call__(self, item: Item) -> Result:
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        while self._pending:
            await asyncio.sleep(0)  # let the calls already waiting on this loop join the batch
            batch = self._take()
            try:
                results = await self._send([item for item, _ in batch])
            except Exception as e:  # noqa: BLE001 - every caller of the batch gets the error
                for _, future in batch:
                    if not future.done():
                        future.set_exception(e)
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if future.done():
                    continue
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)

    def _take(self) -> list[tuple[Item, asyncio.Future[Result]]]:
        """The next batch, off the front of the pending calls."""
        if self._max_weight is None:
            batch, self._pending = self._pending, []
            return batch
        weight, n = 0, 0
        for item, _ in self._pending:
            weight += self._weigh(item)
            if n and weight > self._max_weight:
                break
            n += 1
        batch, self._pending = self._pending[:n], self._pending[n:]
        return batch
