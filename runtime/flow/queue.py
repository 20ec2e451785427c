"""Priority queues: the core (plain Python, unit-tested without Ray) and the mailbox actor.

Priority with aging: an item's effective priority is ``priority + aging_per_s * seconds waited``. Since
every item ages at the same rate, the order between two items never changes while they wait, so the
heap key ``aging_per_s * enqueued_at - priority`` is fixed at insert time. A task of priority ``p``
therefore waits behind a later arrival of priority ``q`` only if it arrived less than
``(q - p) / aging_per_s`` seconds earlier: that is the starvation bound.

A queue made with ``group_of`` (the dispatcher's, by tenant) shares each priority between groups:
the entry first in that order picks the priority served next, and the groups whose first entry has
that priority take turns, the one served longest ago first, each in its own order (``_FairHeap``).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from runtime.actors.handles import ActorHandle
from runtime.core import metrics
from runtime.core.errors import ActorUnavailable, QueueFull
from runtime.core.sizes import approx_size

log = logging.getLogger(__name__)


@dataclass(order=True)
class _Entry:
    """Ordered by key, then by age (the oldest first, as the Store orders its queued tasks), then
    by arrival."""

    key: float
    enqueued_at: float
    seq: int
    item_id: str = field(compare=False)
    priority: int = field(compare=False)
    item: Any = field(compare=False)
    size: int = field(compare=False, default=0)
    group: str = field(compare=False, default="")


class _Heap:
    """Entries in key order: one heap."""

    def __init__(self) -> None:
        self._heap: list[_Entry] = []

    def __len__(self) -> int:
        return len(self._heap)

    def __iter__(self) -> Iterator[_Entry]:
        return iter(self._heap)

    def push(self, entry: _Entry) -> None:
        heapq.heappush(self._heap, entry)

    def pop(self) -> _Entry:
        return heapq.heappop(self._heap)

    def first(self, keep: int) -> list[_Entry]:
        """Keep only the first ``keep`` entries in pop order; those."""
        self._heap = heapq.nsmallest(keep, self._heap)  # sorted, so a heap as it is
        return self._heap


class _FairHeap:
    """Entries in groups (tenants), each group a heap in key order. ``pop``: the entry first in
    key order over all groups names the priority served next; of the groups whose first entry has
    that priority, the one served longest ago (or never) gives its first entry. Aging still decides
    between priorities; within one, groups take turns, so a tenant's tasks never all wait behind
    every earlier task of another. A pop costs a few heap operations (O(log n)): the heaps of
    first entries are kept lazily (a stale one is skipped when it surfaces; they are rebuilt
    when stale ones pile up)."""

    def __init__(self) -> None:
        self._groups: dict[str, list[_Entry]] = {}
        self._heads: list[tuple[float, float, int, str]] = []  # (key, at, seq, group) of a first entry
        # priority -> (turn, key, at, seq, group) of the first entries of that priority
        self._levels: dict[int, list[tuple[int, float, float, int, str]]] = {}
        self._served: dict[str, int] = {}  # group -> the turn it was last served at
        self._turns = 0
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def __iter__(self) -> Iterator[_Entry]:
        return itertools.chain.from_iterable(self._groups.values())

    def push(self, entry: _Entry) -> None:
        heap = self._groups.setdefault(entry.group, [])
        heapq.heappush(heap, entry)
        self._size += 1
        if heap[0] is entry:
            self._announce(entry.group)

    def _announce(self, group: str) -> None:
        """Index the group's first entry: its place in key order, and its turn at its priority."""
        head = self._groups[group][0]
        heapq.heappush(self._heads, (head.key, head.enqueued_at, head.seq, group))
        heapq.heappush(self._levels.setdefault(head.priority, []),
                       (self._served.get(group, 0), head.key, head.enqueued_at, head.seq, group))
        if len(self._heads) > 4 * len(self._groups) + 64:
            self._reindex()

    def _reindex(self) -> None:
        self._heads, self._levels = [], {}
        for group, heap in self._groups.items():
            head = heap[0]
            self._heads.append((head.key, head.enqueued_at, head.seq, group))
            self._levels.setdefault(head.priority, []).append(
                (self._served.get(group, 0), head.key, head.enqueued_at, head.seq, group))
        heapq.heapify(self._heads)
        for level in self._levels.values():
            heapq.heapify(level)

    def _is_head(self, group: str, seq: int) -> bool:
        heap = self._groups.get(group)
        return heap is not None and heap[0].seq == seq

    def pop(self) -> _Entry:
        if not self._size:
            raise IndexError("pop from an empty queue")
        while not self._is_head(self._heads[0][3], self._heads[0][2]):
            heapq.heappop(self._heads)
        level = self._levels[self._groups[self._heads[0][3]][0].priority]
        while True:
            turn, _, _, seq, group = heapq.heappop(level)
            if self._is_head(group, seq) and turn == self._served.get(group, 0):
                break
        heap = self._groups[group]
        entry = heapq.heappop(heap)
        self._size -= 1
        self._turns += 1
        self._served[group] = self._turns
        if heap:
            self._announce(group)
        else:
            del self._groups[group]
            if len(self._served) > 2 * len(self._groups) + 1024:  # forget groups long gone
                self._served = {g: t for g, t in self._served.items() if g in self._groups}
        return entry

    def first(self, keep: int) -> list[_Entry]:
        """Keep only the first ``keep`` entries in pop order; those. The turns stay as they were."""
        served, turns = dict(self._served), self._turns
        kept = [self.pop() for _ in range(min(keep, self._size))]
        self._groups, self._size = {}, len(kept)
        self._served, self._turns = served, turns
        for entry in kept:
            heapq.heappush(self._groups.setdefault(entry.group, []), entry)
        self._reindex()
        return kept


