"""Big backlog: thousands of queued tasks with large inputs; the Store and the dispatcher stay small.

Issue 10, "what must be shown", item 4: 3,000 queued tasks with 900 KB inputs (2.7 GB of input in
all) while the only worker slot is held by a blocking task, so that every one of them stays queued.
Measured with psutil on the Store actor's and the dispatcher actor's processes: RSS (and USS, the
memory private to the process) idle before the load, peak during the submits and the hold after
them, and at the end; and whether the blocking task's lease ran out meanwhile (a ``requeued`` event
with reason ``lease expired``, or ``runs`` above 1). With ``--drain`` the blocking task is then
released and the backlog runs (each claim loads its task's input, and the worker holds it), with
the peak of that phase too.

The bound, checked (the script exits 1 if it does not hold), while all 2.7 GB of input is queued:
the Store's and the dispatcher's private memory (USS) each grow by less than ``--bound-mb``
(200 MB) over idle, their RSS by less than that plus the object store's size (200 MB here: RSS also
counts the object-store pages an actor maps when it reads a call's arguments or writes its reply,
which are shared and capped by ``ray_object_store_memory``), and no lease expires. Why it holds:
the dispatcher indexes (id, priority, created_at) of each queued task, about 200 bytes each, and
the Store keeps inputs on disk only; what either holds at once is one submit batch's inputs
(``--batch`` tasks, about 15 MB at 16 x 900 KB) a few times over (the call's arguments, the JSON
text, the records it returns), not the backlog. The peak in each quarter of the submits shows it:
flat, not rising with the backlog.

    .venv/bin/python benchmarks/big_backlog.py [--tasks 3000] [--input-kb 900] [--lease-s 5] [--drain]

The data lives in a temporary folder (SQLite, about ``tasks x input-kb`` of it), deleted at the end.
The module is also the app the runtime loads: ``backlog_gate`` (the blocker) and ``backlog_payload``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make `benchmarks` and `runtime` importable here
    sys.path.insert(0, str(ROOT))

from pydantic import BaseModel  # noqa: E402

from runtime import Context, workflow  # noqa: E402

APP = "benchmarks.big_backlog"
OBJECT_STORE_BYTES = 200 * 1024**2
SAMPLE_S = 0.2
MB = 1024**2


# -- the app (loaded by the runtime's actors, which import this module) ---------------------------


class GateIn(BaseModel):
    path: str  # the task holds its worker slot until this file exists
    timeout_s: float = 3600.0


async def _wait_file(path: str, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        await asyncio.sleep(0.1)  # stands in for slow work that ends when the benchmark says
    return True


@workflow
async def backlog_gate(ctx: Context, inp: GateIn) -> bool:
    """Hold the worker slot it runs in until the file ``inp.path`` exists."""
    return await ctx.step("gate", _wait_file, inp.path, inp.timeout_s)


class PayloadIn(BaseModel):
    payload: str


@workflow
async def backlog_payload(ctx: Context, inp: PayloadIn) -> int:
    """One step that reads the (large) input and returns its length: a small output."""
    return await ctx.step("size", len, inp.payload)


# -- measuring -------------------------------------------------------------------------------------


class Sample(NamedTuple):
    t: float
    phase: str
    queued: int  # backlog tasks accepted so far
    who: str
    rss: int
    uss: int  # memory private to the process (RSS less the pages it shares: the object store's)


@dataclass
class Sampler:
    """Samples RSS and USS of some processes every SAMPLE_S in a thread, tagged with a phase and
    with how many backlog tasks were accepted so far."""

    pids: dict[str, int]
    phase: str = "idle"
    queued: int = 0
    samples: list[Sample] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        import psutil

        procs = {who: psutil.Process(pid) for who, pid in self.pids.items()}

        def loop() -> None:
            while not self._stop.is_set():
                t, phase, queued = time.time(), self.phase, self.queued
                for who, proc in procs.items():
                    try:
                        info = proc.memory_full_info()
                    except (psutil.NoSuchProcess, psutil.AccessDenied):
                        continue
                    self.samples.append(Sample(t, phase, queued, who, info.rss, info.uss))
                self._stop.wait(SAMPLE_S)

        self._thread = threading.Thread(target=loop, name="rss-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def summary(self, who: str, tasks: int) -> dict[str, Any]:
        """Per process and metric: idle (median), peak while queued (submit and hold), the value at
        the end of the hold, each phase's peak and end, and the peak in each quarter of the submits
        (growth that followed the backlog would rise quarter by quarter)."""
        mine = [s for s in self.samples if s.who == who]
        out: dict[str, Any] = {"samples": len(mine)}
        for metric in ("rss", "uss"):
            def value(s: Sample, metric: str = metric) -> int:
                return int(getattr(s, metric))

            idle = [value(s) for s in mine if s.phase == "idle"]
            base = statistics.median(idle) if idle else (value(mine[0]) if mine else 0)
            by_phase = {}
            for phase in ("submit", "hold", "list", "drain"):
                xs = [value(s) for s in mine if s.phase == phase]
                if xs:
                    by_phase[phase] = {"peak_mb": max(xs) / MB, "end_mb": xs[-1] / MB}
            peak_queued = max((value(s) for s in mine if s.phase in ("submit", "hold")), default=base)
            quarters = []
            for q in range(4):
                xs = [value(s) for s in mine if s.phase == "submit"
                      and q * tasks / 4 <= s.queued < (q + 1) * tasks / 4]
                quarters.append(max(xs) / MB if xs else None)
            out[metric] = {
                "idle_mb": base / MB,
                "peak_queued_mb": peak_queued / MB,  # while the backlog was submitted and held
                "growth_queued_mb": (peak_queued - base) / MB,
                "after_hold_mb": by_phase.get("hold", {}).get("end_mb"),
                "submit_quarters_peak_mb": quarters,
                "phases": by_phase,
            }
        return out

    def timeline(self, every_s: float = 1.0) -> list[dict[str, Any]]:
        """One sample per process per ``every_s``: what the JSON keeps of the sampling."""
        if not self.samples:
            return []
        t0 = self.samples[0].t
        kept: dict[tuple[str, int], Sample] = {}
        for s in self.samples:
            kept.setdefault((s.who, int((s.t - t0) / every_s)), s)
        return [{"t": round(s.t - t0, 1), "phase": s.phase, "queued": s.queued, "who": s.who,
                 "rss_mb": round(s.rss / MB, 1), "uss_mb": round(s.uss / MB, 1)}
                for s in sorted(kept.values(), key=lambda s: (s.t, s.who))]


def _pid(name: str, namespace: str) -> int:
    import ray
    from ray._private import state

    handle = ray.get_actor(name, namespace=namespace)
    info = dict(state.actors(actor_id=handle._actor_id.hex()) or {})
    if info.get("State") != "ALIVE" or not info.get("Pid"):
        raise RuntimeError(f"actor {name} is not alive: {info.get('State')}")
    return int(info["Pid"])


def _mappings(pid: int, top: int = 4) -> list[dict[str, Any]]:
    """The process's largest mappings by RSS (what its RSS is made of: heap, the object store...)."""
    import psutil

    try:
        maps = psutil.Process(pid).memory_maps(grouped=True)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return []
    return [{"path": m.path, "rss_mb": round(m.rss / MB, 1),
             "private_mb": round((m.private_clean + m.private_dirty) / MB, 1)}
            for m in sorted(maps, key=lambda m: -m.rss)[:top]]


