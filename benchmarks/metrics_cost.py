"""The cost of raysquad's metrics: benchmarks/step_overhead.py's batch (N tasks of k trivial steps
through the whole path) with metrics on and off, in one run, alternating over ``--rounds`` rounds
so that drift on a busy machine favours neither. Target: at most 5% slower with them on.

    .venv/bin/python benchmarks/metrics_cost.py [--tasks 200] [--steps 5] [--rounds 4]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import ray  # noqa: E402
from rich.console import Console  # noqa: E402

from benchmarks.common import write_result  # noqa: E402
from benchmarks.step_overhead import APPS, OBJECT_STORE_BYTES, WORKFLOW, _batch, _expect_ok  # noqa: E402
from runtime import Runtime, Settings  # noqa: E402
from runtime.actors.cluster import connect  # noqa: E402


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--tasks", type=int, default=200)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--rounds", type=int, default=4, help="rounds of each setting, alternating")
    p.add_argument("--num-cpus", type=int, default=2)
    p.add_argument("--submitters", type=int, default=4)
    p.add_argument("--timeout-s", type=float, default=300.0)
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "metrics_cost.json"))
    args = p.parse_args(argv)
    os.environ["PYTHONPATH"] = os.pathsep.join(
        q for q in (str(ROOT), os.environ.get("PYTHONPATH", "")) if q)
    console = Console(width=100)
    load = os.getloadavg()[0]
    runs: dict[str, list[float]] = {"on": [], "off": []}
    with tempfile.TemporaryDirectory(prefix="raysquad-metrics-") as tmp:
        base = Settings(data_dir=Path(tmp), ray_num_cpus=args.num_cpus,
                        ray_object_store_memory=OBJECT_STORE_BYTES)
        started_ray = connect(base)
        try:
            runtimes = {}
            for setting in ("on", "off"):
                runtimes[setting] = base.model_copy(update={
                    "metrics": setting == "on", "workers": args.workers,
                    "namespace": f"metrics-{setting}-{uuid.uuid4().hex[:6]}",
                    "data_dir": Path(tmp) / setting})
            for r in range(args.rounds):
                for setting in (("on", "off") if r % 2 == 0 else ("off", "on")):
                    console.print(f"round {r + 1}/{args.rounds}: metrics {setting} ...")
                    rt = Runtime.start(runtimes[setting], apps=APPS)
                    try:
                        client = rt.client()
                        for rec in [client.submit(WORKFLOW, {"k": args.steps}) for _ in range(10)]:
                            _expect_ok(client.wait(rec.id, timeout_s=60))
                        done = len(client.list(limit=100_000))
                        result = _batch(rt, client, {"k": args.steps}, args, done + args.tasks)
                        runs[setting].append(result["steps_per_s"])
                    finally:
                        rt.stop(shutdown_ray=False)
        finally:
            if started_ray:
                ray.shutdown()
    on, off = statistics.median(runs["on"]), statistics.median(runs["off"])
    result = {"benchmark": "metrics_cost", "tasks": args.tasks, "steps": args.steps,
              "rounds": args.rounds, "cpus": os.cpu_count(), "loadavg_before": load,
              "python": platform.python_version(), "ray": ray.__version__,
              "steps_per_s_on": on, "steps_per_s_off": off, "rounds_on": runs["on"],
              "rounds_off": runs["off"], "slowdown": 1 - on / off}
    console.print(f"steps/s with metrics on {on:.0f}, off {off:.0f} (median of {args.rounds}): "
                  f"{100 * result['slowdown']:+.1f}% slower with them on (target at most 5%)")
    return write_result(console, args.json, result)


if __name__ == "__main__":
    main()
