"""Scaling with workers: trivial multi-step tasks through the whole path with 1, 2 and 4 workflow
workers, on SQLite and on PostgreSQL, in one run.

Each configuration gets a fresh runtime (its own namespace; its own SQLite file or PostgreSQL schema)
on one local Ray cluster. After a warm-up, ``--tasks`` tasks of ``--steps`` checkpointed trivial
steps are submitted from ``--submitters`` driver threads; steps/s is total steps over the time from
the first submit to the last task's ``finished_at`` (the Store's stamp). Submit latency is each
``Client.submit`` call as the driver saw it. The table gives each figure's ratio to the 1-worker
SQLite one. The configurations run in a rotating order over ``--rounds`` rounds and each reports its
median round, so drift on a busy machine does not favour the first or the last.

    .venv/bin/python benchmarks/scaling.py [--tasks 300] [--steps 5] [--workers 1,2,4]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make `benchmarks.apps` importable here
    sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402
import ray  # noqa: E402
from psycopg import sql  # noqa: E402
from psycopg.conninfo import make_conninfo  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from benchmarks.common import write_result  # noqa: E402
from runtime import Runtime, Settings, TaskStatus  # noqa: E402
from runtime.actors.cluster import connect  # noqa: E402

WORKFLOW = "trivial_steps"
APPS = ["benchmarks.apps"]
POLL_S = 0.1


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = _parse(argv)
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    console = Console(width=110)
    load = os.getloadavg()[0]
    if load > 1.0:
        console.print(f"[yellow]load average {load:.1f} on {os.cpu_count()} CPUs: other work will "
                      "skew these figures[/]")
    configs = [(store, n) for store in args.stores for n in args.workers]
    runs: dict[str, list[dict[str, Any]]] = {f"{s}/{n}": [] for s, n in configs}
    with tempfile.TemporaryDirectory(prefix="raysquad-scaling-") as tmp:
        base = Settings(data_dir=Path(tmp), ray_num_cpus=args.num_cpus,
                        ray_object_store_memory=200 * 1024**2)
        started_ray = connect(base)
        try:
            for r in range(args.rounds):
                order = configs[r % len(configs):] + configs[:r % len(configs)]
                for store, workers in order:
                    console.print(f"round {r + 1}/{args.rounds}: {store}, {workers} worker(s) ...")
                    runs[f"{store}/{workers}"].append(
                        _measure(args, store, workers, Path(tmp) / uuid.uuid4().hex[:8]))
        finally:
            if started_ray:
                ray.shutdown()
    rows = []
    for store, workers in configs:
        rounds = sorted(runs[f"{store}/{workers}"], key=lambda x: x["steps_per_s"])
        rows.append({"store": store, "workers": workers, **rounds[len(rounds) // 2],
                     "rounds_steps_per_s": [x["steps_per_s"] for x in runs[f"{store}/{workers}"]]})
    baseline = next((x for x in rows if x["store"] == "sqlite" and x["workers"] == 1), rows[0])
    for row in rows:
        row["ratio"] = row["steps_per_s"] / baseline["steps_per_s"]
    result = {"benchmark": "scaling", "tasks": args.tasks, "steps": args.steps,
              "rounds": args.rounds, "cpus": os.cpu_count(), "ray_num_cpus": args.num_cpus,
              "python": platform.python_version(), "ray": ray.__version__,
              "loadavg_before": load, "results": rows}
    _print(console, result)
    return write_result(console, args.json, result)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--tasks", type=int, default=300, help="tasks per measured batch")
    p.add_argument("--steps", type=int, default=5, help="trivial steps per task")
    p.add_argument("--workers", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 4])
    p.add_argument("--stores", type=lambda s: s.split(","), default=["sqlite", "postgres"])
    p.add_argument("--postgres-url", default=os.environ.get(
        "RAYSQUAD_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"))
    p.add_argument("--rounds", type=int, default=1, help="runs of every configuration")
    p.add_argument("--submitters", type=int, default=4, help="driver threads submitting")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--num-cpus", type=int, default=4, help="CPUs the local Ray cluster advertises")
    p.add_argument("--timeout-s", type=float, default=600.0)
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "scaling.json"))
    return p.parse_args(argv)


def _store_settings(args: argparse.Namespace, store: str, name: str) -> tuple[dict[str, Any], str]:
    if store == "sqlite":
        return {}, ""
    schema = f"scaling_{name}"
    with psycopg.connect(args.postgres_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    return ({"store": "postgres",
             "postgres_url": make_conninfo(args.postgres_url, options=f"-c search_path={schema}")},
            schema)


def _drop_schema(args: argparse.Namespace, schema: str) -> None:
    if schema:
        with psycopg.connect(args.postgres_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def _measure(args: argparse.Namespace, store: str, workers: int, data_dir: Path) -> dict[str, Any]:
    name = data_dir.name
    extra, schema = _store_settings(args, store, name)
    settings = Settings(data_dir=data_dir, namespace=f"scaling-{name}", workers=workers, **extra)
    rt = Runtime.start(settings, apps=APPS)
    try:
        client = rt.client()
        inp = {"k": args.steps}
        for rec in [client.submit(WORKFLOW, inp) for _ in range(args.warmup)]:
            client.wait(rec.id, timeout_s=120)

        def submit(_: int) -> tuple[str, float]:
            t = time.perf_counter()
            record = client.submit(WORKFLOW, inp)
            return record.id, time.perf_counter() - t

        t0 = time.time()
        with ThreadPoolExecutor(args.submitters) as pool:
            submitted = list(pool.map(submit, range(args.tasks)))
        deadline = time.monotonic() + args.timeout_s
        ids = [task_id for task_id, _ in submitted]
        while True:
            records = [client.get(i) for i in ids[-20:]]  # the last ones end last, mostly
            if all(r.status.ended for r in records):
                records = [client.get(i) for i in ids]
                if all(r.status.ended for r in records):
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{store}/{workers}: tasks did not end in {args.timeout_s}s")
            time.sleep(POLL_S)
        failed = [r for r in records if r.status is not TaskStatus.SUCCEEDED]
        if failed:
            raise RuntimeError(f"{len(failed)} task(s) did not succeed: {failed[0].error}")
        wall_s = max(r.finished_at or 0.0 for r in records) - t0
        latency = sorted(s for _, s in submitted)
        return {"wall_s": wall_s, "steps_per_s": args.tasks * args.steps / wall_s,
                "tasks_per_s": args.tasks / wall_s,
                "submit_p50_ms": 1000 * statistics.median(latency),
                "submit_p99_ms": 1000 * latency[min(len(latency) - 1, int(0.99 * len(latency)))]}
    finally:
        rt.stop(shutdown_ray=False)
        _drop_schema(args, schema)


def _print(console: Console, result: dict[str, Any]) -> None:
    table = Table(title=f"{result['tasks']} tasks x {result['steps']} steps, median of "
                        f"{result['rounds']} round(s), {result['cpus']} CPUs")
    for col in ("store", "workers", "steps/s", "ratio to SQLite x1", "submit p50 ms",
                "submit p99 ms"):
        table.add_column(col, justify="right")
    for row in result["results"]:
        table.add_row(row["store"], str(row["workers"]), f"{row['steps_per_s']:.0f}",
                      f"{row['ratio']:.2f}", f"{row['submit_p50_ms']:.1f}",
                      f"{row['submit_p99_ms']:.1f}")
    console.print(table)


if __name__ == "__main__":
    main()
