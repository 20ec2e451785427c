"""The frames of `raysquad top`: one table per part of the runtime, from ``overview``'s snapshot, and
the tasks by status with their throughput, from ``task_stats`` (``GET /v1/stats`` over HTTP)."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Group
from rich.table import Table

#: The statuses as a task goes through them, in the order `top` shows them.
STATUSES = ("queued", "running", "waiting", "succeeded", "failed", "cancelled")
#: The stats `top` asks for: the last 15 minutes, a minute per bucket.
WINDOW_S, BUCKET_S = 900, 60
_BARS = "▁▂▃▄▅▆▇█"


def sparkline(values: list[int]) -> str:
    """``values`` as a line of block characters, the largest the tallest (all low when all 0)."""
    top = max(values, default=0)
    return "".join(_BARS[0] if top == 0 else _BARS[round(v / top * (len(_BARS) - 1))]
                   for v in values)


def tasks_view(stats: dict[str, Any] | None) -> Table:
    """The tasks by status, then what finished per minute over the window, as a sparkline."""
    table = Table(*STATUSES, "finished per minute, last 15 min", "last min", show_edge=False)
    for column in table.columns[:len(STATUSES)]:
        column.justify = "right"
    if stats is None:
        table.add_row(*["down"] * len(STATUSES), "", "")
        return table
    counts, finished = stats["counts"], stats["throughput"]["finished"]
    table.add_row(*(str(counts.get(s, 0)) for s in STATUSES), sparkline(finished),
                  str(finished[-1] if finished else 0))
    return table


def top_view(snap: dict[str, Any], where: str, stats: dict[str, Any] | None = None) -> Any:
    """The frames of `raysquad top`: the tasks, then one table per part of the runtime; ``where``
    says which runtime ("namespace raysquad", or the URL)."""
    def down(value: Any) -> str:
        return "down" if value is None else str(value)

    tasks = snap["tasks"] or {}
    head = Table(title=f"raysquad top · {where} · {time.strftime('%H:%M:%S')}",
                 show_edge=False)
    for column in ("queued", "claimed", "workers", "running", "events routed", "delivered",
                   "schedule ticks", "dead letters"):
        head.add_column(column, justify="right")
    events = snap["events"] or {}
    running = sum((w or {}).get("active", 0) for w in snap["workers"].values())
    head.add_row(down(tasks.get("depth")), down(tasks.get("in_flight")), str(len(snap["workers"])),
                 str(running), down(events.get("routed")), down(events.get("delivered")),
                 down(events.get("fired")), down(snap["dead_letters"]))
    agents = Table("agent role", "mailbox", "in flight", "oldest wait s", "replicas", "replaced",
                   show_edge=False)
    for role in sorted(set(snap["mailboxes"]) | set(snap["pools"])):
        box, pool = snap["mailboxes"].get(role) or {}, snap["pools"].get(role) or {}
        agents.add_row(role, down(box.get("depth")), down(box.get("in_flight")),
                       f"{box.get('oldest_wait_s', 0):.1f}" if box else "down",
                       down(pool.get("replicas")), down(pool.get("replaced")))
    engines = Table("model", "replicas", "requests in flight", show_edge=False)
    for model, loads in sorted(snap["engines"].items()):
        engines.add_row(model, str(len(loads)), " ".join(down(x) for x in loads))
    gates = Table("gate", "held", "waiting", "in window", "closed for s", "limits", show_edge=False)
    for key, g in sorted((snap["gates"] or {}).items()):
        limits = ", ".join(f"{k} {v}" for k, v in g["limits"].items()
                           if v is not None and k in ("requests", "tokens", "concurrency",
                                                      "interval_s"))
        gates.add_row(key, str(g["held"]), str(g["waiting"]), str(g["in_window"]),
                      f"{g['blocked_for_s']:.1f}", limits)
    return Group(head, tasks_view(stats), agents, engines, gates)
