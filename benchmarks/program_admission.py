"""Program-aware admission: short tasks are not stuck behind long ones at a busy engine.

A mixed load on one engine with few slots: long tasks (8 model calls each, one after another) all
start at once, and short tasks (1 call) arrive at a steady rate while they run. Run twice on the
same load: with program-aware admission (``admission_service_weight`` 1: within a priority, the task
with the least engine time so far goes first, aging bounding every wait) and in first-come order
(weight 0). Printed and written as JSON, drawn as a PNG next to it: the short tasks' latency (p50,
p99) and the long tasks' makespan in each mode, and their ratios.

The engine is the simulated one (its latency model: time to first token, time per token) with its
real admission queue (``runtime/llm/admission.py``, the same class a vLLM engine admits with), run
in this process: what is measured is the order the queue gives, not Ray's or the Store's costs.
Targets: short p99 at most 0.5x first-come order's; long makespan within 10%.

    .venv/bin/python benchmarks/program_admission.py [--long 12 --short 48 --slots 4]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import write_result  # noqa: E402
from benchmarks.plots import Panel, draw, png_path  # noqa: E402
from runtime.core.config import SimulatedEngineConfig  # noqa: E402
from runtime.core.models import ChatMessage, ChatRequest  # noqa: E402
from runtime.llm.simulated import SimulatedEngine  # noqa: E402

LONG_CALLS = 8


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def run_load(args: argparse.Namespace, weight: float) -> dict[str, Any]:
    engine = SimulatedEngine("sim", SimulatedEngineConfig(
        ttft_s=args.ttft_s, tpot_s=args.tpot_s, max_concurrency=args.slots,
        admission_aging_per_s=1.0, admission_service_weight=weight))

    async def task(name: str, calls: int) -> float:
        started = time.monotonic()
        for i in range(calls):
            request = ChatRequest(model="sim", max_tokens=args.tokens, request_id=f"{name}/llm#{i}",
                                  messages=[ChatMessage(role="user", content=f"{name} call {i}")])
            await engine.chat(request)
        return time.monotonic() - started

    began = time.monotonic()
    longs = [asyncio.create_task(task(f"long-{i}", LONG_CALLS)) for i in range(args.long)]
    shorts = []
    for i in range(args.short):
        await asyncio.sleep(args.short_every_s)
        shorts.append(asyncio.create_task(task(f"short-{i}", 1)))
    short_s = await asyncio.gather(*shorts)
    await asyncio.gather(*longs)
    makespan = max(t.result() for t in longs)
    return {"short_p50_s": statistics.median(short_s), "short_p99_s": percentile(short_s, 0.99),
            "short_max_s": max(short_s), "long_makespan_s": makespan,
            "all_s": time.monotonic() - began, "short_latencies_s": sorted(short_s)}


def panels(result: dict[str, Any]) -> list[Panel]:
    """The short tasks' latency by percentile and the long tasks' makespan, per admission."""
    modes = {"first come": result["first_come"], "program aware": result["program_aware"]}
    cuts = (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0))
    return [Panel("short tasks' latency", "ms", [name for name, _ in cuts],
                  {mode: [percentile(r["short_latencies_s"], q) * 1000 for _, q in cuts]
                   for mode, r in modes.items()}),
            Panel(f"long tasks' makespan ({LONG_CALLS} calls each)", "s", ["makespan"],
                  {mode: [r["long_makespan_s"]] for mode, r in modes.items()})]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--long", type=int, default=12, help="long tasks, 8 calls each, all at the start")
    p.add_argument("--short", type=int, default=48, help="short tasks, 1 call each")
    p.add_argument("--short-every-s", type=float, default=0.05, help="between short arrivals")
    p.add_argument("--slots", type=int, default=4, help="requests the engine runs at once")
    p.add_argument("--ttft-s", type=float, default=0.05)
    p.add_argument("--tpot-s", type=float, default=0.002)
    p.add_argument("--tokens", type=int, default=32, help="max_tokens of each call")
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "program_admission.json"))
    args = p.parse_args(argv)
    console = Console()
    result: dict[str, Any] = {"load": {"long": args.long, "long_calls": LONG_CALLS,
                                       "short": args.short, "short_every_s": args.short_every_s,
                                       "slots": args.slots, "ttft_s": args.ttft_s,
                                       "tpot_s": args.tpot_s, "tokens": args.tokens}}
    result["first_come"] = asyncio.run(run_load(args, weight=0.0))
    weight = SimulatedEngineConfig().admission_service_weight  # the default
    result["program_aware"] = asyncio.run(run_load(args, weight=weight))
    fc, pa = result["first_come"], result["program_aware"]
    result["short_p99_ratio"] = pa["short_p99_s"] / fc["short_p99_s"]
    result["long_makespan_ratio"] = pa["long_makespan_s"] / fc["long_makespan_s"]
    result["met"] = result["short_p99_ratio"] <= 0.5 and abs(result["long_makespan_ratio"] - 1) <= 0.10
    table = Table("admission", "short p50 ms", "short p99 ms", "long makespan s", "all s",
                  title="program-aware admission vs first-come order")
    for mode in ("first_come", "program_aware"):
        r = result[mode]
        table.add_row(mode.replace("_", " "), f"{r['short_p50_s'] * 1000:.0f}",
                      f"{r['short_p99_s'] * 1000:.0f}", f"{r['long_makespan_s']:.2f}",
                      f"{r['all_s']:.2f}")
    console.print(table)
    console.print(f"short p99 ratio {result['short_p99_ratio']:.2f} (target <= 0.5); long makespan "
                  f"ratio {result['long_makespan_ratio']:.3f} (target within 10%): "
                  f"{'met' if result['met'] else 'NOT met'}")
    load = result["load"]
    draw(console, png_path(args.json), f"{load['long']} long + {load['short']} short tasks, "
                                        f"{load['slots']} engine slots", panels(result))
    return write_result(console, args.json, result)


if __name__ == "__main__":
    main()
