"""Rate-limited work: M tasks of k simulated-engine calls under one global limit, raysquad vs Celery.

The limit: at most R call starts in any window of ``interval_s`` and at most C calls at once, across
4 workers. raysquad: M ``llm_calls`` tasks (benchmarks/apps.py) on 4 workflow workers; every call
passes the gate ``engine:sim-small`` (set in configuration, nothing in the workflow's code), and the
simulated engine records when each call arrived and ended, which is what an upstream would see.
Celery: the same workload as M chains of k calls on 4 Celery workers with Redis, each with its
task's ``rate_limit`` (benchmarks/celery_peer.py: ``naive`` gives each worker the global rate, the
way the docs' one-liner reads; ``split`` gives each a quarter).

For each: the makespan (first submit to last call's end) against the lower bound for the limit
(benchmarks/window_stats.py), the busiest window, the calls that broke the rate limit (violations),
and the peak concurrency. Targets for raysquad: makespan at most 1.05x the bound, 0 violations.

    .venv/bin/python benchmarks/rate_limited.py [--m 40] [--k 5] [--limit 20] [--interval-s 1]
        [--concurrency 8] [--call-s 0.02] [--no-celery]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make `benchmarks.*` importable here
    sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from benchmarks.common import write_result  # noqa: E402
from benchmarks.window_stats import (  # noqa: E402
    makespan,
    max_starts_in_window,
    peak_concurrency,
    theoretical_makespan,
    violations,
)
from runtime import GateLimits, Runtime, Settings, TaskStatus  # noqa: E402
from runtime.core.config import SimulatedEngineConfig  # noqa: E402

TARGET_RATIO = 1.05
WORKERS = 4
MODEL = "sim-small"


def run_raysquad(m: int, k: int, limit: int, interval_s: float, concurrency: int,
                 call_s: float, timeout_s: float = 300.0) -> dict[str, Any]:
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    with tempfile.TemporaryDirectory(prefix="raysquad-rate-") as data_dir:
        settings = Settings(
            data_dir=Path(data_dir), namespace=f"rate-{uuid.uuid4().hex[:8]}", workers=WORKERS,
            ray_num_cpus=2, default_model=MODEL,
            simulated=SimulatedEngineConfig(ttft_s=call_s, tpot_s=0.0, max_concurrency=10_000),
            gates={f"engine:{MODEL}": GateLimits(requests=limit, interval_s=interval_s,
                                                 concurrency=concurrency)},
        )
        rt = Runtime.start(settings, apps=["benchmarks.apps"])
        try:
            client = rt.client()
            warm = client.submit("llm_calls", {"k": 1})  # the first call pays for imports
            client.wait(warm.id, timeout_s=60)
            # The warm-up's call holds its place in the window until interval_s after it ended.
            time.sleep(interval_s + 0.5)
            engine = rt.engines[MODEL][0]
            before = len(asyncio.run(engine.timeline()))
            t0 = time.time()
            ids = [client.submit("llm_calls", {"k": k}).id for _ in range(m)]
            deadline = time.monotonic() + timeout_s
            while asyncio.run(rt.store.count_tasks(TaskStatus.SUCCEEDED)) < m + 1:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"raysquad run not done in {timeout_s}s")
                time.sleep(0.1)
            failed = [i for i in ids if client.get(i).status != TaskStatus.SUCCEEDED]
            assert not failed, f"{len(failed)} task(s) did not succeed"
            records = asyncio.run(engine.timeline())[before:]
            gate = asyncio.run(rt.gatekeeper.stats())[f"engine:{MODEL}"]
        finally:
            rt.stop()
    bound = theoretical_makespan(m * k, limit, interval_s, concurrency, call_s)
    span = makespan(records, t0)
    starts = sorted(start for start, _ in records)
    # Where the time beyond the bound goes: to the first call, and per window (a call's start to the
    # start of the call `limit` places later: interval_s plus the gate's grant-to-reached time).
    cycles = [b - a for a, b in zip(starts, starts[limit:], strict=False)]
    return {
        "system": "raysquad", "calls": len(records), "makespan_s": span,
        "first_start_s": starts[0] - t0 if starts else None,
        "window_cycle_s": {"mean": sum(cycles) / len(cycles), "max": max(cycles)} if cycles else None,
        "theoretical_makespan_s": bound, "ratio": span / bound,
        "max_starts_in_window": max_starts_in_window(records, interval_s),
        "violations": violations(records, limit, interval_s),
        "peak_concurrency": peak_concurrency(records), "gate": gate,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = _parse(argv)
    console = Console(width=110)
    load = os.getloadavg()[0]
    if load > 1.0:
        console.print(f"[yellow]load average {load:.1f} on {os.cpu_count()} CPUs: "
                      "other work will skew these figures[/]")
    shape = dict(m=args.m, k=args.k, limit=args.limit, interval_s=args.interval_s,
                 concurrency=args.concurrency, call_s=args.call_s)
    console.print(f"raysquad: {args.m} tasks x {args.k} calls, {args.limit} per {args.interval_s}s, "
                  f"{args.concurrency} at once, {WORKERS} workers ...")
    runs = [run_raysquad(**shape)]
    if args.celery:
        from benchmarks.celery_peer import run_celery

        for mode in ("naive", "split"):
            console.print(f"celery ({mode}): the same on {WORKERS} Celery workers with Redis ...")
            run = run_celery(**shape, workers=WORKERS, split_rate=mode == "split")
            runs.append({"system": f"celery-{mode}", **{k: run[k] for k in (
                "calls", "makespan_s", "theoretical_makespan_s", "ratio", "max_starts_in_window",
                "violations", "peak_concurrency")}})
    ours = runs[0]
    result: dict[str, Any] = {
        "benchmark": "rate_limited", "settings": shape, "workers": WORKERS,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "loadavg_before": load},
        "runs": runs,
        "targets": {"ratio_max": TARGET_RATIO, "violations": 0,
                    "ratio_ok": ours["ratio"] <= TARGET_RATIO, "violations_ok": ours["violations"] == 0},
    }
    _print(console, args, runs, result["targets"])
    return write_result(console, args.json, result)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--m", type=int, default=40, help="tasks")
    p.add_argument("--k", type=int, default=5, help="calls per task, one after another")
    p.add_argument("--limit", type=int, default=20, help="call starts allowed per interval")
    p.add_argument("--interval-s", type=float, default=1.0)
    p.add_argument("--concurrency", type=int, default=8, help="calls allowed at once")
    p.add_argument("--call-s", type=float, default=0.02, help="the simulated engine's time per call")
    p.add_argument("--no-celery", dest="celery", action="store_false", help="skip the Celery peer")
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "rate_limited.json"))
    return p.parse_args(argv)


def _print(console: Console, args: argparse.Namespace, runs: list[dict[str, Any]],
           targets: dict[str, Any]) -> None:
    table = Table(title=f"{args.m} x {args.k} calls, limit {args.limit} per {args.interval_s}s and "
                        f"{args.concurrency} at once, {WORKERS} workers")
    for column in ("system", "calls", "makespan s", "bound s", "ratio", "busiest window",
                   "violations", "peak at once"):
        table.add_column(column, justify="left" if column == "system" else "right")
    for r in runs:
        table.add_row(r["system"], str(r["calls"]), f"{r['makespan_s']:.2f}",
                      f"{r['theoretical_makespan_s']:.2f}", f"{r['ratio']:.3f}",
                      f"{r['max_starts_in_window']} / {args.limit}", str(r["violations"]),
                      f"{r['peak_concurrency']} / {args.concurrency}")
    console.print(table)
    verdict = "[green]pass[/]" if targets["ratio_ok"] and targets["violations_ok"] else "[red]MISS[/]"
    console.print(f"raysquad targets (ratio <= {TARGET_RATIO}, 0 violations): {verdict}")


if __name__ == "__main__":
    main()
