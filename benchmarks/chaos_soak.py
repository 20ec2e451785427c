"""Chaos soak: a steady load of ``chaos_steps`` tasks, calm, then while runtime actors are SIGKILLed.

An open-loop submitter starts one task every ``1 / --rate`` seconds (submits do not wait on each
other: an outage delays them, not the schedule) for ``--duration-s`` of calm, then for the same time
again while every ``--kill-every-s`` one actor of a random kind gets SIGKILL: the Store, the
dispatcher, the worker pool, an agent pool, a mailbox, the gate keeper, an engine, a tool executor, a
worker or an agent replica (``tests.faults``). Then it waits, bounded, for every task to end, and
reads the outcome from the SQLite Store and the side-effect logs of ``tests.apps.chaos``:

- lost: tasks the Store accepted that did not succeed (failed, or not ended by the end of the wait);
- repeated: runs of a plain ``ctx.step`` that started after the Store had recorded it as completed;
- throughput: tasks that succeeded during the window (by their ``finished_at``), per second.

Targets: 0 lost, 0 repeated, chaos throughput at least half the calm one.

    .venv/bin/python benchmarks/chaos_soak.py [--duration-s 600] [--kill-every-s 5] [--rate 2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make `benchmarks` and `tests` importable here
    sys.path.insert(0, str(ROOT))

import ray  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from benchmarks.common import write_result  # noqa: E402
from runtime import GateLimits, Runtime, Settings, TaskStatus  # noqa: E402
from runtime.actors.cluster import connect  # noqa: E402
from runtime.client.client import AsyncClient  # noqa: E402
from tests.apps.chaos import TOOL  # noqa: E402
from tests.faults import Effects, Kind, Victim, came_back, kill, pick, read_effects, task_rows  # noqa: E402

WORKFLOW = "chaos_steps"
APPS = ["tests.apps.chaos"]
OBJECT_STORE_BYTES = 200 * 1024**2
TARGET_RATIO = 0.5
BACK_S = 60.0  # a killed actor that is not back (restarted or replaced) by then counts as not back
POLL_S = 0.5


@dataclass
class Window:
    """One phase of the soak: what was submitted in it and when it ran."""

    name: str
    start: float = 0.0
    end: float = 0.0
    ids: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # submits that raised (the error's text)
    submit_s: list[float] = field(default_factory=list)


@dataclass
class KillRecord:
    at: float
    kind: str
    name: str
    pid: int
    back_s: float | None = None  # until it was alive again (restarted) or replaced
    next_finish_s: float | None = None  # until the next task finished


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = _parse(argv)
    if args.seed is None:  # drawn here, so that the JSON says how to run the same draw again
        args.seed = random.randrange(2**32)
    args.loadavg_before = list(os.getloadavg())
    # Ray workers of a local cluster inherit the driver's environment: this is how they find tests/.
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    console = Console(width=110)
    if args.loadavg_before[0] > 1.0:
        console.print(f"[yellow]load average {args.loadavg_before[0]:.1f} on {os.cpu_count()} CPUs: "
                      "other work will skew these figures[/]")
    with tempfile.TemporaryDirectory(prefix="raysquad-chaos-") as tmp:
        side = Path(tmp) / "effects"
        side.mkdir()
        settings = Settings(
            data_dir=Path(tmp) / "state", namespace=f"chaos-{uuid.uuid4().hex[:8]}",
            workers=args.workers, lease_s=args.lease_s, sweep_interval_s=0.2,
            ray_num_cpus=args.num_cpus, ray_object_store_memory=OBJECT_STORE_BYTES,
            # Gates on the engine and the tool: their calls pass the gate keeper, which may be killed.
            gates={"engine:sim-small": GateLimits(concurrency=64),
                   f"tool:{TOOL}": GateLimits(concurrency=64)},
        )
        started_ray = connect(settings)
        try:
            rt = Runtime.start(settings, apps=APPS)
            try:
                console.print(f"chaos soak: {args.rate} task(s)/s, {args.duration_s:.0f}s calm then "
                              f"{args.duration_s:.0f}s with a SIGKILL every {args.kill_every_s:.0f}s")
                windows, kills = asyncio.run(_soak(rt, args, side))
                every_id = [t for w in windows for t in w.ids]
                drained_s = _drain(settings.database_path, every_id, args.drain_s)
                rows = task_rows(settings.database_path)
                effects = read_effects(side, settings.database_path)
                down = _down_at_end(settings.namespace)
            finally:
                rt.stop(shutdown_ray=False)
        finally:
            if started_ray:
                ray.shutdown()
    result = _result(args, settings, windows, kills, rows, effects, drained_s, down)
    _print(console, result)
    return write_result(console, args.json, result)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--duration-s", type=float, default=600.0,
                   help="length of each phase, calm and chaos (the issue's 10 minutes)")
    p.add_argument("--kill-every-s", type=float, default=5.0, help="seconds between two SIGKILLs")
    p.add_argument("--rate", type=float, default=2.0, help="tasks submitted per second (open loop)")
    p.add_argument("--sleep-s", type=float, default=0.05,
                   help="how long each step, agent handler and tool call takes")
    p.add_argument("--workers", type=int, default=2, help="workflow worker actors")
    p.add_argument("--lease-s", type=float, default=5.0, help="task lease (a lost claim waits this)")
    p.add_argument("--drain-s", type=float, default=180.0,
                   help="after the chaos phase, wait at most this for every task to end")
    p.add_argument("--seed", type=int, default=None, help="seed of the choice of victims")
    p.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local Ray cluster")
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "chaos_soak.json"))
    return p.parse_args(argv)


# -- the load and the faults ------------------------------------------------------------------------


async def _soak(rt: Runtime, args: argparse.Namespace, side: Path
                ) -> tuple[list[Window], list[KillRecord]]:
    client = rt.async_client()
    rng = random.Random(args.seed)
    kills: list[KillRecord] = []
    watchers: list[asyncio.Task[None]] = []
    windows = [Window("calm"), Window("chaos")]
    for window in windows:
        killer = (asyncio.create_task(_kill_every(rt.settings.namespace, args.kill_every_s, rng,
                                                  kills, watchers))
                  if window.name == "chaos" else None)
        try:
            await _open_loop(client, window, args, side)
        finally:
            if killer is not None:
                killer.cancel()
    await asyncio.gather(*watchers)
    return windows, kills


async def _open_loop(client: AsyncClient, window: Window, args: argparse.Namespace,
                     side: Path) -> None:
    """Start a submit every 1/rate s for the window's duration, whatever the earlier ones are doing."""
    inp = {"dir": str(side), "sleep_s": args.sleep_s}

    async def submit_one() -> None:
        t0 = time.monotonic()
        try:
            record = await client.submit(WORKFLOW, inp)
        except Exception as e:  # noqa: BLE001 - a refused submit is a figure, not a crash
            window.refused.append(f"{type(e).__name__}: {e}")
            return
        window.ids.append(record.id)
        window.submit_s.append(time.monotonic() - t0)

    window.start = time.time()
    t0 = time.monotonic()
    submits = []
    for i in range(round(args.rate * args.duration_s)):
        delay = t0 + i / args.rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)  # the open loop's schedule, not a wait for a condition
        submits.append(asyncio.create_task(submit_one()))
    remaining = t0 + args.duration_s - time.monotonic()
    if remaining > 0:
        await asyncio.sleep(remaining)
    window.end = time.time()
    await asyncio.gather(*submits)  # each is bounded by the handles' deadline