def _db_bytes(database: Path) -> int:
    return sum(p.stat().st_size for p in database.parent.glob(database.name + "*") if p.is_file())


def _sql(database: Path, query: str, *args: Any) -> list[tuple[Any, ...]]:
    """A read-only look at the Store's SQLite file (WAL: it does not block the Store)."""
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=30)
    try:
        return conn.execute(query, args).fetchall()
    finally:
        conn.close()


# -- the run ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    import ray
    from rich.console import Console

    from benchmarks.common import write_result
    from runtime import Runtime, Settings, TaskStatus
    from runtime.actors.cluster import connect
    from runtime.actors.handles import actor_names

    console = Console(width=110)
    args.loadavg_before = list(os.getloadavg())
    input_bytes = args.input_kb * 1024
    need = args.tasks * input_bytes * (1.3 if not args.drain else 1.6) + 1024**3
    data_root = Path(args.data_root or tempfile.gettempdir())
    free = shutil.disk_usage(data_root).free
    if free < need:
        console.print(f"[red]{data_root}: {free / 1024**3:.1f} GiB free, this run needs about "
                      f"{need / 1024**3:.1f} GiB[/]")
        return 2
    if args.loadavg_before[0] > 2.0:
        console.print(f"[yellow]load average {args.loadavg_before[0]:.1f} on {os.cpu_count()} CPUs: "
                      "other work will slow this run (memory figures are not affected much)[/]")
    # Ray workers of a local cluster inherit the driver's environment: this is how they find this app.
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)

    tmp = Path(tempfile.mkdtemp(prefix="raysquad-backlog-", dir=data_root))
    result: dict[str, Any] = {}
    try:
        gate_file = tmp / "gate.open"
        settings = Settings(
            data_dir=tmp / "state", namespace=f"backlog-{uuid.uuid4().hex[:8]}",
            workers=1, tasks_per_worker=1, lease_s=args.lease_s, sweep_interval_s=0.5,
            queue_capacity=max(10_000, args.tasks + 10),
            tenant_queued_tasks=max(10_000, args.tasks + 10),  # one tenant holds the backlog
            tenant_queued_bytes=max(4 * 1024**3, 2 * args.tasks * input_bytes),
            max_input_bytes=max(1 << 20, input_bytes + 4096),
            ray_num_cpus=args.num_cpus, ray_object_store_memory=OBJECT_STORE_BYTES,
        )
        started_ray = connect(settings)
        try:
            t0 = time.monotonic()
            rt = Runtime.start(settings, apps=[APP])
            console.print(f"runtime up in {time.monotonic() - t0:.1f} s; data in {tmp}")
            try:
                result = _run(rt, args, settings, gate_file, console, actor_names, TaskStatus)
            finally:
                rt.stop(shutdown_ray=False)
        finally:
            if started_ray:
                ray.shutdown()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _print(console, result)
    write_result(console, args.json, result)
    t = result["targets"]
    if not t["pass"]:
        console.print("[red]bound not met: " + "; ".join(t["misses"]) + "[/]")
        return 1
    return 0


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--tasks", type=int, default=3000, help="tasks queued behind the blocker")
    p.add_argument("--input-kb", type=int, default=900, help="size of each task's input (KiB, as JSON)")
    p.add_argument("--batch", type=int, default=16,
                   help="submits in flight at once (they reach the Store as one call, one transaction)")
    p.add_argument("--lease-s", type=float, default=5.0, help="task lease (renewed every third of it)")
    p.add_argument("--hold-s", type=float, default=15.0,
                   help="after the submits, keep the backlog queued this long (leases, reconciles)")
    p.add_argument("--list-limit", type=int, default=0,
                   help="then list this many queued tasks through the client, as GET "
                        "/v1/tasks?status=queued&limit=500 does, and measure that (not in the bound)")
    p.add_argument("--drain", action="store_true",
                   help="then release the blocker and let the backlog run, measuring that too")
    p.add_argument("--drain-timeout-s", type=float, default=1800.0)
    p.add_argument("--bound-mb", type=float, default=200.0,
                   help="the most the Store's or the dispatcher's private memory (USS) may grow over "
                        "idle while the backlog is queued; RSS may grow by that plus the object store")
    p.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local Ray cluster")
    p.add_argument("--data-root", default=None, help="where the temporary data folder goes")
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "big_backlog.json"))
    return p.parse_args(argv)


