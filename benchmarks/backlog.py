"""A backlog of a million queued tasks on SQLite: memory, submit rate and claim order.

One ``raysquad up`` (SQLite Store, one worker whose one slot benchmarks/hold_app.py's task holds,
so that nothing submitted runs) is driven over HTTP:

1. **Empty queue.** Single submits (``POST /v1/tasks``) with wrk at ``--conns`` connections for
   ``--duration-s``, and bulk submits (``POST /v1/tasks:batch``, ``--batch`` tasks each, from
   ``--clients`` concurrent clients) for as long: the rates to hold the full queue to.
2. **Fill** the queue with bulk submits up to ``--tasks`` queued (default 1,000,000), priorities
   drawn from 0 to 10.
3. **Full queue.** The same two submit measurements again, and the memory of every process of
   the runtime (the ``raysquad up`` process and everything under it: Ray's GCS and raylet, the
   Serve controller, proxy and replica, and every runtime actor), summed: PSS (each shared page
   counted once, split between its users: what the processes cost the machine together), USS
   (private pages only) and RSS (shared pages counted in every process, an over-count).
4. **Claim order.** The benchmark joins the runtime's Ray cluster and claims ``--claims`` tasks
   (default 30,000: three times the dispatcher's window) through the dispatcher, as a worker
   does, ``--claim-batch`` at a time; they must come in the Store's rank order (priority with
   aging: the key ``aging_per_s * created_at - priority``, then age), be exactly the Store's first
   ``--claims`` by that order (read from the SQLite file, read-only, just before), and never go
   back in it. Ties (one bulk request's tasks share their priority and created_at) come in either
   order.

The runtime runs without the Ray dashboard and with one tool executor (what it needs here). Targets
(the script exits 0 whatever the figures; the JSON records each verdict): total PSS at most 1 GiB at
a million queued; each submit rate at the full queue at least 80% of the empty
queue's; every claim in rank order. The data (SQLite, about 1 GB at a million tasks) lives in a
temporary folder, deleted at the end unless ``--keep``.

    .venv/bin/python benchmarks/backlog.py [--tasks 1000000] [--conns 32] [--duration-s 10]
        [--batch 1000] [--clients 2] [--claims 30000] [--json benchmarks/results/backlog.json]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import platform
import random
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make `benchmarks.*` importable here
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import psutil  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from benchmarks.common import write_result  # noqa: E402
from benchmarks.submit_latency import (  # noqa: E402
    HELD,
    START_TIMEOUT_S,
    STOP_TIMEOUT_S,
    Server,
    Target,
    _free_port,
    hold_worker_slot,
    run_wrk,
)
from runtime.store import records  # noqa: E402

AGING_PER_S = 1.0  # the runtime's default (RAYSQUAD_AGING_PER_S), which the rank order uses
TARGET_PSS_BYTES = 1 << 30
TARGET_RATE_RATIO = 0.8
TARGET = Target("raysquad-backlog", "raysquad, execution held, room for the backlog", "raysquad",
                {**HELD, "RAYSQUAD_QUEUE_CAPACITY": "2000000",
                 "RAYSQUAD_TENANT_QUEUED_TASKS": "2000000",  # one tenant holds the backlog
                 # The runtime at its leanest for this: no Ray dashboard, one tool executor.
                 "RAYSQUAD_RAY_INCLUDE_DASHBOARD": "false", "RAYSQUAD_TOOLS__EXECUTORS": "1",
                 "RAYSQUAD_AGING_PER_S": str(AGING_PER_S),
                 "RAYSQUAD_MAX_BATCH_BODY_BYTES": str(64 << 20),
                 "RAYSQUAD_TENANT_QUEUED_BYTES": str(1 << 40)}, hold=True)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = _parse(argv)
    console = Console(width=120)
    if not shutil.which("wrk"):
        console.print("[red]wrk is not installed[/red] (apt-get install wrk; `make bench` does)")
        raise SystemExit(2)
    work = Path(tempfile.mkdtemp(prefix="raysquad-backlog-"))
    port = _free_port()
    server = Server.start(TARGET, port, work)
    base = f"http://127.0.0.1:{port}"
    result: dict[str, Any] = {"benchmark": "backlog", "args": vars(args), "env": TARGET.env,
                              "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                          "platform": platform.platform()}}
    try:
        console.print(f"raysquad up in {server.wait_healthy(START_TIMEOUT_S):.1f} s; data in {work}")
        hold_worker_slot(f"{base}/v1/tasks")
        db = work / "data" / "raysquad.db"
        result["empty"] = measure(base, args, work, "empty", server, db, console)
        fill(base, args, db, console, result)
        result["full"] = measure(base, args, work, "full", server, db, console)
        result["claims"] = check_claims(server, work, db, args, console)
    finally:
        result["clean_stop"] = server.stop(STOP_TIMEOUT_S)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    verdicts(result)
    show(console, result)
    return write_result(console, args.json, result)


# -- the three phases ---------------------------------------------------------------------------------


def measure(base: str, args: argparse.Namespace, work: Path, phase: str, server: Server, db: Path,
            console: Console) -> dict[str, Any]:
    """Single submits with wrk, then bulk submits, then the runtime's memory."""
    queued_before = queued(db)
    single = run_wrk(f"{base}/v1/tasks", args.conns, args.duration_s, work / f"{phase}-wrk.log", work)
    for key in ("_wrk_cpu_s", "_host_busy_s", "_wall_s"):
        single.pop(key, None)
    bulk = asyncio.run(bulk_submit(base, args, seconds=args.duration_s))
    memory = runtime_memory(server.proc)
    out = {"queued_before": queued_before, "single": single, "bulk": bulk, "memory": memory}
    console.print(f"  {phase} queue ({queued_before:,} queued): single {single['ok_per_s']:.0f}/s "
                  f"(p99 {single['p99_ms']:.1f} ms), bulk {bulk['tasks_per_s']:.0f} tasks/s; "
                  f"memory PSS {memory['pss'] / 2**20:.0f} MiB over {memory['processes']} processes")
    return out


