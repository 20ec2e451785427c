"""Gates: limits on shared resources that hold across the whole cluster.

A gate guards one resource key (``openai:gpt-4o``, ``api:search``, ``engine:smollm2``,
``http:example.com``). One ``GateKeeper`` actor holds every gate, so a limit is one number for the
cluster, not one per worker. A caller asks for passage (``acquire``), does its work, and releases;
engines and tools do this themselves (``GateClient.passage``), so a workflow author writes nothing.

A gate has up to three limits (``GateLimits``): requests and tokens per ``interval_s``, and requests
in flight. The per-interval limits are sliding windows that count a request from its grant until
``interval_s`` after the upstream has surely received it: after the caller reports ``reached`` (the
upstream's first response byte, or the call itself for an in-process engine), or else after its
release. A request reaches the upstream between its grant and that report, so any two requests an
upstream sees within ``interval_s`` of each other were both counted at the later one's grant: the
upstream never sees more than the limit in any window of that length, whatever the delays between
grant and arrival (a token bucket would allow twice the limit in one window: a full bucket plus its
refill). The price is the time from grant to report, per window: throughput is
``limit / (interval_s + that time)``. Tokens are counted until ``interval_s`` after the release,
with the tokens really used.

Who goes first when many wait: strict priority, with aging so that low priority is not starved, and
weighted fair share between tenants within the highest priority level present. A waiter's level is
``priority + floor(aging * waited)``, capped at the highest priority among the waiters (aging lifts a
waiter up to the top level, never past it, so an old backlog cannot outrank a fair share). Among the
tenants whose best waiter is at the top level, the one with the least virtual time goes next; a grant
adds ``1 / weight`` to its tenant's virtual time, and a tenant that starts waiting again starts at the
virtual time of the others, so it cannot bank credit while idle. Within a tenant, higher effective
priority (``priority + aging * waited``) first, then arrival order.

An upstream 429 (``penalize``) closes the gate for its Retry-After (or 1, 2, 4... seconds), halves
the gate's limits, and lets them grow back linearly to the configured values over ten intervals.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import math
import time
from collections import Counter, deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from runtime.actors import names
from runtime.actors.handles import ActorHandle
from runtime.core import metrics
from runtime.core.config import GateLimits, Settings
from runtime.core.errors import ActorUnavailable, GateRequestTooLarge, GateTimeout

log = logging.getLogger(__name__)

ACTOR_NAME = names.GATES
KEYS_TTL_S = 1.0  # how long a client trusts its list of gated keys
RECHECK_S = 1.0  # a waiting gate re-evaluates at least this often (aging moves levels)
MIN_FACTOR = 0.1  # a throttled gate never drops below this fraction of its limits
RECOVER_INTERVALS = 10  # a throttled gate is back to full limits after this many intervals


@dataclass(eq=False)
class Waiter:
    seq: int
    tenant: str
    priority: int
    tokens: int
    enqueued_at: float
    future: asyncio.Future[str] | None = None
    cancelled: bool = False


@dataclass
class Holding:
    tenant: str
    tokens: int
    granted_at: float
    reached: bool = False


@dataclass
class Gate:
    """One key's limits and state. Pure: the caller passes the clock, so it is unit-tested alone."""

    key: str
    limits: GateLimits
    aging_per_s: float = 0.0
    weights: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.held: dict[str, Holding] = {}
        self.unreached = 0  # held requests the upstream may not have seen yet
        self.reached_at: deque[float] = deque()  # window expiry of each reached request, in order
        self.spent: deque[tuple[float, int]] = deque()  # (expires_at, tokens) of released requests
        self.held_tokens = 0
        self.spent_tokens = 0
        self.queues: dict[str, list[tuple[float, int, Waiter]]] = {}
        self.priorities: Counter[int] = Counter()
        self.vtime: dict[str, float] = {}
        self.granted: Counter[str] = Counter()
        self.factor_at = 1.0
        self.penalized_at = -math.inf
        self.blocked_until = -math.inf
        self.strikes = 0
        self._seq = itertools.count()
        self._grants = itertools.count(1)

    # -- waiting ----------------------------------------------------------------------------------

    def enqueue(self, tenant: str, priority: int, tokens: int, now: float) -> Waiter:
        if self.limits.tokens is not None and tokens > self.limits.tokens:
            raise GateRequestTooLarge(self.key, tokens, self.limits.tokens)
        waiter = Waiter(next(self._seq), tenant, priority, tokens, now)
        queue = self.queues.setdefault(tenant, [])
        if not self._live(tenant):
            active = [self.vtime.get(t, 0.0) for t in self.queues if t != tenant and self._live(t)]
            floor = min(active) if active else max(self.vtime.values(), default=0.0)
            self.vtime[tenant] = max(self.vtime.get(tenant, 0.0), floor)
        heapq.heappush(queue, (self.aging_per_s * now - priority, waiter.seq, waiter))
        self.priorities[priority] += 1
        return waiter

    def cancel(self, waiter: Waiter) -> None:
        """The waiter gave up; it is dropped when it reaches the top of its queue."""
        if not waiter.cancelled:
            waiter.cancelled = True
            self._forget_priority(waiter.priority)

    def waiting(self) -> int:
        return sum(self.priorities.values())

    def _forget_priority(self, priority: int) -> None:
        self.priorities[priority] -= 1
        if self.priorities[priority] <= 0:
            del self.priorities[priority]

    def _top(self, tenant: str) -> Waiter | None:
        queue = self.queues.get(tenant)
        while queue and queue[0][2].cancelled:
            heapq.heappop(queue)
        return queue[0][2] if queue else None

    def _live(self, tenant: str) -> bool:
        return self._top(tenant) is not None

    def level(self, waiter: Waiter, now: float) -> int:
        aged = waiter.priority + math.floor(self.aging_per_s * (now - waiter.enqueued_at))
        return min(max(self.priorities, default=waiter.priority), aged)

    def select(self, now: float) -> Waiter | None:
        """The waiter that goes next: top priority level, then least virtual time, then arrival."""
        tops = [w for t in list(self.queues) if (w := self._top(t)) is not None]
        if not tops:
            return None
        levels = {w.seq: self.level(w, now) for w in tops}
        best = max(levels.values())
        return min((w for w in tops if levels[w.seq] == best),
                   key=lambda w: (self.vtime.get(w.tenant, 0.0), w.seq))

    # -- granting ---------------------------------------------------------------------------------

    def factor(self, now: float) -> float:
        recover_s = RECOVER_INTERVALS * self.limits.interval_s
        f = self.factor_at + (1 - self.factor_at) * (now - self.penalized_at) / recover_s
        return min(1.0, f)

    def _effective(self, limit: int | None, now: float) -> int | None:
        return None if limit is None else max(1, math.floor(limit * self.factor(now)))

    def expire(self, now: float) -> None:
        while self.reached_at and self.reached_at[0] <= now:
            self.reached_at.popleft()
        while self.spent and self.spent[0][0] <= now:
            self.spent_tokens -= self.spent.popleft()[1]
        for grant_id, holding in list(self.held.items()):
            if now - holding.granted_at >= self.limits.max_hold_s:
                log.warning("gate %s: grant %s not released in %.0fs; taking it back",
                            self.key, grant_id, self.limits.max_hold_s)
                self.release(grant_id, now)

    def wait_s(self, waiter: Waiter, now: float) -> float:
        """0 if ``waiter`` may pass now, else how long until it might (inf: only a release helps)."""
        self.expire(now)
        waits = [self.blocked_until - now]
        reclaim = min((h.granted_at + self.limits.max_hold_s - now for h in self.held.values()),
                      default=math.inf)
        concurrency = self._effective(self.limits.concurrency, now)
        if concurrency is not None and len(self.held) >= concurrency:
            waits.append(reclaim)
        requests = self._effective(self.limits.requests, now)
        in_window = self.unreached + len(self.reached_at)
        if requests is not None and in_window >= requests:
            need = in_window - requests + 1  # entries that must expire
            waits.append(self.reached_at[need - 1] - now if need <= len(self.reached_at) else reclaim)
        tokens = self._effective(self.limits.tokens, now)
        if tokens is not None and waiter.tokens > 0:
            excess = self.held_tokens + self.spent_tokens + waiter.tokens - tokens
            if excess > 0:
                waits.append(self._time_to_free(excess, now, reclaim))
        return max(0.0, max(waits))

    def _time_to_free(self, excess: int, now: float, otherwise: float) -> float:
        freed = 0
        for expires_at, n in self.spent:
            freed += n
            if freed >= excess:
                return expires_at - now
        return otherwise

    def grant(self, waiter: Waiter, now: float) -> str:
        queue = self.queues[waiter.tenant]
        assert queue[0][2] is waiter, "only the selected waiter is granted"
        heapq.heappop(queue)
        self._forget_priority(waiter.priority)
        grant_id = f"{self.key}|{next(self._grants)}"
        self.held[grant_id] = Holding(waiter.tenant, waiter.tokens, now)
        self.unreached += 1
        self.held_tokens += waiter.tokens
        self.vtime[waiter.tenant] = self.vtime.get(waiter.tenant, 0.0) + 1 / self._weight(waiter.tenant)
        self.granted[waiter.tenant] += 1
        return grant_id

    def _weight(self, tenant: str) -> float:
        return max(1e-6, self.weights.get(tenant, 1.0))

    def reach(self, grant_id: str, now: float) -> bool:
        """The upstream has the request: it counts against the request window until ``interval_s``
        from now (it still holds its place in the concurrency limit until released)."""
        holding = self.held.get(grant_id)
        if holding is None or holding.reached:
            return False
        holding.reached = True
        self.unreached -= 1
        self.reached_at.append(now + self.limits.interval_s)
        return True

    def release(self, grant_id: str, now: float, tokens_used: int | None = None) -> bool:
        """End a holding; its tokens (those really used) stay in the window for ``interval_s``."""
        self.reach(grant_id, now)
        holding = self.held.pop(grant_id, None)
        if holding is None:
            return False
        self.held_tokens -= holding.tokens
        tokens = holding.tokens if tokens_used is None else max(0, tokens_used)
        self.spent.append((now + self.limits.interval_s, tokens))
        self.spent_tokens += tokens
        return True

    def penalize(self, now: float, retry_after_s: float | None) -> float:
        """The upstream said 429: close for a while and halve the limits. Returns the pause."""
        current = self.factor(now)
        self.strikes = 1 if current >= 1.0 else self.strikes + 1
        pause = retry_after_s if retry_after_s is not None else min(60.0, 2.0 ** (self.strikes - 1))
        self.blocked_until = max(self.blocked_until, now + pause)
        self.factor_at = max(MIN_FACTOR, current / 2)
        self.penalized_at = now
        return pause

    def snapshot(self, now: float) -> dict[str, Any]:
        self.expire(now)
        return {
            "key": self.key, "limits": self.limits.model_dump(), "factor": round(self.factor(now), 3),
            "blocked_for_s": round(max(0.0, self.blocked_until - now), 3), "held": len(self.held),
            "in_window": self.unreached + len(self.reached_at),
            "tokens_in_window": self.held_tokens + self.spent_tokens,
            "waiting": self.waiting(), "granted": dict(self.granted),
        }