async def _kill_every(namespace: str, every_s: float, rng: random.Random, kills: list[KillRecord],
                      watchers: list[asyncio.Task[None]]) -> None:
    """SIGKILL one actor of a random kind every ``every_s``; note when each is back."""
    kinds = list(Kind)
    next_at = time.monotonic() + every_s
    while True:
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))  # the kill schedule
        next_at += every_s
        victim = await asyncio.to_thread(_choose, namespace, rng, kinds)
        if victim is None:
            continue
        kill(victim)
        record = KillRecord(time.time(), victim.kind.name, victim.name, victim.pid)
        kills.append(record)
        watchers.append(asyncio.create_task(_watch(namespace, victim, record)))


def _choose(namespace: str, rng: random.Random, kinds: list[Kind]) -> Victim | None:
    """An alive actor of a random kind (another kind if none of the drawn one is alive now)."""
    for kind in rng.sample(kinds, len(kinds)):
        victim = pick(kind, namespace, choose=rng.choice)
        if victim is not None:
            return victim
    return None


async def _watch(namespace: str, victim: Victim, record: KillRecord) -> None:
    deadline = time.monotonic() + BACK_S
    while time.monotonic() < deadline:
        if await asyncio.to_thread(came_back, victim, namespace):
            record.back_s = time.time() - record.at
            return
        await asyncio.sleep(0.2)


