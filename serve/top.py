"""The frames of `raysquad top`: one table per part of the runtime, from ``overview``'s snapshot."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Group
from rich.table import Table


def top_view(snap: dict[str, Any], namespace: str) -> Any:
    """The frames of `raysquad top`: one table per part of the runtime."""
    def down(value: Any) -> str:
        return "down" if value is None else str(value)

    tasks = snap["tasks"] or {}
    head = Table(title=f"raysquad {namespace} at {time.strftime('%H:%M:%S')}", show_edge=False)
    for column in ("queued", "claimed", "workers", "running", "events routed", "delivered",
                   "schedule ticks", "dead letters"):
        head.add_column(column, justify="right")
    events = snap["events"] or {}
    running = sum((w or {}).get("active", 0) for w in snap["workers"].values())
    head.add_row(down(tasks.get("depth")), down(tasks.get("in_flight")), str(len(snap["workers"])),
                 str(running), down(events.get("routed")), down(events.get("delivered")),
                 down(events.get("fired")), down(snap["dead_letters"]))
    agents = Table("agent role", "mailbox", "in flight", "oldest wait s", "replicas", show_edge=False)
    for role in sorted(set(snap["mailboxes"]) | set(snap["pools"])):
        box, pool = snap["mailboxes"].get(role) or {}, snap["pools"].get(role) or {}
        agents.add_row(role, down(box.get("depth")), down(box.get("in_flight")),
                       f"{box.get('oldest_wait_s', 0):.1f}" if box else "down",
                       down(pool.get("replicas")))
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
    return Group(head, agents, engines, gates)