@dataclass
class _InFlight:
    consumer: str
    entry: _Entry
    deadline: float


class PriorityQueue:
    """A bounded priority queue with aging, batch put/get, and optional acknowledgements.

    Items taken with a ``consumer`` are in flight until acked; ``requeue_consumer`` (the consumer
    died) or an expired visibility deadline puts them back, so no item is lost with its consumer.
    ``capacity`` bounds the items queued; ``capacity_bytes`` (if given) the bytes held, queued
    and in flight (each item's ``approx_size``).
    """

    def __init__(self, name: str, capacity: int, aging_per_s: float,
                 clock: Callable[[], float] = time.monotonic,
                 capacity_bytes: int | None = None,
                 group_of: Callable[[Any], str] | None = None) -> None:
        """``group_of``: an item's group (its tenant); the groups share each priority in turns."""
        self.name = name
        self.capacity = capacity
        self.capacity_bytes = capacity_bytes
        self.bytes = 0  # held: queued and in flight
        self.aging_per_s = aging_per_s
        self._clock = clock
        self._group_of = group_of
        self._heap: _Heap | _FairHeap = _Heap() if group_of is None else _FairHeap()
        self._ids: set[str] = set()
        self._in_flight: dict[str, _InFlight] = {}
        self._seq = itertools.count()
        self.max_item_bytes = 0
        self.total_put = 0

    def __len__(self) -> int:
        return len(self._heap)

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def put_batch(self, items: list[tuple[str, int, Any]], since: dict[str, float] | None = None,
                  force: bool = False) -> int:
        """Add (id, priority, item) triples, all or none; ids already held are skipped.

        ``since`` backdates items (by id) that have waited elsewhere, so they keep their age;
        ``force`` skips the bound, for items that were accepted before (recovery, requeues).
        """
        fresh, seen = [], set()
        for t in items:
            if t[0] not in seen and not self.holds(t[0]):
                seen.add(t[0])
                fresh.append(t)
        if not force and len(self._heap) + len(fresh) > self.capacity:
            raise QueueFull(self.name, self.capacity)
        sizes = [approx_size(item) for _, _, item in fresh]
        if (not force and self.capacity_bytes is not None and fresh
                and self.bytes + sum(sizes) > self.capacity_bytes):
            raise QueueFull(f"{self.name} (bytes)", self.capacity_bytes)
        now = self._clock()
        for (item_id, priority, item), size in zip(fresh, sizes, strict=True):
            at = min(now, (since or {}).get(item_id, now))
            group = self._group_of(item) if self._group_of is not None else ""
            self._push(_Entry(self.aging_per_s * at - priority, at, next(self._seq), item_id,
                              priority, item, size, group))
            self.bytes += size
            self.max_item_bytes = max(self.max_item_bytes, size)
        self.total_put += len(fresh)
        return len(fresh)

    def _push(self, entry: _Entry) -> None:
        self._heap.push(entry)
        self._ids.add(entry.item_id)

    def get_batch(self, max_items: int, consumer: str | None = None,
                  visibility_s: float = 300.0) -> list[tuple[str, Any]]:
        """Take up to ``max_items`` in priority order; with a consumer they stay in flight until acked."""
        out: list[tuple[str, Any]] = []
        now = self._clock()
        while len(self._heap) and len(out) < max_items:
            entry = self._heap.pop()
            self._ids.discard(entry.item_id)
            if consumer is not None:
                self._in_flight[entry.item_id] = _InFlight(consumer, entry, now + visibility_s)
            else:
                self.bytes -= entry.size
            out.append((entry.item_id, entry.item))
        return out

    def trim(self, keep: int) -> set[str]:
        """Drop all but the first ``keep`` queued items in the order; the ids dropped (for a queue
        that is a window on a larger store, which still holds them)."""
        if len(self._heap) <= keep:
            return set()
        held = sum(e.size for e in self._heap)
        kept = self._heap.first(keep)
        self.bytes -= held - sum(e.size for e in kept)
        dropped = self._ids - {e.item_id for e in kept}
        self._ids -= dropped
        return dropped

    def holds(self, item_id: str) -> bool:
        """Whether the item is queued or in flight."""
        return item_id in self._ids or item_id in self._in_flight

    def ack(self, item_ids: list[str]) -> None:
        for item_id in item_ids:
            done = self._in_flight.pop(item_id, None)
            if done is not None:
                self.bytes -= done.entry.size

    def consumers(self) -> set[str]:
        """The consumers that hold items in flight."""
        return {f.consumer for f in self._in_flight.values() if f.consumer is not None}

    def held_by(self, consumer: str) -> list[tuple[str, Any]]:
        """The (id, item) pairs in flight with ``consumer``."""
        return [(i, f.entry.item) for i, f in self._in_flight.items() if f.consumer == consumer]

    def requeue_consumer(self, consumer: str) -> int:
        """Put back every item in flight with ``consumer``, keeping its place in the order."""
        lost = [i for i, f in self._in_flight.items() if f.consumer == consumer]
        return self._restore(lost)

    def requeue_expired(self) -> int:
        now = self._clock()
        return self._restore([i for i, f in self._in_flight.items() if f.deadline < now])

    def _restore(self, item_ids: list[str]) -> int:
        for item_id in item_ids:
            self._push(self._in_flight.pop(item_id).entry)
        return len(item_ids)

    def stats(self) -> dict[str, Any]:
        oldest = min((e.enqueued_at for e in self._heap), default=None)
        return {
            "name": self.name,
            "depth": len(self._heap),
            "in_flight": len(self._in_flight),
            "capacity": self.capacity,
            "bytes": self.bytes,
            "total_put": self.total_put,
            "max_item_bytes": self.max_item_bytes,
            "oldest_wait_s": self._clock() - oldest if oldest is not None else 0.0,
        }