def _drain(database: Path, ids: list[str], timeout_s: float) -> float:
    """Wait until every task has ended (or ``timeout_s`` passed); returns how long it took."""
    t0 = time.monotonic()
    wanted = set(ids)
    while time.monotonic() - t0 < timeout_s:
        rows = task_rows(database)
        if all(t in rows and TaskStatus(rows[t]["status"]).ended for t in wanted):
            break
        time.sleep(POLL_S)
    return time.monotonic() - t0


def _down_at_end(namespace: str) -> list[str]:
    """Control-plane kinds with no live actor once the soak is over (each should have come back)."""
    return [k.name for k in Kind if not k.replaced and pick(k, namespace) is None]


# -- report -----------------------------------------------------------------------------------------


def _percentiles(values_s: list[float]) -> dict[str, float]:
    xs = sorted(1000 * v for v in values_s)
    if not xs:
        return {}

    def at(q: float) -> float:
        return xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))]

    return {"p50": at(0.5), "p90": at(0.9), "p99": at(0.99), "max": xs[-1]}


def _window_result(w: Window, rows: dict[str, dict[str, Any]], effects: Effects) -> dict[str, Any]:
    mine = [rows[t] for t in w.ids if t in rows]
    statuses = [r["status"] for r in mine]
    duration = w.end - w.start
    completed_in = sum(1 for r in rows.values() if r["status"] == "succeeded"
                       and w.start <= (r["finished_at"] or 0) <= w.end)
    done = [r for r in mine if r["status"] == "succeeded"]
    ends = sorted([w.start, w.end, *(r["finished_at"] for r in rows.values()
                                      if r["finished_at"] and w.start <= r["finished_at"] <= w.end)])
    return {
        "duration_s": duration,
        "submitted": len(w.ids),
        "refused": len(w.refused),
        "refusals": sorted(set(w.refused))[:10],
        "succeeded": statuses.count("succeeded"),
        "failed": statuses.count("failed"),
        "not_ended": sum(1 for t in w.ids if t not in rows
                         or not TaskStatus(rows[t]["status"]).ended),
        "lost": sum(1 for t in w.ids if t not in rows or rows[t]["status"] != "succeeded"),
        "errors": sorted({(r["error"] or "")[:200] for r in mine if r["status"] == "failed"})[:10],
        "repeated": len(effects.repeated(w.ids)),
        "over_runs": len(effects.over_runs(w.ids)),
        "rerun_interrupted": effects.rerun_interrupted(w.ids),
        "runs_gt_1": sum(1 for r in mine if r["runs"] > 1),
        "completed_in_window": completed_in,
        "throughput_per_s": completed_in / duration if duration > 0 else 0.0,
        "longest_stall_s": max(b - a for a, b in zip(ends, ends[1:], strict=False)),
        "latency_ms": _percentiles([r["finished_at"] - r["created_at"] for r in done]),
        "submit_ms": _percentiles(w.submit_s),
    }


def _result(args: argparse.Namespace, settings: Settings, windows: list[Window],
            kills: list[KillRecord], rows: dict[str, dict[str, Any]], effects: Effects,
            drained_s: float, down: list[str]) -> dict[str, Any]:
    calm, chaos = (_window_result(w, rows, effects) for w in windows)
    ratio = chaos["throughput_per_s"] / calm["throughput_per_s"] if calm["throughput_per_s"] else 0.0
    by_kind: dict[str, int] = {}
    for k in kills:
        by_kind[k.kind] = by_kind.get(k.kind, 0) + 1
    back = [k.back_s for k in kills if k.back_s is not None]
    finished = sorted(r["finished_at"] for r in rows.values() if r["finished_at"])
    for k in kills:  # how long the runtime went without finishing a task after each kill
        k.next_finish_s = next((f - k.at for f in finished if f > k.at), None)
    lost = calm["lost"] + chaos["lost"]
    repeated = calm["repeated"] + chaos["repeated"]
    return {
        "benchmark": "chaos_soak",
        "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "calm": calm,
        "chaos": chaos,
        "throughput_ratio": ratio,
        "kills": {"total": len(kills), "by_kind": by_kind, "not_back": len(kills) - len(back),
                  "back_s": _percentiles(back), "kinds_down_at_end": down,
                  "each": [vars(k) for k in kills]},
        "drain_s": drained_s,
        "targets": {
            "lost": 0, "lost_pass": lost == 0,
            "repeated": 0, "repeated_pass": repeated == 0,
            "min_throughput_ratio": TARGET_RATIO, "ratio_pass": ratio >= TARGET_RATIO,
        },
        "settings": {
            "args": {k: v for k, v in vars(args).items() if k != "loadavg_before"},
            "runtime": settings.model_dump(mode="json", include={
                "workers", "tasks_per_worker", "worker_num_cpus", "lease_s", "sweep_interval_s",
                "max_task_crashes", "ray_num_cpus", "ray_object_store_memory", "store"}),
        },
        "machine": {"nproc": os.cpu_count(), "python": platform.python_version(),
                    "ray": ray.__version__, "platform": platform.platform(),
                    "loadavg_before": args.loadavg_before, "loadavg_after": list(os.getloadavg())},
    }


