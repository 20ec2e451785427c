"""Actor calls and Store transactions per task, read from the runtime's own counters.

Every call through a typed actor handle counts in ``raysquad_actor_calls{actor,method}`` and every
Store transaction in ``raysquad_store_transactions{backend}`` (runtime/metrics.py); a server started
with ``RAYSQUAD_RAY_METRICS_EXPORT_PORT`` serves them for Prometheus (as ``ray_raysquad_*_total``).
Ray flushes each process's metrics every few seconds, so ``settled`` scrapes until two readings a
few seconds apart agree. ``per_task`` turns the difference of two readings into calls per task,
by actor kind (store, dispatcher, worker, pool, ...) and in all.
"""

from __future__ import annotations

import re
import time
from collections import defaultdict
from typing import Any

import httpx

_SAMPLE = re.compile(r'^(ray_raysquad_(?:actor_calls|store_transactions)_total)\{([^}]*)\}\s+(\S+)$')
_LABEL = re.compile(r'(\w+)="([^"]*)"')


def scrape(port: int) -> dict[str, float]:
    """``{"calls:<actor>.<method>": n, "tx:<backend>": n}`` summed over every process."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    out: defaultdict[str, float] = defaultdict(float)
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if not m:
            continue
        labels = dict(_LABEL.findall(m.group(2)))
        if "actor_calls" in m.group(1):
            out[f"calls:{labels.get('actor', '?')}.{labels.get('method', '?')}"] += float(m.group(3))
        else:
            out[f"tx:{labels.get('backend', '?')}"] += float(m.group(3))
    return dict(out)


def settled(port: int, quiet_s: float = 6.0, timeout_s: float = 60.0) -> dict[str, float]:
    """Scrape until a reading stays the same for ``quiet_s`` (Ray has flushed every process)."""
    deadline = time.monotonic() + timeout_s
    last = scrape(port)
    while time.monotonic() < deadline:
        time.sleep(quiet_s)
        now = scrape(port)
        if now == last:
            return now
        last = now
    return last


def per_task(before: dict[str, float], after: dict[str, float], tasks: int) -> dict[str, Any]:
    """Calls per task by actor kind and by method, and Store transactions per task."""
    n = max(1, tasks)
    delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    by_actor: defaultdict[str, float] = defaultdict(float)
    by_method: dict[str, float] = {}
    tx = 0.0
    for key, value in delta.items():
        if value <= 0:
            continue
        if key.startswith("calls:"):
            actor, _, _ = key[6:].partition(".")
            by_actor[actor] += value / n
            by_method[key[6:]] = round(value / n, 3)
        else:
            tx += value / n
    return {"tasks": tasks, "actor_calls_per_task": round(sum(by_actor.values()), 3),
            "by_actor": {k: round(v, 3) for k, v in sorted(by_actor.items())},
            "by_method": dict(sorted(by_method.items(), key=lambda kv: -kv[1])),
            "store_transactions_per_task": round(tx, 3)}