class AsyncQueue:
    """A PriorityQueue with blocking gets, for use inside an async actor."""

    def __init__(self, queue: PriorityQueue) -> None:
        self.queue = queue
        self._nonempty = asyncio.Event()

    def put_batch(self, items: list[tuple[str, int, Any]], since: dict[str, float] | None = None,
                  force: bool = False) -> int:
        added = self.queue.put_batch(items, since, force)
        if len(self.queue):
            self._nonempty.set()
        return added

    async def get_batch(self, max_items: int, timeout_s: float, consumer: str | None = None,
                        visibility_s: float = 300.0) -> list[tuple[str, Any]]:
        """Wait up to ``timeout_s`` for at least one item, then take up to ``max_items``."""
        deadline = time.monotonic() + timeout_s
        while not len(self.queue):
            self._nonempty.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            try:
                await asyncio.wait_for(self._nonempty.wait(), remaining)
            except TimeoutError:
                return []
        out = self.queue.get_batch(max_items, consumer, visibility_s)
        if len(self.queue):
            self._nonempty.set()
        return out

    def restored(self, count: int) -> int:
        if count:
            self._nonempty.set()
        return count


class QueueActor:
    """A named mailbox: batched put/get, blocking get with timeout, a bound, acks and redelivery."""

    def __init__(self, name: str, capacity: int, aging_per_s: float,
                 visibility_s: float = 300.0, capacity_bytes: int | None = None) -> None:
        self._q = AsyncQueue(PriorityQueue(name, capacity, aging_per_s,
                                           capacity_bytes=capacity_bytes))
        self._visibility_s = visibility_s
        self._waiting_consumers = 0
        # Consumers declared dead: a get they left pending must not take items for a ghost.
        self._lost: set[str] = set()
        self._changed = asyncio.Event()  # set whenever depth or in-flight may have moved

    def _touch(self) -> None:
        self._changed.set()

    async def put_batch(self, items: list[tuple[str, int, Any]]) -> int:
        self._touch()
        taken = self._q.put_batch(items)
        metrics.set_gauge("raysquad_queue_depth", len(self._q.queue), queue=self._q.queue.name)
        return taken

    async def get_batch(self, consumer: str, max_items: int, timeout_s: float) -> list[tuple[str, Any]]:
        self._q.restored(self._q.queue.requeue_expired())
        if consumer in self._lost:
            return []
        self._waiting_consumers += 1
        try:
            items = await self._q.get_batch(max_items, timeout_s, consumer, self._visibility_s)
        finally:
            self._waiting_consumers -= 1
        if consumer in self._lost:
            self._q.restored(self._q.queue.requeue_consumer(consumer))
            return []
        if items:
            self._touch()
            metrics.set_gauge("raysquad_queue_depth", len(self._q.queue), queue=self._q.queue.name)
        return items

    async def ack(self, item_ids: list[str]) -> None:
        self._touch()
        self._q.queue.ack(item_ids)

    async def holds(self, item_id: str) -> bool:
        return self._q.queue.holds(item_id)

    async def requeue_consumer(self, consumer: str) -> list[tuple[str, Any]]:
        """The consumer is gone: its items in flight go back, and it gets nothing more. Returns
        them (id, item), so its pool can tell the tasks they are delivered again."""
        self._lost.add(consumer)
        self._touch()
        held = self._q.queue.held_by(consumer)
        self._q.restored(self._q.queue.requeue_consumer(consumer))
        return held

    async def requeue_all_but(self, live: list[str]) -> list[tuple[str, Any]]:
        """Every consumer but ``live`` is gone (their pool restarted): their items go back."""
        consumers = {c for c in self._q.queue.consumers() if c not in live}
        return [item for c in consumers for item in await self.requeue_consumer(c)]

    async def stats(self) -> dict[str, Any]:
        return {**self._q.queue.stats(), "waiting_consumers": self._waiting_consumers}

    async def watch(self, seen: tuple[int, int] | None, timeout_s: float) -> dict[str, Any]:
        """``stats`` once its (depth, in_flight) differs from ``seen``, or after ``timeout_s``: a
        pool sizes itself on changes instead of asking ten times a second."""
        deadline = time.monotonic() + timeout_s
        while True:
            self._changed.clear()
            stats = await self.stats()
            if (stats["depth"], stats["in_flight"]) != seen:
                return stats
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return stats
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)


