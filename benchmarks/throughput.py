"""Throughput: trivial 1-step and 5-step tasks over HTTP, run to the end, against Celery with Redis;
and bulk submits accepted per second, every one durable.

Three parts, one after the other in one invocation (never two servers at once):

- ``celery``: the peer (benchmarks/celery_trivial.py). W ``celery worker`` processes (prefork,
  ``--celery-concurrency`` pool processes each, Celery's default prefetch multiplier 4) on the local
  Redis, started before the clock. k=1 is one Celery task per workflow; k=5 a ``chain`` of 5, each
  link its own task, as each raysquad step is its own checkpoint. The driver submits from a pool of
  ``--celery-submitters`` threads (4 was faster than a plain loop and than 32 threads in small trials
  here); each workflow's last task pushes its end time to a Redis list. Durability: Celery keeps its
  queue and results in Redis, in memory, with ``acks_late`` off (a task is gone once a worker takes
  it); unless Redis runs with ``appendfsync always`` (this one does not), an acknowledged submit can
  be lost to a crash of Redis or of the machine.
- ``raysquad``: ``python -m serve.cli up --app benchmarks.apps`` on a fresh local Ray cluster,
  ``--workers`` workers of ``--tasks-per-worker`` slots, its Store a SQLite file with
  ``RAYSQUAD_SQLITE_SYNCHRONOUS=FULL`` (the default: a submit is acknowledged after an fsync of its
  transaction, so it survives power loss). For k in (1, 5), N tasks of workflow ``trivial_steps``
  (k checkpointed trivial steps) are submitted twice: through ``POST /v1/tasks:batch`` in chunks of
  ``--batch`` from one httpx client, one request after another (``bulk``, the headline), and as
  single ``POST /v1/tasks`` from ``--conns`` concurrent connections of an httpx AsyncClient
  (``single``). The clock runs from the first submit to the latest ``finished_at`` in the Store,
  which is polled (read-only) until every accepted task has succeeded. A few tasks run first, not
  timed, so that workers are warm. With ``--metrics`` (the default), the server also serves Ray's
  Prometheus endpoint (``RAYSQUAD_RAY_METRICS_EXPORT_PORT``), and the runtime's counters of actor
  calls (``ray_raysquad_actor_calls_total``, by actor kind and method) and Store transactions give
  calls and transactions per task: each is read ``--metrics-flush-s`` after the workers' count of
  finished tasks is complete (Ray exports each process's metrics every 10 s), and the idle
  background (sweeps, polls: measured over ``--metrics-idle-s`` with nothing submitted, before the
  first run) is taken off each counter's delta over the same span. Only the runs' sizes make these
  exact enough: at ``--quick`` sizes the idle background is most of a delta.
- ``bulk``: a server with one worker whose one slot a blocking task (benchmarks/hold_app.py) holds,
  so that nothing submitted runs: the submit path alone. ``--bulk-clients`` threads POST batches of
  ``--bulk-size`` tasks for ``--bulk-duration-s`` (after ``--bulk-warmup-s`` untimed); accepted
  tasks per second counts the 202 items. After the server stops, every accepted id must be a queued
  row of its SQLite file (durable), and the queued rows must number the accepted tasks.

Figures: ``tasks_per_s`` = N / (latest finished_at - first submit), for workflows of k steps (Celery:
N workflows over the same span); ``celery_ratio`` = raysquad bulk tasks/s / Celery tasks/s, for k=1
and k=5 (target at least 1.5x; ``celery_ratio_single`` is the same with single submits);
``bulk_tasks_per_s``: accepted per second with execution held (target at least 5,000), with the p50
and p99 of one batch request's latency. Lost tasks (accepted but never succeeded, or not in the Store)
must be 0. Everything runs on this machine's cores together: the submitting client, the server (Ray
and its actors) or the Celery workers and Redis. The script exits 0 whatever the figures; the JSON
(default benchmarks/results/throughput.json) records pass or miss per target.

    PYTHONPATH=. .venv/bin/python benchmarks/throughput.py [--quick] [--n1 3000] [--n5 1500]
        [--batch 500] [--conns 32] [--workers 2] [--tasks-per-worker 64] [--celery-workers 2]
        [--parts celery,raysquad,bulk] [--no-metrics]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make `benchmarks.*` importable here
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import ray  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from benchmarks.celery_trivial import run_celery  # noqa: E402
from benchmarks.common import write_result  # noqa: E402
from benchmarks.hops import Snapshot, idle_rates, per_task, read_counters, settle, wait_until  # noqa: E402
from benchmarks.submit_latency import Server, Target, _free_port, hold_worker_slot  # noqa: E402

WORKFLOW = "trivial_steps"  # benchmarks/apps.py: k trivial checkpointed steps
KS = (1, 5)
PARTS = ("celery", "raysquad", "bulk")
TARGET_CELERY_RATIO = 1.5
TARGET_BULK_PER_S = 5000.0
START_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 60.0
POLL_S = 0.2

def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = _parse(argv)
    console = Console(width=120)
    loadavg_before = list(os.getloadavg())
    t_start = time.monotonic()
    result: dict[str, Any] = {"benchmark": "throughput", "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                              "config": _config(args)}
    n = {1: args.n1, 5: args.n5}
    with tempfile.TemporaryDirectory(prefix="raysquad-throughput-") as tmp:
        if "celery" in args.parts:
            console.print(f"[bold]Celery[/]: {args.celery_workers} prefork workers x "
                          f"{args.celery_concurrency} ...")
            result["celery"] = run_celery(
                list(KS), n, workers=args.celery_workers, concurrency=args.celery_concurrency,
                prefetch_multiplier=args.celery_prefetch, submitters=args.celery_submitters,
                warmup=args.warmup, ignore_result=args.celery_ignore_result, timeout_s=args.timeout_s,
                log=console.print)
        if "raysquad" in args.parts:
            console.print(f"[bold]raysquad[/]: {args.workers} workers x {args.tasks_per_worker} ...")
            result["raysquad"] = run_raysquad(args, n, Path(tmp) / "raysquad", console)
        if "bulk" in args.parts:
            console.print(f"[bold]bulk submits[/], execution held: {args.bulk_clients} clients x "
                          f"{args.bulk_size} tasks per request ...")
            result["bulk"] = run_bulk(args, Path(tmp) / "bulk", console)
    result.update(_verdict(result))
    result["config"]["wall_s"] = round(time.monotonic() - t_start, 1)
    import celery

    result["machine"] = {"nproc": os.cpu_count(), "python": platform.python_version(),
                         "ray": ray.__version__, "celery": celery.__version__,
                         "platform": platform.platform(), "loadavg_before": loadavg_before,
                         "loadavg_after": list(os.getloadavg())}
    _print(console, result)
    return write_result(console, args.json, result)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true",
                   help="a smoke run: 200 and 100 tasks, batches of 100, 2 s of bulk submits")
    p.add_argument("--n1", type=int, default=3000, help="1-step tasks (and Celery workflows)")
    p.add_argument("--n5", type=int, default=1500, help="5-step tasks (and Celery chains of 5)")
    p.add_argument("--batch", type=int, default=500, help="tasks per POST /v1/tasks:batch (bulk)")
    p.add_argument("--conns", type=int, default=32, help="concurrent connections (single submits)")
    p.add_argument("--warmup", type=int, default=50, help="untimed tasks before each system's runs")
    p.add_argument("--workers", type=int, default=2, help="raysquad workers (RAYSQUAD_WORKERS)")
    p.add_argument("--tasks-per-worker", type=int, default=64,
                   help="tasks one raysquad worker runs at once (RAYSQUAD_TASKS_PER_WORKER)")
    p.add_argument("--sqlite-synchronous", default="FULL", choices=["FULL", "EXTRA", "NORMAL"],
                   help="the Store's (RAYSQUAD_SQLITE_SYNCHRONOUS); FULL, the default, for the headline")
    p.add_argument("--celery-workers", type=int, default=2, help="Celery worker processes")
    p.add_argument("--celery-concurrency", type=int, default=2, help="pool processes per Celery worker")
    p.add_argument("--celery-prefetch", type=int, default=4, help="Celery's prefetch multiplier")
    p.add_argument("--celery-submitters", type=int, default=4,
                   help="threads submitting Celery workflows (1: a plain loop)")
    p.add_argument("--celery-ignore-result", action="store_true",
                   help="task_ignore_result=True (default: Celery's, results kept in Redis)")
    p.add_argument("--bulk-clients", type=int, default=4, help="threads POSTing batches (bulk part)")
    p.add_argument("--bulk-size", type=int, default=1000, help="tasks per batch (bulk part; at most 1000)")
    p.add_argument("--bulk-duration-s", type=float, default=10.0, help="measured seconds (bulk part)")
    p.add_argument("--bulk-warmup-s", type=float, default=2.0, help="untimed seconds first (bulk part)")
    p.add_argument("--metrics", action=argparse.BooleanOptionalAction, default=True,
                   help="actor calls and Store transactions per task, from Ray's Prometheus endpoint")
    p.add_argument("--metrics-flush-s", type=float, default=12.0,
                   help="counters are read this long after the last task is counted (Ray exports "
                        "each process's metrics every 10 s)")
    p.add_argument("--metrics-idle-s", type=float, default=30.0,
                   help="seconds with nothing submitted, for the counters' idle background")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {list(PARTS)}")
    p.add_argument("--timeout-s", type=float, default=600.0, help="give up on one run after this")
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "throughput.json"))
    args = p.parse_args(argv)
    if args.quick:
        args.n1, args.n5, args.warmup = min(args.n1, 200), min(args.n5, 100), min(args.warmup, 20)
        args.batch = min(args.batch, 100)
        args.bulk_duration_s, args.bulk_warmup_s = min(args.bulk_duration_s, 2.0), 0.5
        args.metrics_idle_s = min(args.metrics_idle_s, 20.0)
    args.parts = [x.strip() for x in args.parts.split(",") if x.strip()]
    if unknown := set(args.parts) - set(PARTS):
        p.error(f"unknown parts {sorted(unknown)}; known: {list(PARTS)}")
    if not 1 <= args.batch <= 1000 or not 1 <= args.bulk_size <= 1000:
        p.error("--batch and --bulk-size must be 1 to 1000 (the batch route's limit)")
    return args


def _config(args: argparse.Namespace) -> dict[str, Any]:
    return {**{k: v for k, v in vars(args).items() if k != "json"}, "workflow": WORKFLOW,
            "store": f"SQLite, synchronous={args.sqlite_synchronous}",
            "clock": "first submit -> latest finished_at (raysquad) or last task's end (Celery)"}


def _server_env(args: argparse.Namespace, **more: str) -> dict[str, str]:
    return {"RAYSQUAD_QUEUE_CAPACITY": "200000", "RAYSQUAD_RAY_INCLUDE_DASHBOARD": "false",
            "RAYSQUAD_SQLITE_SYNCHRONOUS": args.sqlite_synchronous, **more}


def _body(k: int) -> dict[str, Any]:
    return {"workflow": WORKFLOW, "input": {"k": k}}


# -- raysquad, end to end ---------------------------------------------------------------------------


def run_raysquad(args: argparse.Namespace, n: dict[int, int], work: Path,
                 console: Console) -> dict[str, Any]:
    """One server; for each k, a bulk run and a single-submit run, each to its last task's end."""
    work.mkdir(parents=True)
    port = _free_port()
    metrics_port = _free_port() if args.metrics else None
    env = _server_env(args, RAYSQUAD_WORKERS=str(args.workers),
                      RAYSQUAD_TASKS_PER_WORKER=str(args.tasks_per_worker))
    server = Server.start(Target("raysquad", "raysquad", "raysquad", env), port, work, metrics_port)
    db = work / "data" / "raysquad.db"
    base = f"http://127.0.0.1:{port}"
    runs: dict[str, Any] = {}
    accepted: dict[str, list[str]] = {}
    first_t0 = time.time()
    try:
        start_s = server.wait_healthy(START_TIMEOUT_S)
        console.print(f"  up in {start_s:.1f} s on port {port}")
        store = Store(db)
        try:
            finished = 0
            if args.warmup:
                t = time.time()  # both submit paths, so that neither run pays a first call
                ids, _ = submit_bulk(base, 1, args.warmup, args.batch)
                more, _ = asyncio.run(submit_single(base, 1, args.warmup, min(args.conns, args.warmup)))
                store.wait_done(ids + more, t, args.timeout_s)
                finished += len(ids) + len(more)
            first_t0 = time.time()
            idle: dict[tuple[str, str, str], float] = {}
            snap: Snapshot | None = None
            if metrics_port:
                first, t_first = settle(metrics_port, finished, args.metrics_flush_s, args.timeout_s)
                wait_until(t_first + args.metrics_idle_s)
                snap, t_snap = read_counters(metrics_port), time.monotonic()
                idle = idle_rates(first, snap, t_snap - t_first)
                idle_info = {f"{who}.{method}" if method else f"{name}:{who}": round(rate, 2)
                             for (name, who, method), rate in sorted(idle.items())}
                console.print(f"  idle background: {sum(idle.values()):.1f} counts/s over "
                              f"{t_snap - t_first:.0f} s")
            for k in KS:
                for mode in ("bulk", "single"):
                    name = f"k{k}-{mode}"
                    run = e2e_run(base, store, k, n[k], mode, args)
                    accepted[name] = run.pop("_ids")
                    finished += run["tasks"]
                    if metrics_port and snap is not None:
                        after, t_after = settle(metrics_port, finished, args.metrics_flush_s,
                                                args.timeout_s)
                        run["per_task"] = per_task(snap, after, t_after - t_snap, idle, run["tasks"])
                        snap, t_snap = after, t_after
                    runs[name] = run
                    console.print(f"  k={k} {mode}: {run['tasks']} tasks in {run['elapsed_s']:.2f} s = "
                                  f"{run['tasks_per_s']:.0f}/s (submitting took {run['submit_s']:.2f} s)"
                                  + (f", {run['per_task']['actor_calls']:.1f} actor calls and "
                                     f"{run['per_task']['store_transactions']:.2f} Store transactions "
                                     "per task" if "per_task" in run else ""))
        finally:
            store.close()
    finally:
        clean = server.stop(STOP_TIMEOUT_S)
    lost = verify_succeeded(db, accepted, first_t0)
    for name, missing in lost.items():
        runs[name]["lost"] = missing
    console.print(f"  Store after the stop: lost {sum(lost.values())} of {sum(map(len, accepted.values()))}")
    return {"start_s": start_s, "clean_stop": clean, "port": port, "metrics_port": metrics_port,
            "workers": args.workers, "tasks_per_worker": args.tasks_per_worker, "runs": runs,
            **({"idle_counts_per_s": idle_info} if metrics_port else {})}