def _run(rt: Any, args: argparse.Namespace, settings: Any, gate_file: Path, console: Any,
         actor_names: Any, TaskStatus: Any) -> dict[str, Any]:
    client = rt.client()
    ns = settings.namespace
    db = settings.database_path
    blocker = client.submit("backlog_gate", {"path": str(gate_file)})
    deadline = time.monotonic() + 120
    while client.get(blocker.id).status is not TaskStatus.RUNNING:
        if time.monotonic() > deadline:
            raise RuntimeError("the blocking task did not start within 120 s")
        time.sleep(0.2)
    workers = actor_names(ns, "worker:")
    pids = {"store": _pid("store", ns), "dispatcher": _pid("dispatcher", ns)}
    if workers:
        pids["worker"] = _pid(workers[0], ns)
    sampler = Sampler(pids)
    sampler.start()
    try:
        time.sleep(3.0)  # idle: the runtime up, the blocker running, nothing queued
        sampler.phase = "submit"
        submit = asyncio.run(_submit(rt.async_client(), args, sampler))
        sampler.phase = "hold"
        db_after_submit = _db_bytes(db)
        time.sleep(args.hold_s)
        maps = {who: _mappings(pid) for who, pid in pids.items() if who != "worker"}
        stats = client.queue_stats()
        blocker_now = client.get(blocker.id)
        blocker_events = client.wait_events(blocker.id, 0, 0.0)
        queued = _sql(db, "SELECT count(*) FROM tasks WHERE status = 'queued'")[0][0]
        lease_expired = [e for e in blocker_events if e.kind == "requeued"]
        listed: dict[str, Any] | None = None
        if args.list_limit:
            sampler.phase = "list"
            t0 = time.monotonic()
            n = len(client.list(TaskStatus.QUEUED, limit=args.list_limit))
            listed = {"limit": args.list_limit, "tasks": n, "seconds": time.monotonic() - t0}
            time.sleep(3.0)
        drain: dict[str, Any] | None = None
        if args.drain:
            sampler.phase = "drain"
            gate_file.touch()
            drain = _drain(db, args.drain_timeout_s, console)
    finally:
        sampler.stop()
    expired_all = _sql(db, "SELECT count(*) FROM events WHERE kind = 'requeued' "
                           "AND data LIKE '%lease expired%'")[0][0]
    rerun = _sql(db, "SELECT count(*) FROM tasks WHERE runs > 1")[0][0]
    mem = {who: sampler.summary(who, args.tasks) for who in pids}
    bounds = _bounds(args)
    misses = []
    for who in ("store", "dispatcher"):
        for metric in ("uss", "rss"):
            growth = mem[who][metric]["growth_queued_mb"]
            if growth >= bounds[metric]:
                misses.append(f"{who} {metric.upper()} grew {growth:.0f} MB "
                              f"(bound {bounds[metric]:.0f} MB)")
    if lease_expired or blocker_now.runs != 1:
        misses.append(f"the blocker's lease ran out: runs {blocker_now.runs}, "
                      f"requeued events {[e.data for e in lease_expired]}")
    if expired_all:
        misses.append(f"{expired_all} 'lease expired' requeue(s) in the Store")
    if submit["accepted"] != args.tasks:
        misses.append(f"{args.tasks - submit['accepted']} submit(s) refused: {submit['refusals'][:3]}")
    if queued != submit["accepted"]:
        misses.append(f"{queued} tasks queued in the Store after the submits, not {submit['accepted']}")
    if drain is not None and drain["not_ended"]:
        misses.append(f"{drain['not_ended']} task(s) did not end in the drain")
    return {
        "benchmark": "big_backlog",
        "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "tasks": args.tasks,
        "input_bytes": args.input_kb * 1024,
        "queued_input_bytes": _sql(db, "SELECT coalesce(sum(input_bytes), 0) FROM tasks "
                                       "WHERE workflow = 'backlog_payload'")[0][0],
        "submit": submit,
        "queued_after_submit": queued,
        "dispatcher_queue": stats,
        "db_bytes_after_submit": db_after_submit,
        "db_bytes_end": _db_bytes(db),
        "blocker": {"runs": blocker_now.runs, "status": str(blocker_now.status),
                    "requeued": [e.data for e in lease_expired], "events": len(blocker_events)},
        "lease_expired_requeues": expired_all,
        "tasks_run_more_than_once": rerun,
        "memory": mem,
        "mappings_after_hold": maps,
        "timeline": sampler.timeline(),
        "list": listed,
        "drain": drain,
        "targets": {"uss_growth_mb": bounds["uss"], "rss_growth_mb": bounds["rss"],
                    "pass": not misses, "misses": misses},
        "settings": {
            "args": {k: v for k, v in vars(args).items() if k != "loadavg_before"},
            "runtime": settings.model_dump(mode="json", include={
                "workers", "tasks_per_worker", "lease_s", "sweep_interval_s", "queue_capacity",
                "tenant_queued_bytes", "max_input_bytes", "ray_num_cpus", "ray_object_store_memory",
                "store", "sqlite_synchronous"}),
        },
        "machine": {"nproc": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform(), "loadavg_before": args.loadavg_before,
                    "loadavg_after": list(os.getloadavg())},
    }