class GateKeeper:
    """The actor that holds every gate. Limits start from Settings and can be changed at run time."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.gates: dict[str, Gate] = {}
        self._wake: dict[str, asyncio.Event] = {}
        self._pumps: dict[str, asyncio.Task[None]] = {}
        for key, limits in settings.gates.items():
            self._set(key, limits)

    def _set(self, key: str, limits: GateLimits) -> None:
        gate = self.gates.get(key)
        if gate is None:
            self.gates[key] = Gate(key, limits, self.settings.gate_aging_per_s,
                                   dict(self.settings.tenant_weights))
            self._wake[key] = asyncio.Event()
        else:
            gate.limits = limits
            self._wake[key].set()

    async def keys(self) -> list[str]:
        return sorted(self.gates)

    async def configure(self, key: str, limits: GateLimits | None) -> None:
        """Set a gate's limits now (``None`` removes the gate and lets its waiters through)."""
        if limits is not None:
            self._set(key, limits)
            return
        gate = self.gates.pop(key, None)
        if gate is None:
            return
        pump = self._pumps.pop(key, None)
        if pump is not None:
            pump.cancel()
        self._wake.pop(key, None)
        for queue in gate.queues.values():
            for _, _, waiter in queue:
                if waiter.future is not None and not waiter.future.done():
                    waiter.future.set_result("")

    async def acquire(self, key: str, tenant: str = "default", priority: int = 0, tokens: int = 0,
                      timeout_s: float | None = None) -> str:
        """Wait for passage; returns a grant id to release ("" if ``key`` has no gate)."""
        gate = self.gates.get(key)
        if gate is None:
            return ""
        arrived = time.monotonic()
        waiter = gate.enqueue(tenant, priority, tokens, arrived)
        waiter.future = asyncio.get_running_loop().create_future()
        self._wake[key].set()
        if key not in self._pumps or self._pumps[key].done():
            self._pumps[key] = asyncio.create_task(self._pump(key))
        try:
            grant: str = await asyncio.wait_for(asyncio.shield(waiter.future), timeout_s)
            waited = time.monotonic() - arrived
            metrics.inc("raysquad_gate_grants", key=key)
            metrics.observe("raysquad_gate_wait_seconds", waited, key=key)
            if waited > 0.001:
                metrics.inc("raysquad_gate_waits", key=key)
            return grant
        except (TimeoutError, asyncio.CancelledError) as e:
            self._give_up(gate, waiter)
            if isinstance(e, TimeoutError):
                raise GateTimeout(key, timeout_s or 0) from None
            raise

    def _give_up(self, gate: Gate, waiter: Waiter) -> None:
        assert waiter.future is not None
        future = waiter.future
        if future.done() and not future.cancelled() and future.result():  # granted just now
            gate.release(waiter.future.result(), time.monotonic(), 0)
            self._wake[gate.key].set()
        else:
            gate.cancel(waiter)
            waiter.future.cancel()

    async def reached(self, grant_id: str) -> None:
        key = grant_id.rpartition("|")[0]
        gate = self.gates.get(key)
        if gate is not None:
            gate.reach(grant_id, time.monotonic())

    async def release(self, grant_id: str, tokens_used: int | None = None) -> None:
        key = grant_id.rpartition("|")[0]
        gate = self.gates.get(key)
        if gate is not None and gate.release(grant_id, time.monotonic(), tokens_used):
            self._wake[key].set()

    async def penalize(self, key: str, retry_after_s: float | None = None) -> float:
        """An upstream answered 429 for ``key``; returns how long the gate stays closed."""
        gate = self.gates.get(key)
        if gate is None:
            return 0.0
        pause = gate.penalize(time.monotonic(), retry_after_s)
        metrics.inc("raysquad_gate_refusals", key=key)
        log.warning("gate %s: upstream throttled; closed for %.1fs, limits at %.0f%%", key, pause,
                    100 * gate.factor_at)
        return pause

    async def stats(self) -> dict[str, dict[str, Any]]:
        now = time.monotonic()
        return {key: gate.snapshot(now) for key, gate in sorted(self.gates.items())}

    async def _pump(self, key: str) -> None:
        """Grant this gate's waiters, one by one, as its limits allow."""
        gate, wake = self.gates[key], self._wake[key]
        while self.gates.get(key) is gate:
            now = time.monotonic()
            waiter = gate.select(now)
            if waiter is None:
                return
            wait = gate.wait_s(waiter, now)
            if wait <= 0:
                grant_id = gate.grant(waiter, now)
                assert waiter.future is not None
                if waiter.future.done():  # gave up in the same instant
                    gate.release(grant_id, now, 0)
                else:
                    waiter.future.set_result(grant_id)
                continue
            wake.clear()
            try:
                await asyncio.wait_for(wake.wait(), min(wait, RECHECK_S))
            except TimeoutError:
                pass