def e2e_run(base: str, store: Store, k: int, n: int, mode: str, args: argparse.Namespace) -> dict[str, Any]:
    """Submit n tasks of k steps (bulk or single), wait for all to succeed; time first submit -> last end."""
    t0 = time.time()
    if mode == "bulk":
        ids, refused = submit_bulk(base, k, n, args.batch)
    else:
        ids, refused = asyncio.run(submit_single(base, k, n, args.conns))
    submit_s = time.time() - t0
    if refused:
        raise RuntimeError(f"k={k} {mode}: submits refused: {dict(refused)}")
    done = store.wait_done(ids, t0, args.timeout_s)
    elapsed = done["last_finished_at"] - t0
    return {"k": k, "mode": mode, "tasks": len(ids), "elapsed_s": elapsed, "tasks_per_s": len(ids) / elapsed,
            "steps_per_s": len(ids) * k / elapsed, "submit_s": submit_s, "submit_per_s": len(ids) / submit_s,
            "first_created_after_s": done["first_created_at"] - t0,
            "submit": (f"POST /v1/tasks:batch, {args.batch} per request, one after another" if mode == "bulk"
                       else f"POST /v1/tasks, {args.conns} concurrent connections"),
            "_ids": ids}


def submit_bulk(base: str, k: int, n: int, batch: int) -> tuple[list[str], Counter[int]]:
    """n tasks through the batch route, ``batch`` per request, one request after another."""
    ids: list[str] = []
    refused: Counter[int] = Counter()
    with httpx.Client(base_url=base, timeout=120.0) as client:
        for start in range(0, n, batch):
            tasks = [_body(k)] * min(batch, n - start)
            reply = client.post("/v1/tasks:batch", json={"tasks": tasks}).raise_for_status().json()
            for item in reply["items"]:
                if item["status"] == 202:
                    ids.append(item["id"])
                else:
                    refused[item["status"]] += 1
    return ids, refused


