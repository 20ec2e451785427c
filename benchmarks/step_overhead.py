"""Per-step overhead: N tasks of k trivial steps through the whole path, against raw Ray actor calls.

The whole path is submit (driver -> dispatcher -> Store), claim (worker -> dispatcher -> Store), k
checkpointed steps (worker -> Store, one SQLite transaction each) and finish. The baseline, in the same
Ray cluster and the same run, is N*k calls to a trivial async actor: one at a time (``ray.get`` each, a
synchronous round trip) and pipelined (all submitted, then gathered). Per-step time is wall / (N*k),
so the cost of submit, claim and finish is spread over the steps of a task. The batch runs
``--rounds`` times on one runtime and the median round is reported; the raw baseline runs before the
runtime starts and again after it stops, and the faster of the two is the yardstick. A few tasks then
run one at a time, for the latency of an idle runtime, and every task's events give a breakdown of
where its time went.

    .venv/bin/python benchmarks/step_overhead.py [--tasks 200] [--steps 5] [--workers 2]
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make `benchmarks.apps` importable here
    sys.path.insert(0, str(ROOT))

import ray  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from benchmarks.common import write_result  # noqa: E402
from runtime import Client, Runtime, Settings, TaskRecord, TaskStatus  # noqa: E402
from runtime.actors.cluster import connect  # noqa: E402

WORKFLOW = "trivial_steps"
APPS = ["benchmarks.apps"]
OBJECT_STORE_BYTES = 200 * 1024**2
# Celery 5 with Redis on this machine, 5-step chains, 2 worker processes, no checkpointing.
CELERY_STEPS_PER_S = 287.0
TARGET_STEPS_PER_S = 1.5 * CELERY_STEPS_PER_S  # 430.5
TARGET_RATIO = 3.0
POLL_S = 0.05


class Echo:
    """The baseline: a trivial async actor with a trivial method."""

    async def ping(self, x: int) -> int:
        return x


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = _parse(argv)
    args.loadavg_before = list(os.getloadavg())
    # Ray workers of a local cluster inherit the driver's environment: this is how they find benchmarks/.
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    console = Console(width=100)
    if args.loadavg_before[0] > 1.0:
        console.print(f"[yellow]load average {args.loadavg_before[0]:.1f} on {os.cpu_count()} CPUs: "
                      "other work will skew these figures[/]")
    with tempfile.TemporaryDirectory(prefix="raysquad-bench-") as data_dir:
        settings = Settings(
            data_dir=Path(data_dir), workers=args.workers, namespace=f"bench-{uuid.uuid4().hex[:8]}",
            ray_num_cpus=args.num_cpus, ray_object_store_memory=OBJECT_STORE_BYTES,
        )
        started_ray = connect(settings)
        try:
            calls = args.tasks * args.steps
            console.print(f"raw Ray baseline: {calls} calls to a trivial async actor ...")
            raw_before = measure_raw(calls, args.chunk)
            console.print(f"raysquad: {args.tasks} tasks x {args.steps} steps, {args.workers} workers ...")
            rt = Runtime.start(settings, apps=APPS)
            try:
                ours = measure_raysquad(rt, args)
            finally:
                rt.stop(shutdown_ray=False)
            console.print("raw Ray baseline again, on the settled cluster ...")
            raw = _best(raw_before, measure_raw(calls, args.chunk))
        finally:
            if started_ray:
                ray.shutdown()
    result = _result(args, settings, ours, raw)
    _print(console, result)
    return write_result(console, args.json, result)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--tasks", type=int, default=200, help="tasks in the measured batch (N)")
    p.add_argument("--steps", type=int, default=5, help="trivial steps per task (k)")
    p.add_argument("--workers", type=int, default=2, help="workflow worker actors")
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "step_overhead.json"))
    p.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local Ray cluster")
    p.add_argument("--rounds", type=int, default=3,
                   help="batches of N tasks; the one with the median steps/s is reported")
    p.add_argument("--warmup", type=int, default=10, help="tasks run (and waited for) before measuring")
    p.add_argument("--serial", type=int, default=20,
                   help="tasks run one at a time after the batch, for the latency of an idle runtime")
    p.add_argument("--submitters", type=int, default=4, help="driver threads submitting the batch")
    p.add_argument("--chunk", type=int, default=500, help="pipelined baseline: calls in flight at once")
    p.add_argument("--timeout-s", type=float, default=300.0, help="give up on the batch after this")
    return p.parse_args(argv)


# -- raysquad ---------------------------------------------------------------------------------------


def measure_raysquad(rt: Runtime, args: argparse.Namespace) -> dict[str, Any]:
    """Warm up, run ``args.rounds`` batches of N tasks (the median one is the result), then serial tasks."""
    client = rt.client()
    inp = {"k": args.steps}
    for rec in [client.submit(WORKFLOW, inp) for _ in range(args.warmup)]:
        _expect_ok(client.wait(rec.id, timeout_s=60))
    finished = args.warmup
    rounds = []
    for _ in range(args.rounds):
        finished += args.tasks
        rounds.append(_batch(rt, client, inp, args, finished))
    result = dict(sorted(rounds, key=lambda r: r["steps_per_s"])[len(rounds) // 2])
    result["rounds"] = [{k: r[k] for k in ("wall_s", "steps_per_s", "per_step_ms")} for r in rounds]

    serial_ids, serial_latency = [], []
    for _ in range(args.serial):
        rec = _expect_ok(client.wait(client.submit(WORKFLOW, inp).id, timeout_s=60))
        serial_ids.append(rec.id)
        created, _, ended = _times(rec)
        serial_latency.append(ended - created)
    result["serial"] = {
        "tasks": args.serial,
        "task_latency_ms": _percentiles(serial_latency),
        "per_step_ms": 1000 * sum(serial_latency) / max(1, args.serial * args.steps),
        "breakdown_ms": _breakdown(client, serial_ids),
    }
    return result


def _batch(rt: Runtime, client: Client, inp: dict[str, Any], args: argparse.Namespace,
           finished: int) -> dict[str, Any]:
    """Submit N tasks as fast as ``args.submitters`` threads can; wait until ``finished`` have ended."""
    t0_epoch, t0 = time.time(), time.perf_counter()
    with ThreadPoolExecutor(args.submitters) as pool:
        ids = [r.id for r in pool.map(lambda _: client.submit(WORKFLOW, inp), range(args.tasks))]
    submitted_s = time.perf_counter() - t0
    _wait_all(rt, finished, time.monotonic() + args.timeout_s)
    observed_s = time.perf_counter() - t0
    times = [_times(_expect_ok(client.get(i))) for i in ids]
    wall_s = max(ended for _, _, ended in times) - t0_epoch
    total_steps = args.tasks * args.steps
    return {
        "tasks": args.tasks, "steps_per_task": args.steps, "total_steps": total_steps,
        "wall_s": wall_s, "observed_wall_s": observed_s, "submit_s": submitted_s,
        "steps_per_s": total_steps / wall_s, "tasks_per_s": args.tasks / wall_s,
        "per_step_ms": 1000 * wall_s / total_steps,
        "task_latency_ms": _percentiles([ended - created for created, _, ended in times]),
        "queue_wait_ms": _percentiles([started - created for created, started, _ in times]),
        "run_ms": _percentiles([ended - started for _, started, ended in times]),
        "breakdown_ms": _breakdown(client, ids),
    }


def _breakdown(client: Client, ids: list[str]) -> dict[str, dict[str, float]]:
    """Where a task's time went, from the Store's timestamps of its events.

    dispatch: submitted -> started (queue, get_tasks, claim); first_step: started -> first step
    recorded; step_gap: one recorded step to the next; finish: last step -> succeeded.
    """
    parts: dict[str, list[float]] = {"dispatch": [], "first_step": [], "step_gap": [], "finish": []}
    for task_id in ids:
        at: dict[str, float] = {}
        steps: list[float] = []
        for e in client.events(task_id):
            if e.kind == "step":
                steps.append(e.at)
            else:
                at.setdefault(e.kind, e.at)
        if not steps or not {"submitted", "started", "succeeded"} <= at.keys():
            continue
        parts["dispatch"].append(at["started"] - at["submitted"])
        parts["first_step"].append(steps[0] - at["started"])
        parts["step_gap"].extend(b - a for a, b in zip(steps, steps[1:], strict=False))
        parts["finish"].append(at["succeeded"] - steps[-1])
    return {name: _percentiles(xs) for name, xs in parts.items()}


def _wait_all(rt: Runtime, count: int, deadline: float) -> None:
    """Poll the Store's count of succeeded tasks until ``count`` have; fail fast if any failed.

    One small Store call per POLL_S, so that the poll takes little from the Store it measures; the
    wall time comes from the Store's own finished_at stamps, not from when this poll notices.
    """
    polls = 0
    while asyncio.run(rt.store.count_tasks(TaskStatus.SUCCEEDED)) < count:
        polls += 1
        if polls % 20 == 0 or time.monotonic() > deadline:
            bad = asyncio.run(rt.store.count_tasks(TaskStatus.FAILED))
            if bad or time.monotonic() > deadline:
                raise RuntimeError(f"tasks did not all succeed in time ({bad} failed)")
        time.sleep(POLL_S)


def _expect_ok(record: TaskRecord) -> TaskRecord:
    if record.status is not TaskStatus.SUCCEEDED or record.finished_at is None:
        raise RuntimeError(f"task {record.id} ended {record.status.value}: {record.error}")
    return record


def _times(record: TaskRecord) -> tuple[float, float, float]:
    """When a task that ended was created, started and finished."""
    if record.started_at is None or record.finished_at is None:
        raise RuntimeError(f"task {record.id} has no start or end time")
    return record.created_at, record.started_at, record.finished_at


# -- raw Ray ----------------------------------------------------------------------------------------


def measure_raw(calls: int, chunk: int) -> dict[str, Any]:
    echo: Any = ray.remote(Echo).options(num_cpus=0).remote()  # a Ray handle, as the runtime keeps it
    ray.get([echo.ping.remote(i) for i in range(200)])  # warm the actor and the path

    t0 = time.perf_counter()
    for i in range(calls):
        ray.get(echo.ping.remote(i))
    sync_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    for start in range(0, calls, chunk):
        ray.get([echo.ping.remote(i) for i in range(start, min(calls, start + chunk))])
    pipelined_s = time.perf_counter() - t0
    ray.kill(echo)
    return {
        "calls": calls, "chunk": chunk,
        "sync_s": sync_s, "sync_per_call_ms": 1000 * sync_s / calls, "sync_calls_per_s": calls / sync_s,
        "pipelined_s": pipelined_s, "pipelined_per_call_ms": 1000 * pipelined_s / calls,
        "pipelined_calls_per_s": calls / pipelined_s,
    }


def _best(*runs: dict[str, Any]) -> dict[str, Any]:
    """The fastest of the baseline runs per mode (the strictest yardstick), with every run kept."""
    best = dict(min(runs, key=lambda r: r["sync_s"]))
    fastest = min(runs, key=lambda r: r["pipelined_s"])
    for k in ("pipelined_s", "pipelined_per_call_ms", "pipelined_calls_per_s"):
        best[k] = fastest[k]
    best["runs"] = list(runs)
    return best


# -- report -----------------------------------------------------------------------------------------


def _percentiles(values_s: list[float]) -> dict[str, float]:
    xs = sorted(1000 * v for v in values_s)
    if not xs:
        return {}

    def at(q: float) -> float:
        return xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))]

    return {"p50": at(0.5), "p90": at(0.9), "p99": at(0.99), "max": xs[-1], "mean": sum(xs) / len(xs)}


def _result(args: argparse.Namespace, settings: Settings, ours: dict[str, Any],
            raw: dict[str, Any]) -> dict[str, Any]:
    ratio_sync = ours["per_step_ms"] / raw["sync_per_call_ms"]
    ratio_pipelined = ours["per_step_ms"] / raw["pipelined_per_call_ms"]
    return {
        "benchmark": "step_overhead",
        "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "raysquad": ours,
        "raw_ray": raw,
        "ratio": {"per_step_vs_sync_round_trip": ratio_sync,
                  "per_step_vs_pipelined_call": ratio_pipelined},
        "targets": {
            "max_ratio_vs_round_trip": TARGET_RATIO,
            "ratio_pass": ratio_sync <= TARGET_RATIO,
            "min_steps_per_s": TARGET_STEPS_PER_S,
            "steps_per_s_pass": ours["steps_per_s"] >= TARGET_STEPS_PER_S,
            "celery_redis_steps_per_s": CELERY_STEPS_PER_S,
        },
        "settings": {
            "args": {k: v for k, v in vars(args).items() if k != "loadavg_before"},
            "runtime": settings.model_dump(mode="json", include={
                "workers", "tasks_per_worker", "worker_num_cpus", "lease_s", "sweep_interval_s",
                "ray_num_cpus", "ray_object_store_memory", "store", "inline_limit_bytes"}),
        },
        "machine": {"nproc": os.cpu_count(), "python": platform.python_version(),
                    "ray": ray.__version__, "platform": platform.platform(),
                    "loadavg_before": args.loadavg_before, "loadavg_after": list(os.getloadavg())},
    }


def _print(console: Console, r: dict[str, Any]) -> None:
    ours, raw, t = r["raysquad"], r["raw_ray"], r["targets"]
    lat, serial = ours["task_latency_ms"], ours["serial"]

    def ok(passed: bool) -> str:
        return "[green]pass[/]" if passed else "[red]miss[/]"

    table = Table(title=f"step overhead: {ours['tasks']} tasks x {ours['steps_per_task']} trivial steps "
                        f"(median of {len(ours['rounds'])} rounds)")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_column("target", justify="right")
    table.add_row("raysquad steps/s", f"{ours['steps_per_s']:.0f}",
                  f">= {t['min_steps_per_s']:.0f} {ok(t['steps_per_s_pass'])}")
    table.add_row("steps/s of each round", ", ".join(f"{r['steps_per_s']:.0f}" for r in ours["rounds"]), "")
    table.add_row("raysquad per-step time", f"{ours['per_step_ms']:.2f} ms", "")
    table.add_row("raysquad wall (first submit -> last finish)", f"{ours['wall_s']:.2f} s", "")
    table.add_row("task latency p50 / p99 (created -> finished)",
                  f"{lat['p50']:.0f} / {lat['p99']:.0f} ms", "")
    table.add_row("idle runtime: task latency p50, per step",
                  f"{serial['task_latency_ms']['p50']:.1f} ms, {serial['per_step_ms']:.2f} ms", "")
    for label, b in (("batch", ours["breakdown_ms"]), ("idle", serial["breakdown_ms"])):
        if all(b.values()):
            table.add_row(f"{label} p50: dispatch / first step / step gap / finish",
                          " / ".join(f"{b[n]['p50']:.1f}" for n in
                                     ("dispatch", "first_step", "step_gap", "finish")) + " ms", "")
    table.add_row("raw Ray sync round trip", f"{raw['sync_per_call_ms']:.3f} ms", "")
    table.add_row("raw Ray pipelined call", f"{raw['pipelined_per_call_ms']:.3f} ms", "")
    table.add_row("ratio vs sync round trip", f"{r['ratio']['per_step_vs_sync_round_trip']:.2f}x",
                  f"<= {t['max_ratio_vs_round_trip']:.0f}x {ok(t['ratio_pass'])}")
    table.add_row("ratio vs pipelined call", f"{r['ratio']['per_step_vs_pipelined_call']:.2f}x", "")
    console.print(table)


if __name__ == "__main__":
    main()