class GateKeeperHandle(ActorHandle):
    """The gate keeper actor, typed. Its state is soft: after a restart it starts from configuration,
    so every call may be repeated (an old grant is simply unknown to the new keeper)."""

    @classmethod
    def find(cls, namespace: str) -> GateKeeperHandle:
        return cls.named(ACTOR_NAME, namespace)

    async def keys(self) -> list[str]:
        return await self.via(GateKeeper.keys, deadline_s=5.0)()

    async def configure(self, key: str, limits: GateLimits | None) -> None:
        await self.via(GateKeeper.configure)(key, limits)

    async def acquire(self, key: str, tenant: str, priority: int, tokens: int,
                      timeout_s: float | None) -> str:
        return await self.via(GateKeeper.acquire)(key, tenant, priority, tokens, timeout_s)

    def reached(self, grant_id: str) -> None:
        self._send("reached", grant_id)

    def release(self, grant_id: str, tokens_used: int | None) -> None:
        self._send("release", grant_id, tokens_used)

    def penalize(self, key: str, retry_after_s: float | None) -> None:
        self._send("penalize", key, retry_after_s)

    async def stats(self, deadline_s: float | None = None) -> dict[str, dict[str, Any]]:
        return await self.via(GateKeeper.stats, deadline_s=deadline_s)()