class MailboxService(Protocol):
    """What workers, agent replicas and pools call on a mailbox."""

    async def put_batch(self, items: list[tuple[str, int, Any]]) -> int: ...
    async def get_batch(self, consumer: str, max_items: int,
                        timeout_s: float) -> list[tuple[str, Any]]: ...
    async def ack(self, item_ids: list[str]) -> None: ...
    async def holds(self, item_id: str) -> bool: ...
    async def requeue_consumer(self, consumer: str) -> list[tuple[str, Any]]: ...
    async def requeue_all_but(self, live: list[str]) -> list[tuple[str, Any]]: ...
    async def stats(self) -> dict[str, Any]: ...
    async def watch(self, seen: tuple[int, int] | None, timeout_s: float) -> dict[str, Any]: ...


class MailboxHandle(ActorHandle):
    """A mailbox actor, typed. It restarts empty: senders notice and send again (``holds``)."""

    async def put_batch(self, items: list[tuple[str, int, Any]]) -> int:
        # Repeatable: an item put twice under its id is held once.
        return await self.via(QueueActor.put_batch)(items)

    async def get_batch(self, consumer: str, max_items: int,
                        timeout_s: float) -> list[tuple[str, Any]]:
        # Repeatable: what a lost reply took stays in flight for this consumer until it is requeued.
        return await self.via(QueueActor.get_batch)(consumer, max_items, timeout_s)

    async def ack(self, item_ids: list[str]) -> None:
        await self.via(QueueActor.ack)(item_ids)

    async def holds(self, item_id: str) -> bool:
        return await self.via(QueueActor.holds)(item_id)

    async def requeue_consumer(self, consumer: str) -> list[tuple[str, Any]]:
        return await self.via(QueueActor.requeue_consumer)(consumer)

    async def requeue_all_but(self, live: list[str]) -> list[tuple[str, Any]]:
        return await self.via(QueueActor.requeue_all_but)(live)

    async def stats(self, deadline_s: float | None = None) -> dict[str, Any]:
        return await self.via(QueueActor.stats, deadline_s=deadline_s)()

    async def watch(self, seen: tuple[int, int] | None, timeout_s: float) -> dict[str, Any]:
        return await self.via(QueueActor.watch)(seen, timeout_s)


