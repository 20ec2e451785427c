"""Actor calls and Store transactions per task, read from the runtime's own counters.

Every call through a typed actor handle counts in ``raysquad_actor_calls{actor,method}`` and every
Store transaction in ``raysquad_store_transactions{backend}`` (runtime/core/metrics.py); a server started
with ``RAYSQUAD_RAY_METRICS_EXPORT_PORT`` serves them for Prometheus (as ``ray_raysquad_*_total``).
Ray exports each process's metrics every 10 s, and an idle runtime keeps counting (sweeps, polls:
about 11 calls a second), so a run's cost is read once the counters have caught up (``settle``) and
less the idle background over the same span (``idle_rates``, measured with nothing submitted).
"""

from __future__ import annotations

import re
import time
from collections import defaultdict
from typing import Any

import httpx

COUNTERS = ("ray_raysquad_actor_calls_total", "ray_raysquad_store_transactions_total",
            "ray_raysquad_tasks_finished_total")
_SAMPLE = re.compile(r"^(\w+)\{(.*)\}\s+(\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')

Snapshot = dict[tuple[str, str, str], float]  # (metric, actor or backend or status, method) -> value


def read_counters(port: int) -> Snapshot:
    """The runtime's counters from Ray's Prometheus endpoint, summed over processes."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10.0).text
    out: defaultdict[tuple[str, str, str], float] = defaultdict(float)
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if not m or m.group(1) not in COUNTERS:
            continue
        labels = dict(_LABEL.findall(m.group(2)))
        who = labels.get("actor") or labels.get("backend") or labels.get("status") or ""
        out[(m.group(1), who, labels.get("method", ""))] += float(m.group(3))
    return dict(out)


def _finished(snap: Snapshot) -> float:
    return sum(v for (name, _, _), v in snap.items() if name == COUNTERS[2])


def _moving(snap: Snapshot) -> float:
    return sum(v for (name, _, _), v in snap.items() if name != COUNTERS[2])


def settle(port: int, finished: int, flush_s: float, timeout_s: float) -> tuple[Snapshot, float]:
    """The counters once every finished task is counted and every process has flushed since.

    Ray exports each process's metrics every ``metrics_report_interval_ms`` (10 s by default). Once
    the workers' count of finished tasks is complete, a read ``flush_s`` later holds every process's
    calls up to the last finish. Returns the counters and when they were read (monotonic).
    """
    deadline = time.monotonic() + timeout_s
    while _finished(read_counters(port)) < finished:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the metrics never counted {finished} finished tasks")
        time.sleep(1.0)
    wait_until(time.monotonic() + flush_s)
    return read_counters(port), time.monotonic()


def wait_until(moment: float) -> None:
    while (left := moment - time.monotonic()) > 0:
        time.sleep(min(left, 1.0))


def idle_rates(a: Snapshot, b: Snapshot, seconds: float) -> dict[tuple[str, str, str], float]:
    """Per counter, what it gains per second with nothing submitted (sweeps, polls, schedules)."""
    return {key: (b[key] - a.get(key, 0.0)) / seconds for key in b if b[key] > a.get(key, 0.0)}


def per_task(before: Snapshot, after: Snapshot, seconds: float, idle: dict[tuple[str, str, str], float],
             tasks: int) -> dict[str, Any]:
    """Counter deltas over a run, less the idle background over the same span, per task."""
    raw = {key: after.get(key, 0.0) - before.get(key, 0.0) for key in after}
    delta = {key: max(0.0, d - idle.get(key, 0.0) * seconds) for key, d in raw.items()}
    calls: defaultdict[str, float] = defaultdict(float)
    methods: dict[str, float] = {}
    for (name, who, method), d in delta.items():
        if name == COUNTERS[0] and d > 0:
            calls[who] += d / tasks
            methods[f"{who}.{method}"] = round(d / tasks, 3)
    tx = sum(d for (name, _, _), d in delta.items() if name == COUNTERS[1])
    return {"actor_calls": sum(calls.values()),
            "actor_calls_by_kind": {a: round(v, 3) for a, v in sorted(calls.items())},
            "actor_calls_by_method": dict(sorted(methods.items(), key=lambda kv: -kv[1])),
            "store_transactions": tx / tasks,
            "actor_calls_raw": sum(d for (name, _, _), d in raw.items() if name == COUNTERS[0]) / tasks,
            "store_transactions_raw": sum(d for (name, _, _), d in raw.items() if name == COUNTERS[1])
            / tasks,
            "span_s": seconds}