class Passage:
    """What a caller holds while it passes a gate: report that the upstream has the request, the
    tokens used, or an upstream 429."""

    def __init__(self, client: GateClient | None, key: str, grant_id: str) -> None:
        self._client = client
        self.key = key
        self.grant_id = grant_id
        self.tokens_used: int | None = None
        self._reached = False

    def reached(self) -> None:
        """Call once the upstream surely has the request (its first response byte, or the call of an
        in-process engine): the request window can count from here instead of from the release."""
        keeper = self._client.keeper if self._client is not None else None
        if self.grant_id and not self._reached and keeper is not None:
            self._reached = True
            keeper.reached(self.grant_id)

    def throttled(self, retry_after_s: float | None = None) -> None:
        if self._client is not None:
            self._client.throttled(self.key, retry_after_s)


class GateClient:
    """The caller's side: skips keys with no gate (checked once a second), acquires and releases."""

    def __init__(self, keeper: GateKeeperHandle | None) -> None:
        self.keeper = keeper
        self._keys: frozenset[str] | None = None
        self._fetched_at = -math.inf
        self._refresh: asyncio.Task[None] | None = None

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.keeper,))

    async def gated(self, key: str) -> bool:
        """Whether ``key`` has a gate. Only the first call waits for the list; later ones use it and
        refresh it in the background once it is older than a second (a new gate applies from then)."""
        if self.keeper is None:
            return False
        if self._keys is None:
            await self._fetch()
        elif time.monotonic() - self._fetched_at > KEYS_TTL_S and (
                self._refresh is None or self._refresh.done()):
            self._refresh = asyncio.create_task(self._fetch())
        return key in (self._keys or ())

    async def _fetch(self) -> None:
        try:
            assert self.keeper is not None
            keys = await self.keeper.keys()
        except ActorUnavailable:  # restarting: keep what we knew, ask again next time
            log.warning("gate keeper unreachable; using the gates known so far")
            self._keys = self._keys or frozenset()
            return
        self._keys, self._fetched_at = frozenset(keys), time.monotonic()

    @asynccontextmanager
    async def passage(self, key: str, tenant: str = "default", priority: int = 0, tokens: int = 0,
                      timeout_s: float | None = None) -> AsyncIterator[Passage]:
        if not await self.gated(key):
            yield Passage(self, key, "")
            return
        assert self.keeper is not None
        grant_id = await self.keeper.acquire(key, tenant, priority, tokens, timeout_s)
        passage = Passage(self, key, grant_id)
        try:
            yield passage
        finally:
            if grant_id:
                self.keeper.release(grant_id, passage.tokens_used)

    def throttled(self, key: str, retry_after_s: float | None = None) -> None:
        if self.keeper is not None:
            self.keeper.penalize(key, retry_after_s)