async def submit_single(base: str, k: int, n: int, conns: int) -> tuple[list[str], Counter[int]]:
    """n single submits from ``conns`` concurrent connections."""
    ids: list[str] = []
    refused: Counter[int] = Counter()
    body = _body(k)
    todo = iter(range(n))
    limits = httpx.Limits(max_connections=conns, max_keepalive_connections=conns)
    async with httpx.AsyncClient(base_url=base, timeout=120.0, limits=limits) as client:
        async def one_connection() -> None:
            for _ in todo:  # shared: each coroutine takes the next task number
                reply = await client.post("/v1/tasks", json=body)
                if reply.status_code == 202:
                    ids.append(reply.json()["id"])
                else:
                    refused[reply.status_code] += 1

        await asyncio.gather(*(one_connection() for _ in range(conns)))
    return ids, refused


class Store:
    """The server's SQLite file, read-only, polled while the server writes it."""

    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)

    def close(self) -> None:
        self.conn.close()

    def wait_done(self, ids: list[str], since: float, timeout_s: float) -> dict[str, float]:
        """Poll until every task created since ``since`` (these ``ids``) has succeeded; fail if one
        ends otherwise or the deadline passes."""
        deadline = time.monotonic() + timeout_s
        while True:
            rows = dict(self.conn.execute(
                "SELECT status, count(*) FROM tasks WHERE created_at >= ? GROUP BY status", (since,)))
            ended_badly = {s: c for s, c in rows.items() if s in ("failed", "cancelled")}
            if ended_badly:
                raise RuntimeError(f"tasks ended otherwise than succeeded: {ended_badly}")
            if rows.get("succeeded", 0) >= len(ids):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"not all {len(ids)} tasks succeeded within {timeout_s} s: {rows}")
            time.sleep(POLL_S)
        count, last, first = self.conn.execute(
            "SELECT count(*), max(finished_at), min(created_at) FROM tasks "
            "WHERE status = 'succeeded' AND created_at >= ?", (since,)).fetchone()
        return {"succeeded": count, "last_finished_at": last, "first_created_at": first}


