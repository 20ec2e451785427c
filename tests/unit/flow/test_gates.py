"""The gate's rules on their own, with a hand-driven clock: windows, concurrency, order, fairness, 429."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.core.config import GateLimits
from runtime.core.errors import GateRequestTooLarge
from runtime.flow.gates import Gate


def drain(gate: Gate, now: float) -> list[str]:
    """Grant every waiter that may pass at ``now``; returns the grant ids in order."""
    grants = []
    while (w := gate.select(now)) is not None and gate.wait_s(w, now) == 0:
        grants.append(gate.grant(w, now))
    return grants


def test_window_counts_a_request_until_interval_after_its_release() -> None:
    gate = Gate("api:x", GateLimits(requests=3, interval_s=1.0))
    for _ in range(4):
        gate.enqueue("t", 0, 0, now=0.0)
    first = drain(gate, 0.0)
    assert len(first) == 3
    fourth = gate.select(0.0)
    assert fourth is not None
    assert gate.wait_s(fourth, 0.0) == 300.0  # a release, or taking back a grant held too long
    gate.release(first[0], now=0.2)
    assert gate.wait_s(fourth, 0.5) == pytest.approx(0.7)  # 0.2 + 1.0 - 0.5
    assert drain(gate, 1.19) == []
    assert len(drain(gate, 1.2)) == 1


def test_concurrency_limit_waits_for_a_release() -> None:
    gate = Gate("engine:m", GateLimits(concurrency=2))
    for _ in range(3):
        gate.enqueue("t", 0, 0, now=0.0)
    held = drain(gate, 0.0)
    assert len(held) == 2
    assert drain(gate, 100.0) == []
    gate.release(held[0], now=100.0)
    assert len(drain(gate, 100.0)) == 1


def test_tokens_per_window_use_the_tokens_really_used() -> None:
    gate = Gate("openai:gpt", GateLimits(tokens=1000, interval_s=10.0))
    gate.enqueue("t", 0, 600, now=0.0)
    gate.enqueue("t", 0, 600, now=0.0)
    (g,) = drain(gate, 0.0)
    gate.release(g, now=1.0, tokens_used=150)  # estimated 600, used 150
    assert len(drain(gate, 1.0)) == 1  # 150 + 600 <= 1000


def test_a_request_larger_than_the_window_is_refused_at_once() -> None:
    gate = Gate("openai:gpt", GateLimits(tokens=100))
    with pytest.raises(GateRequestTooLarge, match="never pass"):
        gate.enqueue("t", 0, 101, now=0.0)


def test_higher_priority_goes_first() -> None:
    gate = Gate("api:x", GateLimits(concurrency=1), aging_per_s=0.1)
    gate.enqueue("t", 0, 0, 0.0)
    (g,) = drain(gate, 0.0)
    low = gate.enqueue("t", 0, 0, now=1.0)
    high = gate.enqueue("t", 5, 0, now=2.0)
    gate.release(g, now=3.0)
    assert gate.select(3.0) is high
    gate.grant(high, 3.0)
    assert gate.select(3.0) is low


def test_aging_lifts_an_old_waiter_to_the_top_level_but_not_past_it() -> None:
    gate = Gate("api:x", GateLimits(concurrency=1), aging_per_s=0.1)
    old = gate.enqueue("t", 0, 0, now=0.0)
    new = gate.enqueue("t", 5, 0, now=60.0)  # old has aged 6 levels: capped at 5, and older
    assert gate.level(old, 60.0) == 5
    assert gate.select(60.0) is old
    assert new.seq > old.seq


def test_equal_tenants_share_equally_whatever_their_backlog() -> None:
    gate = Gate("api:x", GateLimits(concurrency=1), aging_per_s=0.1)
    for _ in range(300):
        gate.enqueue("flood", 0, 0, now=0.0)
    for _ in range(100):
        gate.enqueue("calm", 0, 0, now=30.0)  # the flood's backlog is older: age must not win
    order = []
    now = 30.0
    for _ in range(100):
        w = gate.select(now)
        assert w is not None
        order.append(w.tenant)
        gate.release(gate.grant(w, now), now)
    assert abs(order.count("flood") - order.count("calm")) <= 1


def test_weights_set_the_shares() -> None:
    gate = Gate("api:x", GateLimits(concurrency=1), weights={"gold": 3.0})
    for _ in range(200):
        gate.enqueue("gold", 0, 0, now=0.0)
        gate.enqueue("free", 0, 0, now=0.0)
    tenants = []
    for _ in range(200):
        w = gate.select(0.0)
        assert w is not None
        tenants.append(w.tenant)
        gate.release(gate.grant(w, 0.0), 0.0)
    assert tenants.count("gold") == pytest.approx(150, abs=2)


def test_an_idle_tenant_banks_no_credit() -> None:
    gate = Gate("api:x", GateLimits(concurrency=1))
    for _ in range(50):
        gate.enqueue("a", 0, 0, now=0.0)
    for _ in range(50):
        w = gate.select(0.0)
        assert w is not None
        gate.release(gate.grant(w, 0.0), 0.0)
    for _ in range(20):  # b arrives late: it may not take 50 grants in a row
        gate.enqueue("b", 0, 0, now=1.0)
        gate.enqueue("a", 0, 0, now=1.0)
    first = []
    for _ in range(10):
        w = gate.select(1.0)
        assert w is not None
        first.append(w.tenant)
        gate.release(gate.grant(w, 1.0), 1.0)
    assert 4 <= first.count("b") <= 6


def test_upstream_429_closes_the_gate_halves_it_and_it_recovers() -> None:
    gate = Gate("api:x", GateLimits(requests=10, interval_s=1.0))
    assert gate.penalize(now=0.0, retry_after_s=None) == 1.0
    w = gate.enqueue("t", 0, 0, now=0.0)
    assert gate.wait_s(w, 0.5) == pytest.approx(0.5)
    assert gate.factor(0.0) == 0.5
    assert gate.penalize(now=0.1, retry_after_s=None) == 2.0  # a second strike waits longer
    assert gate.factor(0.1) == pytest.approx(0.25, abs=0.01)
    assert gate.factor(20.0) == 1.0
    assert gate.penalize(now=30.0, retry_after_s=3.0) == 3.0  # the upstream's Retry-After wins


def test_an_unreleased_grant_is_taken_back_after_max_hold() -> None:
    gate = Gate("api:x", GateLimits(concurrency=1, max_hold_s=5.0))
    gate.enqueue("t", 0, 0, now=0.0)
    drain(gate, 0.0)
    w = gate.enqueue("t", 0, 0, now=1.0)
    assert gate.wait_s(w, 1.0) == pytest.approx(4.0)
    assert drain(gate, 5.0) != []


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 6), st.floats(0.2, 2.0), st.integers(0, 10_000))
def test_no_window_of_arrivals_ever_exceeds_the_limit(limit: int, interval: float, seed: int) -> None:
    """Simulate callers with random service times that report ``reached`` at a random moment (or
    never, letting the release stand for it); an upstream that receives each request at any moment
    between its grant and that report never sees more than ``limit`` in a window."""
    rng = random.Random(seed)
    gate = Gate("api:x", GateLimits(requests=limit, interval_s=interval, concurrency=limit + 1))
    now = 0.0
    held: dict[str, list[float]] = {}  # grant id -> [granted, reach (inf: never), end]
    spans = []  # (granted, reported): the upstream may receive the request anywhere in between
    for _ in range(40):
        gate.enqueue("t", rng.randint(0, 2), 0, now)
    while gate.waiting() or held:
        for grant_id in drain(gate, now):
            end = now + rng.uniform(0, interval)
            held[grant_id] = [now, rng.choice([rng.uniform(now, end), math.inf]), end]
        for grant_id, (start, reach, end) in list(held.items()):
            if -math.inf < reach <= now:
                gate.reach(grant_id, now)
                spans.append((start, now))
                held[grant_id][1] = -math.inf  # reported
            if end <= now:
                gate.release(grant_id, now)
                if reach == math.inf:
                    spans.append((start, now))
                del held[grant_id]
        w = gate.select(now)
        wait = gate.wait_s(w, now) if w is not None else math.inf
        events = [t for _, r, e in held.values() for t in (r, e) if t > now]
        now = max(now, min([now + wait, *events])) + 1e-9
    assert len(spans) == 40
    edges = sorted({s for s, _ in spans} | {e for _, e in spans})
    for s in edges:
        reachable = sum(1 for g, r in spans if g < s + interval and r >= s)
        assert reachable <= limit


def test_a_reached_request_leaves_the_window_while_it_still_holds_a_slot() -> None:
    gate = Gate("engine:m", GateLimits(requests=2, interval_s=1.0, concurrency=10))
    for _ in range(3):
        gate.enqueue("t", 0, 0, now=0.0)
    a, b = drain(gate, 0.0)
    gate.reach(a, now=0.1)
    gate.reach(b, now=0.2)
    assert drain(gate, 1.09) == []
    assert len(drain(gate, 1.1)) == 1  # a is still running: only the window had to pass
    assert len(gate.held) == 3
