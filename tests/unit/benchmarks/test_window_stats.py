"""The measurements of the rate-limit benchmark, on hand-computed records."""

from __future__ import annotations

import random

import pytest

from benchmarks.window_stats import (
    makespan,
    max_starts_in_window,
    peak_concurrency,
    theoretical_makespan,
    violations,
)


def calls(*starts: float, length: float = 0.1) -> list[tuple[float, float]]:
    return [(s, s + length) for s in starts]


def test_empty_records() -> None:
    assert max_starts_in_window([], 1.0) == 0
    assert violations([], 3, 1.0) == 0
    assert peak_concurrency([]) == 0
    assert makespan([]) == 0.0


def test_window_is_half_open() -> None:
    # 0.0 and 1.0 are exactly one interval apart: never in the same window.
    assert max_starts_in_window(calls(0.0, 1.0, 2.0), 1.0) == 1
    assert max_starts_in_window(calls(0.0, 0.999, 2.0), 1.0) == 2


def test_busiest_window_anywhere_in_the_run() -> None:
    # Windows opening at a start: [0,1) 2, [0.5,1.5) 4 (0.5 1.2 1.3 1.4), [1.2,2.2) 4, [1.3,2.3) 3, ...
    starts = (0.0, 0.5, 1.2, 1.3, 1.4, 2.1, 3.5)
    assert max_starts_in_window(calls(*reversed(starts)), 1.0) == 4
    assert max_starts_in_window(calls(*starts), 0.15) == 2
    assert max_starts_in_window(calls(*starts), 10.0) == 7


def test_violations_count_the_calls_a_limiter_would_have_held() -> None:
    # Five at once, limit 2: the 3rd, 4th and 5th.
    assert violations(calls(0, 0, 0, 0, 0), 2, 1.0) == 3
    # Starts in the window (s - 1, s] ending at each start: 0.0 -> 1, 0.5 -> 2, 1.2 -> 2 (0.5 1.2),
    # 1.3 -> 3 (0.5 1.2 1.3), 1.4 -> 4 (0.5 1.2 1.3 1.4), 2.1 -> 4 (1.2 1.3 1.4 2.1), 3.5 -> 1.
    starts = (0.0, 0.5, 1.2, 1.3, 1.4, 2.1, 3.5)
    assert violations(calls(*starts), 2, 1.0) == 3
    assert violations(calls(*starts), 3, 1.0) == 2
    assert violations(calls(*starts), 4, 1.0) == 0


def test_evenly_spaced_starts_at_the_limit_comply() -> None:
    # 20 per second, one every 50 ms, for 3 s: exactly at the limit (in integer milliseconds, so that
    # float rounding cannot put the 21st start a hair inside the window).
    starts = [i * 50 for i in range(60)]
    assert max_starts_in_window(calls(*starts), 1000) == 20
    assert violations(calls(*starts), 20, 1000) == 0
    assert violations(calls(*starts), 19, 1000) == 60 - 19


def test_no_violations_exactly_when_the_busiest_window_is_within_the_limit() -> None:
    rng = random.Random(7)
    for _ in range(200):
        records = calls(*(rng.uniform(0, 5) for _ in range(rng.randint(1, 40))))
        limit = rng.randint(1, 10)
        busiest = max_starts_in_window(records, 1.0)
        assert (violations(records, limit, 1.0) == 0) == (busiest <= limit)
        assert violations(records, busiest - 1, 1.0) >= 1


def test_peak_concurrency() -> None:
    assert peak_concurrency([(0, 1), (0.5, 2), (0.7, 0.8), (1.5, 3)]) == 3  # at 0.7: all but the last
    # Touching intervals do not overlap.
    assert peak_concurrency([(0, 1), (1, 2), (2, 3)]) == 1
    assert peak_concurrency([(0, 1), (0, 1), (0, 1)]) == 3
    with pytest.raises(ValueError):
        peak_concurrency([(1, 0)])


def test_makespan_from_the_first_start_or_from_t0() -> None:
    records = [(1.0, 1.5), (1.2, 3.0), (2.0, 2.5)]
    assert makespan(records) == pytest.approx(2.0)
    assert makespan(records, t0=0.5) == pytest.approx(2.5)


def test_theoretical_makespan_rate_bound() -> None:
    # 200 calls, 20 per second: 10 windows, the last start >= 9 s after the first, plus one call.
    assert theoretical_makespan(200, 20, 1.0, 1000, 0.02) == pytest.approx(9.02)
    # 201 calls need an 11th window.
    assert theoretical_makespan(201, 20, 1.0, 1000, 0.02) == pytest.approx(10.02)
    # Fewer calls than the limit: one call's length.
    assert theoretical_makespan(5, 20, 1.0, 1000, 0.02) == pytest.approx(0.02)
    # The last window's 20 calls, 8 at once, need 3 rounds after the 9 s of earlier windows.
    assert theoretical_makespan(200, 20, 1.0, 8, 0.02) == pytest.approx(9.06)


def test_theoretical_makespan_concurrency_bound() -> None:
    # 200 calls of 1 s, 8 at once: 25 rounds; the rate bound (9 s + 1 s) is smaller.
    assert theoretical_makespan(200, 20, 1.0, 8, 1.0) == pytest.approx(25.0)
    # 17 calls, 8 at once: 3 rounds, not 17/8.
    assert theoretical_makespan(17, 1000, 1.0, 8, 1.0) == pytest.approx(3.0)


def test_theoretical_makespan_edges() -> None:
    assert theoretical_makespan(0, 20, 1.0, 8, 0.02) == 0.0
    with pytest.raises(ValueError):
        theoretical_makespan(10, 0, 1.0, 8, 0.02)
    with pytest.raises(ValueError):
        max_starts_in_window(calls(0.0), 0.0)
