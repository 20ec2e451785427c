"""What a rate-limit benchmark measures, from call records alone.

A record is ``(start, end)`` of one call, in seconds on one clock (``time.time()`` of processes on the
same machine). A limit of ``limit`` starts per ``interval_s`` means: no half-open window
``[t, t + interval_s)`` holds more than ``limit`` starts, for any ``t``. Two starts exactly
``interval_s`` apart are never in the same window, so a limiter that lets one call start at ``t`` and
the next one ``limit`` starts later at ``t + interval_s`` complies. Pure functions, no I/O: shared by
the raysquad and the Celery halves of ``benchmarks/rate_limited.py``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

Record = tuple[float, float]


def _sorted_starts(records: Iterable[Record]) -> list[float]:
    return sorted(start for start, _ in records)


def max_starts_in_window(records: Iterable[Record], interval_s: float) -> int:
    """The most starts in any window ``[t, t + interval_s)``; 0 without records.

    Exact: the busiest window can be taken to open at a start, so two pointers over the sorted starts
    find it in O(n log n).
    """
    if interval_s <= 0:
        raise ValueError(f"interval_s must be positive, got {interval_s}")
    starts = _sorted_starts(records)
    best, lo = 0, 0
    for hi, start in enumerate(starts):
        while start - starts[lo] >= interval_s:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def violations(records: Iterable[Record], limit: int, interval_s: float) -> int:
    """How many calls started although ``limit`` others had started in the ``interval_s`` before.

    Sort the starts (ties in any order: the count does not depend on it). Call ``j`` is a violation
    when ``#{i <= j : s_j - s_i < interval_s} > limit``, i.e. it is the ``limit + 1``-th or a later
    start in the window ``(s_j - interval_s, s_j]`` that ends at it. These are the calls a correct
    limiter would have held back: 0 for a compliant run, ``n - limit`` when n calls start at once, and
    one burst of b extra calls counts b however many windows contain it.
    """
    if limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    if interval_s <= 0:
        raise ValueError(f"interval_s must be positive, got {interval_s}")
    starts = _sorted_starts(records)
    count, lo = 0, 0
    for hi, start in enumerate(starts):
        while start - starts[lo] >= interval_s:
            lo += 1
        if hi - lo + 1 > limit:
            count += 1
    return count


def peak_concurrency(records: Iterable[Record]) -> int:
    """The most calls running at once, each call being ``[start, end)``.

    A call that ends at the instant another starts does not overlap it.
    """
    events: list[tuple[float, int]] = []
    for start, end in records:
        if end < start:
            raise ValueError(f"a call ends ({end}) before it starts ({start})")
        events.append((start, 1))
        events.append((end, -1))
    events.sort()  # at equal times -1 sorts first: ends before starts
    running = peak = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    return peak


def makespan(records: Sequence[Record], t0: float | None = None) -> float:
    """Last end minus ``t0`` (the first submit, when given) or else minus the first start; 0 if empty."""
    if not records:
        return 0.0
    first = min(start for start, _ in records) if t0 is None else t0
    return max(end for _, end in records) - first


def theoretical_makespan(n_calls: int, limit: int, interval_s: float, concurrency: int,
                         call_s: float) -> float:
    """A lower bound on the makespan of ``n_calls`` calls of ``call_s`` each under both limits.

    Rate: with at most ``limit`` starts in any ``[t, t + interval_s)``, starts ``i`` and ``i + limit``
    (sorted) are at least ``interval_s`` apart, so with ``q = ceil(n / limit) - 1`` the last
    ``r = n - q * limit`` calls all start at least ``q * interval_s`` after the first; at most
    ``concurrency`` at once, they take at least ``ceil(r / concurrency) * call_s`` more.
    Concurrency: calls of equal length, at most ``concurrency`` at once, split into ``concurrency``
    sequences of non-overlapping calls (interval graphs are perfect), one of which holds
    ``ceil(n / concurrency)`` calls: at least ``ceil(n / concurrency) * call_s``.
    The bound is the larger of the two. It assumes every call could start at once: it ignores that a
    workflow's k calls run one after another (which adds ``k * call_s`` as a third bound, and binds
    only when there are fewer workflows than the limits let run at once) and any dispatch overhead.
    """
    if n_calls <= 0:
        return 0.0
    if limit <= 0 or concurrency <= 0 or interval_s <= 0 or call_s < 0:
        raise ValueError("limit, concurrency and interval_s must be positive and call_s >= 0")
    windows = math.ceil(n_calls / limit) - 1
    last = n_calls - windows * limit
    by_rate = windows * interval_s + math.ceil(last / concurrency) * call_s
    by_concurrency = math.ceil(n_calls / concurrency) * call_s
    return max(by_rate, by_concurrency)
