"""raysquad's own metrics, recorded with ``ray.util.metrics``.

Every process records into its node's Ray metrics agent, so the metrics appear on Ray's Prometheus
endpoint (each node's ``--metrics-export-port``; Ray prefixes them ``ray_``, so ``raysquad_tasks``
is scraped as ``ray_raysquad_tasks``, and counters get ``_total``) and in the Ray dashboard's
metrics view. Labels are low-cardinality only: workflow, status, queue, model, gate key, tool,
topic; never a task id. A metric object is made on first use in each process (Ray's metric objects
belong to the process that records), and recording never raises: a metrics failure must not fail
a task.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

log = logging.getLogger(__name__)

#: Seconds: from a millisecond step to a ten-minute task.
LATENCY_BUCKETS = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 600]

# name -> (kind, description, tag keys)
DEFINITIONS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "raysquad_queue_depth": ("gauge", "items waiting in a queue (tasks, or an agent role's mailbox)",
                             ("queue",)),
    "raysquad_tasks_submitted": ("counter", "tasks submitted", ("workflow",)),
    "raysquad_tasks_finished": ("counter", "tasks that ended, by how", ("workflow", "status")),
    "raysquad_task_seconds": ("histogram", "a task's run, from its claim to its end", ("workflow",)),
    "raysquad_step_seconds": ("histogram", "one step (run, not replayed), by kind",
                              ("workflow", "kind")),
    "raysquad_llm_tokens": ("counter", "tokens generated (rate: tokens/s)", ("model",)),
    "raysquad_task_tokens": ("counter", "tokens the tasks' model calls used, prompt and completion",
                             ("model", "kind")),
    "raysquad_llm_ttft_seconds": ("histogram", "time to the first token of a request", ("model",)),
    "raysquad_llm_in_flight": ("gauge", "requests in flight on one engine replica",
                               ("model", "replica")),
    "raysquad_llm_cache_hits": ("counter", "model calls the LLM memo answered (no engine ran)",
                                ("model",)),
    "raysquad_llm_cache_misses": ("counter", "model calls the LLM memo was asked for and did not "
                                             "hold (an engine answered)", ("model",)),
    "raysquad_llm_fallbacks": ("counter", "model calls handed to their next model after this one "
                                          "ran out of retries", ("model",)),
    "raysquad_llm_routed": ("counter", "requests routed to an engine replica, by why that one: "
                            "session, prefix or least_loaded", ("model", "how")),
    "raysquad_llm_prefix_cache_tokens": ("counter", "prompt tokens an engine looked up in its "
                                         "prefix cache (queried) and found there (hit)",
                                         ("model", "outcome")),
    "raysquad_gate_grants": ("counter", "gate grants", ("key",)),
    "raysquad_gate_waits": ("counter", "requests that waited at a gate", ("key",)),
    "raysquad_gate_wait_seconds": ("histogram", "time waited at a gate", ("key",)),
    "raysquad_gate_refusals": ("counter", "requests a gate refused (an HTTP 429 upstream)", ("key",)),
    "raysquad_tool_calls": ("counter", "tool calls, by outcome", ("tool", "outcome")),
    "raysquad_tool_retries": ("counter", "tool call attempts that were retried", ("tool",)),
    "raysquad_dead_letters": ("counter", "calls that ran out of retries (a model call's tool: "
                                         "llm:<model>)", ("tool",)),
    "raysquad_events_published": ("counter", "topic events kept (new ones only)", ("topic",)),
    "raysquad_events_delivered": ("counter", "deliveries carried out, by target kind and outcome",
                                  ("target", "outcome")),
    "raysquad_schedule_ticks": ("counter", "schedule ticks, fired or not", ("outcome",)),
    "raysquad_actor_calls": ("counter", "calls through a typed actor handle, by actor kind and method",
                             ("actor", "method")),
    "raysquad_store_transactions": ("counter", "transactions the Store committed or rolled back",
                                    ("backend",)),
}

_made: dict[str, Any] = {}
_lock = threading.Lock()
#: ``RAYSQUAD_METRICS=false`` turns recording off in a process (the runtime passes it to its actors).
_enabled = os.environ.get("RAYSQUAD_METRICS", "true").strip().lower() not in ("0", "false", "no")


def enable(on: bool) -> None:
    """Turn recording on or off in this process."""
    global _enabled
    _enabled = on


def _metric(name: str) -> Any:
    metric = _made.get(name)
    if metric is not None:
        return metric
    from ray.util import metrics

    kind, description, tags = DEFINITIONS[name]
    with _lock:
        if name not in _made:
            if kind == "counter":
                _made[name] = metrics.Counter(name, description, tag_keys=tags)
            elif kind == "gauge":
                _made[name] = metrics.Gauge(name, description, tag_keys=tags)
            else:
                _made[name] = metrics.Histogram(name, description, boundaries=LATENCY_BUCKETS,
                                                tag_keys=tags)
    return _made[name]


def inc(name: str, value: float = 1.0, **tags: str) -> None:
    if not _enabled or value <= 0:
        return
    try:
        _metric(name).inc(value, tags=tags or None)
    except Exception:  # noqa: BLE001 - never fail the work over a metric
        log.debug("metric %s not recorded", name, exc_info=True)


def set_gauge(name: str, value: float, **tags: str) -> None:
    if not _enabled:
        return
    try:
        _metric(name).set(value, tags=tags or None)
    except Exception:  # noqa: BLE001
        log.debug("metric %s not recorded", name, exc_info=True)


def observe(name: str, value: float, **tags: str) -> None:
    if not _enabled:
        return
    try:
        _metric(name).observe(value, tags=tags or None)
    except Exception:  # noqa: BLE001
        log.debug("metric %s not recorded", name, exc_info=True)


def grafana_dashboard() -> dict[str, Any]:
    """A Grafana dashboard of every metric above, built from the same names (as Prometheus sees
    them: prefixed ``ray_``; counters as rates, histograms as p50/p99)."""
    panels = []
    for n, (name, (kind, description, tags)) in enumerate(DEFINITIONS.items()):
        metric = f"ray_{name}"
        by = f" by ({', '.join(tags)})" if tags else ""
        if kind == "counter":
            exprs = [f"sum(rate({metric}_total[1m])){by}"]
        elif kind == "gauge":
            exprs = [f"sum({metric}){by}"]
        else:
            exprs = [f"histogram_quantile({q}, sum(rate({metric}_bucket[5m])) by (le{', ' if tags else ''}"
                     f"{', '.join(tags)}))" for q in (0.5, 0.99)]
        panels.append({
            "id": n + 1, "type": "timeseries", "title": name.removeprefix("raysquad_"),
            "description": description, "datasource": {"type": "prometheus", "uid": "${datasource}"},
            "gridPos": {"h": 8, "w": 12, "x": 12 * (n % 2), "y": 8 * (n // 2)},
            "targets": [{"expr": e, "refId": chr(65 + i), "legendFormat": "{{" + "}} {{".join(tags)
                         + "}}" if tags else name} for i, e in enumerate(exprs)],
        })
    return {
        "title": "raysquad", "uid": "raysquad", "schemaVersion": 39, "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"}, "panels": panels,
        "templating": {"list": [{"name": "datasource", "type": "datasource",
                                 "query": "prometheus"}]},
    }


if __name__ == "__main__":  # python -m runtime.core.metrics > deploy/grafana/raysquad.json
    import json

    print(json.dumps(grafana_dashboard(), indent=2))