def verify_succeeded(db: Path, accepted: dict[str, list[str]], since: float) -> dict[str, int]:
    """After the server stopped: per run, how many accepted ids are not a succeeded row (lost)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        status = dict(conn.execute("SELECT id, status FROM tasks WHERE created_at >= ?", (since - 1,)))
    finally:
        conn.close()
    return {name: sum(1 for i in ids if status.get(i) != "succeeded") for name, ids in accepted.items()}


# -- bulk submits, execution held -------------------------------------------------------------------


def run_bulk(args: argparse.Namespace, work: Path, console: Console) -> dict[str, Any]:
    """Batches from several clients for a while, with the only worker slot held; then check the Store."""
    work.mkdir(parents=True)
    port = _free_port()
    env = _server_env(args, RAYSQUAD_WORKERS="1", RAYSQUAD_TASKS_PER_WORKER="1")
    server = Server.start(Target("raysquad-held", "raysquad, execution held", "raysquad", env, hold=True),
                          port, work)
    base = f"http://127.0.0.1:{port}"
    ids: list[str] = []
    try:
        start_s = server.wait_healthy(START_TIMEOUT_S)
        console.print(f"  up in {start_s:.1f} s on port {port}")
        hold_worker_slot(f"{base}/v1/tasks")
        if args.bulk_warmup_s > 0:
            _bulk_phase(base, args, args.bulk_warmup_s, ids)
        phase = _bulk_phase(base, args, args.bulk_duration_s, ids)
    finally:
        clean = server.stop(STOP_TIMEOUT_S)
    conn = sqlite3.connect(f"file:{work / 'data' / 'raysquad.db'}?mode=ro", uri=True)
    try:
        queued = {r[0] for r in conn.execute("SELECT id FROM tasks WHERE status = 'queued'")}
    finally:
        conn.close()
    missing = len(set(ids) - queued)
    phase.update({"start_s": start_s, "clean_stop": clean, "accepted_all_phases": len(ids),
                  "queued_rows_after_stop": len(queued), "lost": missing,
                  "durable": missing == 0 and len(queued) == len(ids)})
    console.print(f"  {phase['accepted']} accepted in {phase['elapsed_s']:.2f} s = "
                  f"{phase['tasks_per_s']:.0f}/s; batch p50 {phase['p50_ms']:.0f} ms, "
                  f"p99 {phase['p99_ms']:.0f} ms; after the stop {len(queued)} queued rows for "
                  f"{len(ids)} accepted, lost {missing}")
    return phase


def _bulk_phase(base: str, args: argparse.Namespace, duration_s: float, ids: list[str]) -> dict[str, Any]:
    """``bulk_clients`` threads POST batches until ``duration_s`` has passed; accepted ids go to ids."""
    lock = threading.Lock()
    latencies: list[float] = []
    refused: Counter[int] = Counter()
    spans: list[tuple[float, float]] = []
    errors: list[str] = []
    body = {"tasks": [_body(1)] * args.bulk_size}
    t0 = time.monotonic()
    stop_at = t0 + duration_s

    def client_loop() -> None:
        with httpx.Client(base_url=base, timeout=120.0) as client:
            while time.monotonic() < stop_at:
                start = time.monotonic()
                try:
                    reply = client.post("/v1/tasks:batch", json=body).raise_for_status().json()
                except httpx.HTTPError as e:
                    with lock:
                        errors.append(repr(e))
                    return
                end = time.monotonic()
                got = [item["id"] for item in reply["items"] if item["status"] == 202]
                with lock:
                    ids.extend(got)
                    latencies.append(end - start)
                    spans.append((start, end))
                    refused.update(item["status"] for item in reply["items"] if item["status"] != 202)

    before = len(ids)
    threads = [threading.Thread(target=client_loop) for _ in range(args.bulk_clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"bulk submits failed: {errors[:3]}")
    accepted = len(ids) - before
    elapsed = max(end for _, end in spans) - t0
    ms = sorted(x * 1000 for x in latencies)
    return {"accepted": accepted, "refused": dict(refused), "requests": len(ms), "elapsed_s": elapsed,
            "tasks_per_s": accepted / elapsed, "p50_ms": statistics.median(ms),
            "p99_ms": ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))], "max_ms": ms[-1],
            "clients": args.bulk_clients, "batch": args.bulk_size}


# -- verdict and report -----------------------------------------------------------------------------


def _verdict(r: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"targets": {"min_celery_ratio": TARGET_CELERY_RATIO,
                                       "min_bulk_tasks_per_s": TARGET_BULK_PER_S, "max_lost": 0}}
    passed: dict[str, bool] = {}
    if "raysquad" in r and "celery" in r:
        ours, theirs = r["raysquad"]["runs"], r["celery"]["runs"]
        out["celery_ratio"] = {f"k{k}": ours[f"k{k}-bulk"]["tasks_per_s"] / theirs[f"k{k}"]["tasks_per_s"]
                               for k in KS}
        out["celery_ratio_single"] = {f"k{k}": ours[f"k{k}-single"]["tasks_per_s"]
                                      / theirs[f"k{k}"]["tasks_per_s"] for k in KS}
        passed.update({f"celery_ratio_k{k}": out["celery_ratio"][f"k{k}"] >= TARGET_CELERY_RATIO
                       for k in KS})
    if "bulk" in r:
        out["bulk_tasks_per_s"] = r["bulk"]["tasks_per_s"]
        passed["bulk_tasks_per_s"] = out["bulk_tasks_per_s"] >= TARGET_BULK_PER_S
        passed["bulk_durable"] = bool(r["bulk"]["durable"])
    if "raysquad" in r:
        passed["raysquad_zero_lost"] = all(run["lost"] == 0 for run in r["raysquad"]["runs"].values())
    out["pass"] = passed
    return out


def _print(console: Console, r: dict[str, Any]) -> None:
    def ok(passed: bool) -> str:
        return "[green]pass[/]" if passed else "[red]miss[/]"

    ours = r.get("raysquad", {}).get("runs", {})
    theirs = r.get("celery", {}).get("runs", {})
    table = Table(title="trivial tasks run to the end: first submit -> last task's end")
    for col in ("k", "system", "tasks", "tasks/s", "steps/s", "submitting s", "lost", "vs Celery"):
        table.add_column(col, justify="left" if col == "system" else "right")
    for k in KS:
        c = theirs.get(f"k{k}")
        if c:
            table.add_row(str(k), f"Celery ({r['celery']['settings']['workers']} workers, "
                                  f"{r['config']['celery_submitters']} submit threads)",
                          str(c["workflows"]), f"{c['tasks_per_s']:.0f}", f"{c['steps_per_s']:.0f}",
                          f"{c['submit_s']:.2f}", str(c["lost"]), "1.00x")
        for mode in ("bulk", "single"):
            run = ours.get(f"k{k}-{mode}")
            if run:
                ratio = f"{run['tasks_per_s'] / c['tasks_per_s']:.2f}x" if c else "-"
                table.add_row(str(k), f"raysquad, {run['submit']}", str(run["tasks"]),
                              f"{run['tasks_per_s']:.0f}", f"{run['steps_per_s']:.0f}",
                              f"{run['submit_s']:.2f}", str(run["lost"]), ratio)
        table.add_section()
    if ours or theirs:
        console.print(table)

    costs = [(name, run["per_task"]) for name, run in ours.items() if "per_task" in run]
    if costs:
        kinds = sorted({a for _, pt in costs for a in pt["actor_calls_by_kind"]})
        cost = Table(title="per task: actor calls by actor kind, and Store transactions (Ray's counters)")
        for col in ("run", *kinds, "actor calls", "Store tx"):
            cost.add_column(col, justify="left" if col == "run" else "right")
        for name, pt in costs:
            cost.add_row(name, *(f"{pt['actor_calls_by_kind'].get(a, 0):.2f}" for a in kinds),
                         f"{pt['actor_calls']:.2f}", f"{pt['store_transactions']:.2f}")
        console.print(cost)

    if "bulk" in r:
        b = r["bulk"]
        bulk = Table(title=f"bulk submits, execution held: {b['clients']} clients x {b['batch']} tasks "
                           "per POST /v1/tasks:batch")
        for col in ("accepted", "seconds", "tasks/s", "batch p50 ms", "batch p99 ms", "refused",
                    "queued rows / accepted", "lost"):
            bulk.add_column(col, justify="right")
        bulk.add_row(str(b["accepted"]), f"{b['elapsed_s']:.2f}", f"{b['tasks_per_s']:.0f}",
                     f"{b['p50_ms']:.0f}", f"{b['p99_ms']:.0f}", str(sum(b["refused"].values())),
                     f"{b['queued_rows_after_stop']} / {b['accepted_all_phases']}", str(b["lost"]))
        console.print(bulk)

    verdict = Table(title=f"targets: celery_ratio >= {TARGET_CELERY_RATIO}x (bulk HTTP), "
                          f"bulk_tasks_per_s >= {TARGET_BULK_PER_S:.0f}, zero lost")
    for col in ("figure", "value", ""):
        verdict.add_column(col, justify="left" if col == "figure" else "right")
    for k in KS:
        if "celery_ratio" in r:
            verdict.add_row(f"celery_ratio k={k}", f"{r['celery_ratio'][f'k{k}']:.2f}x",
                            ok(r["pass"][f"celery_ratio_k{k}"]))
            verdict.add_row(f"  (single submits, k={k})", f"{r['celery_ratio_single'][f'k{k}']:.2f}x", "")
    if "bulk_tasks_per_s" in r:
        verdict.add_row("bulk_tasks_per_s", f"{r['bulk_tasks_per_s']:.0f}", ok(r["pass"]["bulk_tasks_per_s"]))
        verdict.add_row("bulk: every accepted task durable", str(r["bulk"]["durable"]),
                        ok(r["pass"]["bulk_durable"]))
    if "raysquad_zero_lost" in r["pass"]:
        verdict.add_row("raysquad: every accepted task succeeded", "", ok(r["pass"]["raysquad_zero_lost"]))
    console.print(verdict)


if __name__ == "__main__":
    main()