def _bounds(args: argparse.Namespace) -> dict[str, float]:
    """The most the Store's or the dispatcher's memory may grow over idle while the backlog is queued:
    private memory (USS) by ``--bound-mb``; RSS by that plus the object store's size, whose shared
    pages an actor maps when it reads arguments and writes replies through it."""
    return {"uss": args.bound_mb, "rss": args.bound_mb + OBJECT_STORE_BYTES / MB}


async def _submit(client: Any, args: argparse.Namespace, sampler: Sampler) -> dict[str, Any]:
    """Submit the backlog, ``args.batch`` at a time (one group commit, one Store call each)."""
    base = "x" * (args.input_kb * 1024 - len('{"payload": ""}') - 8)
    accepted = 0
    refusals: list[str] = []
    batch_s: list[float] = []

    async def one(i: int) -> None:
        nonlocal accepted
        try:
            await client.submit("backlog_payload", {"payload": f"{i:08d}{base}"})
            accepted += 1
            sampler.queued = accepted
        except Exception as e:  # noqa: BLE001 - a refused submit is a figure
            refusals.append(f"{type(e).__name__}: {e}")

    t0 = time.monotonic()
    for start in range(0, args.tasks, args.batch):
        b0 = time.monotonic()
        await asyncio.gather(*(one(i) for i in range(start, min(args.tasks, start + args.batch))))
        batch_s.append(time.monotonic() - b0)
    elapsed = time.monotonic() - t0
    xs = sorted(batch_s)
    return {"accepted": accepted, "refused": len(refusals), "refusals": sorted(set(refusals))[:10],
            "seconds": elapsed, "tasks_per_s": accepted / elapsed if elapsed else 0.0,
            "mb_per_s": accepted * args.input_kb / 1024 / elapsed if elapsed else 0.0,
            "batch_ms": {"p50": 1000 * xs[len(xs) // 2], "max": 1000 * xs[-1]} if xs else {}}


def _drain(db: Path, timeout_s: float, console: Any) -> dict[str, Any]:
    t0 = time.monotonic()
    rows: dict[str, int] = {}
    while time.monotonic() - t0 < timeout_s:
        rows = dict(_sql(db, "SELECT status, count(*) FROM tasks GROUP BY status"))
        if not rows.get("queued") and not rows.get("running") and not rows.get("waiting"):
            break
        time.sleep(1.0)
    elapsed = time.monotonic() - t0
    done = rows.get("succeeded", 0)
    console.print(f"drain: {rows} after {elapsed:.0f} s")
    return {"seconds": elapsed, "statuses": rows, "tasks_per_s": done / elapsed if elapsed else 0.0,
            "not_ended": rows.get("queued", 0) + rows.get("running", 0) + rows.get("waiting", 0)}


# -- report ----------------------------------------------------------------------------------------


def _print(console: Any, r: dict[str, Any]) -> None:
    from rich.table import Table

    if not r:
        return
    s, mem, t = r["submit"], r["memory"], r["targets"]

    def ok(passed: bool) -> str:
        return "[green]pass[/]" if passed else "[red]miss[/]"

    table = Table(title=f"big backlog: {r['tasks']} queued tasks x {r['input_bytes'] / 1024:.0f} KiB "
                        f"input ({r['queued_input_bytes'] / 1024**3:.2f} GiB)")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_column("bound", justify="right")
    table.add_row("submitted (accepted / refused)", f"{s['accepted']} / {s['refused']}", "")
    table.add_row("submit time, rate", f"{s['seconds']:.1f} s, {s['tasks_per_s']:.1f} tasks/s, "
                  f"{s['mb_per_s']:.0f} MiB/s", "")
    if s["batch_ms"]:
        table.add_row(f"one batch of {r['settings']['args']['batch']} (p50 / max)",
                      f"{s['batch_ms']['p50']:.0f} / {s['batch_ms']['max']:.0f} ms", "")
    table.add_row("queued in the Store / the dispatcher's index",
                  f"{r['queued_after_submit']} / {r['dispatcher_queue'].get('depth')}", "")
    for who in ("store", "dispatcher", "worker"):
        if who not in mem:
            continue
        for metric in ("rss", "uss"):
            m = mem[who][metric]
            bound = t[f"{metric}_growth_mb"] if who != "worker" else None
            after = m["after_hold_mb"]
            table.add_row(
                f"{who} {metric.upper()} idle / peak / after (growth)",
                f"{m['idle_mb']:.0f} / {m['peak_queued_mb']:.0f} / "
                f"{after:.0f} MB (+{m['growth_queued_mb']:.0f})" if after is not None else "-",
                f"+{bound:.0f} MB {ok(m['growth_queued_mb'] < bound)}" if bound is not None else "")
        quarters = mem[who]["uss"]["submit_quarters_peak_mb"]
        table.add_row(f"{who} USS peak in each quarter of the submits",
                      " / ".join(f"{q:.0f}" if q is not None else "-" for q in quarters) + " MB", "")
    table.add_row("DB file after the submits (with WAL)", f"{r['db_bytes_after_submit'] / 1024**3:.2f} GiB",
                  "")
    b = r["blocker"]
    table.add_row("blocker: runs, lease-expired requeues", f"{b['runs']}, {len(b['requeued'])}",
                  f"1, 0 {ok(b['runs'] == 1 and not b['requeued'])}")
    table.add_row("'lease expired' requeues in the Store", str(r["lease_expired_requeues"]),
                  f"0 {ok(r['lease_expired_requeues'] == 0)}")
    listed = r.get("list")
    if listed is not None:
        table.add_row(f"list {listed['limit']} queued tasks (client.list): took",
                      f"{listed['tasks']} tasks, {listed['seconds']:.1f} s", "")
        for who in ("store", "dispatcher"):
            ph = mem[who]["rss"]["phases"].get("list"), mem[who]["uss"]["phases"].get("list")
            if ph[0] and ph[1]:
                table.add_row(f"{who} RSS / USS peak during the list",
                              f"{ph[0]['peak_mb']:.0f} / {ph[1]['peak_mb']:.0f} MB", "")
    d = r["drain"]
    if d is not None:
        table.add_row("drain: time, rate", f"{d['seconds']:.0f} s, {d['tasks_per_s']:.1f} tasks/s", "")
        for who in ("store", "dispatcher", "worker"):
            if who in mem and "drain" in mem[who]["rss"]["phases"]:
                p = mem[who]["rss"]["phases"]["drain"]
                table.add_row(f"{who} RSS peak / end during the drain",
                              f"{p['peak_mb']:.0f} / {p['end_mb']:.0f} MB", "")
        table.add_row("tasks run more than once", str(r["tasks_run_more_than_once"]), "")
    console.print(table)


if __name__ == "__main__":
    sys.exit(main())