def fill(base: str, args: argparse.Namespace, db: Path, console: Console,
         result: dict[str, Any]) -> None:
    have = queued(db)
    t0 = time.monotonic()
    added = asyncio.run(bulk_submit(base, args, total=max(0, args.tasks - have), progress=console))
    result["fill"] = {**added, "queued_after": queued(db), "seconds": time.monotonic() - t0}
    console.print(f"  filled: {result['fill']['queued_after']:,} queued "
                  f"({added['tasks_per_s']:.0f} tasks/s over {result['fill']['seconds']:.0f} s)")


async def bulk_submit(base: str, args: argparse.Namespace, *, seconds: float | None = None,
                      total: int | None = None, progress: Console | None = None) -> dict[str, Any]:
    """``--clients`` clients posting ``--batch`` tasks per request, for ``seconds`` or until
    ``total`` are accepted; accepted tasks per second and the request latency."""
    accepted, refused, latencies = 0, 0, []
    t0 = time.monotonic()
    rng = random.Random(7)
    lock = asyncio.Lock()
    next_report = 100_000

    def more() -> int:
        if total is not None:
            return min(args.batch, total - accepted)
        return args.batch if time.monotonic() - t0 < (seconds or 0) else 0

    async def client() -> None:
        nonlocal accepted, refused, next_report
        async with httpx.AsyncClient(base_url=base, timeout=120) as http:
            while (n := more()) > 0:
                body = {"tasks": [{"workflow": "trivial_steps", "input": {"k": 1},
                                   "priority": rng.randint(0, 10)} for _ in range(n)]}
                sent = time.monotonic()
                r = await http.post("/v1/tasks:batch", json=body)
                r.raise_for_status()
                reply = r.json()
                async with lock:
                    latencies.append(time.monotonic() - sent)
                    accepted += reply["accepted"]
                    refused += reply["refused"]
                    if progress is not None and accepted >= next_report:
                        progress.print(f"    {accepted:,} submitted "
                                       f"({accepted / (time.monotonic() - t0):.0f}/s)")
                        next_report += 100_000

    await asyncio.gather(*(client() for _ in range(args.clients)))
    wall = time.monotonic() - t0
    latencies.sort()
    return {"accepted": accepted, "refused": refused, "seconds": wall,
            "tasks_per_s": accepted / wall if wall else 0.0, "requests": len(latencies),
            "p50_ms": 1000 * latencies[len(latencies) // 2] if latencies else None,
            "p99_ms": 1000 * latencies[int(len(latencies) * 0.99)] if latencies else None}


def check_claims(server: Server, work: Path, db: Path, args: argparse.Namespace,
                 console: Console) -> dict[str, Any]:
    """Claim through the dispatcher as a worker would; compare with the Store's rank order."""
    import ray

    from runtime.durable.dispatch import DispatcherHandle

    expected = [rank(priority, at) for _, priority, at in _read(db, (
        f"SELECT id, priority, created_at FROM tasks WHERE status = 'queued' ORDER BY "
        f"{records.rank_order(AGING_PER_S)} LIMIT ?"), (args.claims,))]
    from runtime.actors.cluster import use_local_token_if_any

    address = (work / "data" / "ray_address").read_text().strip()
    use_local_token_if_any()  # the runtime's cluster asks for ~/.ray/auth_token when it has one
    ray.init(address=address, namespace=server.namespace, log_to_driver=False,
             logging_level=logging.ERROR)
    try:
        dispatcher = DispatcherHandle.find(server.namespace)

        async def claim_all() -> tuple[list[tuple[float, float]], float]:
            got: list[tuple[float, float]] = []
            t0 = time.monotonic()
            while len(got) < len(expected):
                claims = await dispatcher.get_tasks("backlog-bench", min(args.claim_batch,
                                                                          len(expected) - len(got)),
                                                    5.0)
                if not claims:
                    break
                got += [rank(c.task.priority, c.task.created_at) for c in claims]
            return got, time.monotonic() - t0

        got, seconds = asyncio.run(claim_all())
    finally:
        ray.shutdown()
    # Ties (the same priority and created_at: the tasks of one batch share it) come in either
    # order, so what is compared is each claim's rank, not its id.
    out_of_order = sum(1 for a, b in zip(got, got[1:], strict=False) if b < a)
    result = {"claimed": len(got), "expected": len(expected), "out_of_order": out_of_order,
              "in_order": got == expected, "the_stores_first": sorted(got) == expected,
              "seconds": seconds, "claims_per_s": len(got) / seconds if seconds else 0.0}
    console.print(f"  claims: {len(got):,} in {seconds:.1f} s, "
                  f"{'in rank order' if result['in_order'] else f'{out_of_order} out of order'}")
    return result


# -- measuring ------------------------------------------------------------------------------------------


def rank(priority: int, created_at: float) -> tuple[float, float]:
    """A queued task's place in the dispatcher's order (``records.rank_order``), lowest first."""
    return (created_at * AGING_PER_S - priority, created_at)


def queued(db: Path) -> int:
    return int(_read(db, "SELECT count(*) FROM tasks WHERE status = 'queued'")[0][0])


def _read(db: Path, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return conn.execute(query, params).fetchall()
    finally:
        conn.close()


def runtime_memory(root: psutil.Process) -> dict[str, Any]:
    """PSS, USS and RSS summed over the server process and every process under it."""
    totals = {"pss": 0, "uss": 0, "rss": 0}
    by_process: list[dict[str, Any]] = []
    for p in [root, *root.children(recursive=True)]:
        try:
            info = p.memory_full_info()
            name = (p.cmdline() or [p.name()])[0]
        except psutil.Error:
            continue
        for key in totals:
            totals[key] += getattr(info, key)
        by_process.append({"pid": p.pid, "name": name[:60], "pss_mib": round(info.pss / 2**20, 1)})
    by_process.sort(key=lambda x: -x["pss_mib"])
    return {**totals, "processes": len(by_process), "by_process": by_process}


def verdicts(result: dict[str, Any]) -> None:
    empty, full = result.get("empty"), result.get("full")
    if not (empty and full):
        return
    single = full["single"]["ok_per_s"] / max(1e-9, empty["single"]["ok_per_s"])
    bulk = full["bulk"]["tasks_per_s"] / max(1e-9, empty["bulk"]["tasks_per_s"])
    result["targets"] = {
        "pss_bytes_max": TARGET_PSS_BYTES, "rate_ratio_min": TARGET_RATE_RATIO,
        "queued_at_full": full["queued_before"],
        "pss_pass": full["memory"]["pss"] <= TARGET_PSS_BYTES,
        "single_rate_ratio": round(single, 3), "single_rate_pass": single >= TARGET_RATE_RATIO,
        "bulk_rate_ratio": round(bulk, 3), "bulk_rate_pass": bulk >= TARGET_RATE_RATIO,
        "claims_in_order_pass": bool(result.get("claims", {}).get("in_order")),
    }


def show(console: Console, result: dict[str, Any]) -> None:
    if "targets" not in result:
        console.print("[red]no result[/red]")
        return
    empty, full, t = result["empty"], result["full"], result["targets"]
    table = Table(title=f"backlog: {t['queued_at_full']:,} queued vs an empty queue")
    for col in ("", "empty queue", "full queue", "ratio", "target", "pass"):
        table.add_column(col, justify="right")
    table.add_row("single submits/s (wrk)", f"{empty['single']['ok_per_s']:.0f}",
                  f"{full['single']['ok_per_s']:.0f}", f"{t['single_rate_ratio']:.2f}",
                  f">= {TARGET_RATE_RATIO}", str(t["single_rate_pass"]))
    table.add_row("single p99 ms", f"{empty['single']['p99_ms']:.1f}",
                  f"{full['single']['p99_ms']:.1f}", "", "", "")
    table.add_row("bulk tasks/s", f"{empty['bulk']['tasks_per_s']:.0f}",
                  f"{full['bulk']['tasks_per_s']:.0f}", f"{t['bulk_rate_ratio']:.2f}",
                  f">= {TARGET_RATE_RATIO}", str(t["bulk_rate_pass"]))
    table.add_row("memory PSS MiB (all processes)", f"{empty['memory']['pss'] / 2**20:.0f}",
                  f"{full['memory']['pss'] / 2**20:.0f}", "", "<= 1024", str(t["pss_pass"]))
    table.add_row("memory USS MiB", f"{empty['memory']['uss'] / 2**20:.0f}",
                  f"{full['memory']['uss'] / 2**20:.0f}", "", "", "")
    table.add_row("memory RSS MiB (over-counts shared)", f"{empty['memory']['rss'] / 2**20:.0f}",
                  f"{full['memory']['rss'] / 2**20:.0f}", "", "", "")
    claims = result["claims"]
    table.add_row("claims in rank order", "", f"{claims['claimed']:,}/{claims['expected']:,}",
                  "", "all", str(t["claims_in_order_pass"]))
    console.print(table)
    heavy = Table(title="the heaviest processes at the full queue (PSS)")
    heavy.add_column("process")
    heavy.add_column("MiB", justify="right")
    for p in full["memory"]["by_process"][:8]:
        heavy.add_row(p["name"], f"{p['pss_mib']:.0f}")
    console.print(heavy)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--tasks", type=int, default=1_000_000, help="queued tasks to reach")
    p.add_argument("--conns", type=int, default=32, help="wrk connections for single submits")
    p.add_argument("--duration-s", type=int, default=10, help="each submit measurement's length")
    p.add_argument("--batch", type=int, default=1000, help="tasks per bulk request")
    p.add_argument("--clients", type=int, default=2, help="concurrent bulk clients")
    p.add_argument("--claims", type=int, default=30_000, help="tasks to claim in order at the end")
    p.add_argument("--claim-batch", type=int, default=500, help="tasks per claim call")
    p.add_argument("--keep", action="store_true", help="keep the data folder")
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "backlog.json"))
    return p.parse_args(argv)


if __name__ == "__main__":
    main()
    sys.exit(0)