def _print(console: Console, r: dict[str, Any]) -> None:
    calm, chaos, t, kills = r["calm"], r["chaos"], r["targets"], r["kills"]

    def ok(passed: bool) -> str:
        return "[green]pass[/]" if passed else "[red]miss[/]"

    table = Table(title=f"chaos soak: {r['settings']['args']['rate']} task(s)/s, "
                        f"{calm['duration_s']:.0f}s calm, {chaos['duration_s']:.0f}s chaos "
                        f"({kills['total']} SIGKILLs)")
    table.add_column("figure")
    table.add_column("calm", justify="right")
    table.add_column("chaos", justify="right")
    table.add_column("target", justify="right")
    table.add_row("tasks submitted (accepted)", str(calm["submitted"]), str(chaos["submitted"]), "")
    table.add_row("submits refused", str(calm["refused"]), str(chaos["refused"]), "")
    table.add_row("succeeded", str(calm["succeeded"]), str(chaos["succeeded"]), "")
    table.add_row("lost (failed or not ended)", str(calm["lost"]), str(chaos["lost"]),
                  f"0 {ok(t['lost_pass'])}")
    table.add_row("repeated completed steps", str(calm["repeated"]), str(chaos["repeated"]),
                  f"0 {ok(t['repeated_pass'])}")
    table.add_row("interrupted steps run again (ok)", str(calm["rerun_interrupted"]),
                  str(chaos["rerun_interrupted"]), "")
    table.add_row("tasks run more than once", str(calm["runs_gt_1"]), str(chaos["runs_gt_1"]), "")
    table.add_row("throughput (completed/s in window)", f"{calm['throughput_per_s']:.2f}",
                  f"{chaos['throughput_per_s']:.2f}", "")
    table.add_row("throughput chaos / calm", "", f"{r['throughput_ratio']:.0%}",
                  f">= {t['min_throughput_ratio']:.0%} {ok(t['ratio_pass'])}")
    for label, key in (("task latency p50 / p99", "latency_ms"), ("submit p50 / p99", "submit_ms")):
        table.add_row(label, *(f"{w[key]['p50']:.0f} / {w[key]['p99']:.0f} ms" if w[key] else "-"
                               for w in (calm, chaos)), "")
    table.add_row("longest time without a completion", f"{calm['longest_stall_s']:.1f} s",
                  f"{chaos['longest_stall_s']:.1f} s", "")
    back = kills["back_s"]
    table.add_row("killed actors back (p50 / max)", "",
                  f"{kills['total'] - kills['not_back']}/{kills['total']} "
                  f"({back['p50'] / 1000:.1f} / {back['max'] / 1000:.1f} s)" if back else "-", "")
    console.print(table)
    longest: dict[str, float] = {}
    for k in kills["each"]:
        if k["next_finish_s"] is not None:
            longest[k["kind"]] = max(longest.get(k["kind"], 0.0), k["next_finish_s"])
    console.print("SIGKILLs by kind (longest wait for the next finished task after one): " + ", ".join(
        f"{kind} {n} ({longest[kind]:.1f} s)" if kind in longest else f"{kind} {n}"
        for kind, n in sorted(kills["by_kind"].items())))
    for w in (calm, chaos):
        for error in w["errors"] + w["refusals"]:
            console.print(f"[red]{error}[/]")
    if kills["kinds_down_at_end"]:
        console.print(f"[red]not alive at the end: {', '.join(kills['kinds_down_at_end'])}[/]")


if __name__ == "__main__":
    main()
