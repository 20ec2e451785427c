"""Event latency: from ``Client.publish`` to the first step of the task it starts (a workflow
trigger), and to the start of a subscribing agent's handler with a warm replica and from zero
replicas (the role scaled to zero, so a replica must start); then events/s through to started
tasks for a burst. Prints a table and writes JSON.

    .venv/bin/python benchmarks/event_latency.py [--samples 30] [--cold-samples 5] [--burst 300]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import ray  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from benchmarks.common import write_result  # noqa: E402
from runtime import AgentPoolConfig, Runtime, Settings  # noqa: E402

APPS = ["benchmarks.event_app"]
IDLE_S = 1.0  # the cold role's replicas go this long after their last message


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = _parse(argv)
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    console = Console(width=110)
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="raysquad-events-") as tmp:
        side = Path(tmp) / "side"
        side.mkdir()
        settings = Settings(data_dir=Path(tmp) / "state", ray_num_cpus=4, event_poll_s=0.5,
                            ray_object_store_memory=200 * 1024**2,
                            agents={"cold_listener": AgentPoolConfig(min_replicas=0,
                                                                     idle_s=IDLE_S)})
        with Runtime.start(settings, apps=APPS) as rt:
            client = rt.client()
            rows = [
                _latency(client, side, "bench.task", "task", args.samples, args, rt=None),
                _latency(client, side, "bench.warm", "warm", args.samples, args, rt=None),
                _latency(client, side, "bench.cold", "cold", args.cold_samples, args, rt=rt),
            ]
            burst = _burst(client, side, args)
    result = {"benchmark": "event_latency", "cpus": os.cpu_count(), "loadavg_before": load,
              "python": platform.python_version(), "ray": ray.__version__,
              "event_poll_s": 0.5, "latency": rows, "burst": burst}
    _print(console, result)
    return write_result(console, args.json, result)


def _wait_file(path: Path, timeout_s: float) -> float:
    deadline = time.monotonic() + timeout_s
    while not path.exists() or not path.read_text():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path.name} never appeared")
        time.sleep(0.002)
    return float(path.read_text())


def _replicas(rt: Runtime, role: str) -> int:
    return int(asyncio.run(rt.pools[role].stats())["replicas"])


def _latency(client: Any, side: Path, topic: str, prefix: str, samples: int,
             args: argparse.Namespace, rt: Runtime | None) -> dict[str, Any]:
    seconds = []
    for i in range(samples):
        if rt is not None:  # from zero: wait until the role has no replica left
            deadline = time.monotonic() + 60
            while _replicas(rt, "cold_listener") and time.monotonic() < deadline:
                time.sleep(0.1)
        n = f"{i}-{time.monotonic_ns()}"
        sent = time.time()
        client.publish(topic, {"dir": str(side), "n": n})
        seconds.append(_wait_file(side / f"{prefix}-{n}", args.timeout_s) - sent)
    seconds.sort()
    return {"path": {"task": "workflow trigger, workers warm", "warm": "agent, warm replica",
                     "cold": "agent, from zero replicas"}[prefix],
            "samples": samples, "p50_ms": 1000 * statistics.median(seconds),
            "p99_ms": 1000 * seconds[min(len(seconds) - 1, int(0.99 * len(seconds)))],
            "max_ms": 1000 * seconds[-1]}


def _burst(client: Any, side: Path, args: argparse.Namespace) -> dict[str, Any]:
    names = [f"b{i}" for i in range(args.burst)]
    start = time.time()
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda n: client.publish("bench.task", {"dir": str(side), "n": n}), names))
    published = time.time()
    last = max(_wait_file(side / f"task-{n}", args.timeout_s) for n in names)
    return {"events": args.burst, "publish_s": published - start, "all_started_s": last - start,
            "events_per_s": args.burst / (last - start)}


def _print(console: Console, result: dict[str, Any]) -> None:
    table = Table(title=f"publish to first step, {result['cpus']} CPUs")
    for column in ("path", "samples", "p50 ms", "p99 ms", "max ms"):
        table.add_column(column, justify="right")
    for row in result["latency"]:
        table.add_row(row["path"], str(row["samples"]), f"{row['p50_ms']:.0f}",
                      f"{row['p99_ms']:.0f}", f"{row['max_ms']:.0f}")
    console.print(table)
    b = result["burst"]
    console.print(f"burst: {b['events']} events published in {b['publish_s']:.2f} s, all tasks "
                  f"started after {b['all_started_s']:.2f} s: {b['events_per_s']:.0f} events/s")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--samples", type=int, default=30)
    p.add_argument("--cold-samples", type=int, default=5)
    p.add_argument("--burst", type=int, default=300)
    p.add_argument("--timeout-s", type=float, default=120.0)
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "event_latency.json"))
    return p.parse_args(argv)


if __name__ == "__main__":
    main()