#: How long an agent call waits for its reply before checking that its mailbox still holds the message.
MAILBOX_CHECK_S = 10.0


class Replies:
    """Agent calls waiting for their replies, by message id: a workflow worker's agent steps, or an
    agent replica's delegations. The callee sends its reply to ``deliver`` (through the caller's
    actor handle, the message's ``reply_to``)."""

    def __init__(self) -> None:
        self._waiting: dict[str, asyncio.Future[tuple[bool, Any]]] = {}

    def __len__(self) -> int:
        return len(self._waiting)

    async def ask(self, mailbox: MailboxService, msg: Any) -> Any:
        """Put ``msg`` (an AgentMessage) in ``mailbox`` and wait for its reply; raise what the agent
        raised. A message lost with a mailbox that restarted is sent again."""
        reply: asyncio.Future[tuple[bool, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[msg.id] = reply
        try:
            await mailbox.put_batch([(msg.id, msg.priority, msg)])
            while True:
                try:
                    ok, value = await asyncio.wait_for(asyncio.shield(reply), MAILBOX_CHECK_S)
                    break
                except TimeoutError:
                    await self._resend_if_lost(mailbox, msg, reply)
        finally:
            self._waiting.pop(msg.id, None)
        if not ok:
            raise value
        return value

    async def _resend_if_lost(self, mailbox: MailboxService, msg: Any,
                              reply: asyncio.Future[tuple[bool, Any]]) -> None:
        try:
            held = await mailbox.holds(msg.id)
            if not held and not reply.done():
                log.warning("task %s step %s: message lost with its mailbox; sending it again",
                            msg.task_id, msg.step_key)
                await mailbox.put_batch([(msg.id, msg.priority, msg)])
        except ActorUnavailable:
            log.warning("task %s step %s: mailbox unreachable; will check again", msg.task_id,
                        msg.step_key)

    def deliver(self, message_id: str, ok: bool, value: Any) -> bool:
        """A reply; False if nobody waits for it any more (timed out, task gone)."""
        reply = self._waiting.get(message_id)
        if reply is None or reply.done():
            return False
        reply.set_result((ok, value))
        return True
