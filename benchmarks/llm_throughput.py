"""LLM throughput: concurrent agent calls through raysquad against the same prompts sent straight to vLLM.

For each level c (default 1, 4, 16, 32) a fixed number of requests runs with c in flight at once; a
request that ends is replaced at once, so the engine sees c sequences until the last ones drain.
Throughput is the completion tokens counted by vLLM over the wall time from the first request to the
last one's end. TTFT (p50, p99 per level) is vLLM's own first-token latency of each request on the
direct side, and the engine actor's (from its call to the first token, admission included; its
``stats``) on raysquad's. Each level runs ``--rounds`` times per side and the best round counts: on a shared
machine other work only ever slows a round down, so the best one is the closest to the engine's own pace.

The baseline is vLLM's ``AsyncLLMEngine`` in this process, built with the engine arguments raysquad's
vLLM engine uses (``runtime.llm.vllm``), the prompts rendered with the same chat template, the same
greedy ``SamplingParams``. raysquad runs the workflow ``bench_ask`` (``benchmarks/llm_apps.py``): the
workflow calls an agent, the agent calls ``ctx.chat``, which goes through the Router to the engine actor
and streams tokens into the task's events. raysquad's requests have no ``ignore_eos``, so the prompts
ask for long answers and both sides count the tokens actually generated.

The two engines run one after the other, never both at once (each takes the machine's cores): first the
baseline, which is then shut down, then the runtime on a fresh local Ray cluster. The CPU time of this
process and its descendants (engine core, Ray's processes) is recorded per level, by process. A PNG
beside the JSON draws TTFT and tokens/s per concurrency, both sides.

    .venv/bin/python benchmarks/llm_throughput.py [--levels 1,4,16,32] [--max-tokens 64]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import platform
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make `benchmarks.llm_apps` importable here
    sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402
import ray  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from benchmarks.common import write_result  # noqa: E402
from benchmarks.plots import Panel, draw, png_path  # noqa: E402
from runtime import Client, Runtime, Settings, TaskStatus  # noqa: E402
from runtime.core.config import VLLMEngineConfig  # noqa: E402

WORKFLOW = "bench_ask"
APPS = ["benchmarks.llm_apps"]
MODEL = "smollm2"
MODEL_DIR = ROOT / ".raysquad" / "models" / "smollm2-135m-instruct"
OBJECT_STORE_BYTES = 200 * 1024**2
TARGET_LEVELS = (16, 32)  # issue 14: at least 0.95x of direct vLLM at 16 and at 32 concurrent
TARGET_RATIO = 0.95
# How often the raysquad side looks for finished tasks (to keep c in flight): each look is a Store
# call and a new event loop in this process, CPU that vLLM, which uses both cores, then lacks; the
# baseline's side awaits its requests in-process and costs nothing. 0.2 s delays a refill by 0.1 s
# on average, about 1% of a request of several seconds.
POLL_S = 0.2
# Open-ended requests, so that nearly every answer runs to max_tokens on both sides.
TOPICS = ["a lighthouse keeper", "a robot learning to paint", "the history of bread", "a city under the sea",
          "a journey across a desert", "how rivers shape valleys", "a clockmaker's apprentice",
          "the first winter on Mars"]
PROMPTS = [f"Write a long and detailed story about {t}. Use at least five paragraphs." for t in TOPICS]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = _parse(argv)
    args.loadavg_before = list(os.getloadavg())
    # Ray workers of a local cluster inherit the driver's environment: this is how they find benchmarks/.
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    console = Console(width=120)
    if args.loadavg_before[0] > 1.0:
        console.print(f"[yellow]load average {args.loadavg_before[0]:.1f} on {os.cpu_count()} CPUs: "
                      "other work will skew these figures[/]")
    config = VLLMEngineConfig(model_path=Path(args.model_path).resolve(), max_num_seqs=args.max_num_seqs,
                              max_inflight=args.max_num_seqs)
    assert (config.model_path / "config.json").exists(), f"no model at {config.model_path}: run `make model`"
    console.print(f"direct vLLM: levels {args.levels}, {args.max_tokens} tokens per request ...")
    direct = asyncio.run(measure_direct(config, args, console))
    _wait_engine_gone()
    console.print(f"raysquad ({WORKFLOW}: workflow -> agent -> ctx.chat -> engine actor) ...")
    ours = measure_raysquad(config, args, console)
    result = _result(args, config, direct, ours)
    _print(console, result)
    write_result(console, args.json, result)
    _draw(console, result, png_path(args.json))
    return result


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--levels", type=lambda s: [int(x) for x in s.split(",")], default=[1, 4, 16, 32],
                   help="concurrency levels, comma-separated")
    p.add_argument("--max-tokens", type=int, default=64, help="completion tokens asked per request")
    p.add_argument("--per-slot", type=int, default=2, help="requests per level: per-slot x level ...")
    p.add_argument("--min-requests", type=int, default=4, help="... but at least this many")
    p.add_argument("--rounds", type=int, default=2, help="runs of each level per side; the best counts")
    p.add_argument("--warmup", type=int, default=4, help="requests run at once before measuring, per side")
    p.add_argument("--max-num-seqs", type=int, default=32, help="vLLM's max_num_seqs (and max_inflight)")
    p.add_argument("--model-path", default=str(MODEL_DIR))
    p.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local Ray cluster")
    p.add_argument("--timeout-s", type=float, default=300.0, help="give up on a level after this")
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "llm_throughput.json"))
    return p.parse_args(argv)


def _requests(args: argparse.Namespace, level: int) -> int:
    return max(args.min_requests, args.per_slot * level)


# -- direct vLLM ------------------------------------------------------------------------------------


def build_direct_engine(config: VLLMEngineConfig) -> Any:
    """vLLM's async engine with the arguments ``runtime.llm.vllm.VLLMEngine`` gives it."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(config.cpu_kvcache_gib))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from vllm.engine.async_llm_engine import AsyncLLMEngine

    from runtime.llm.vllm import engine_args

    return AsyncLLMEngine.from_engine_args(engine_args(MODEL, config))


async def measure_direct(config: VLLMEngineConfig, args: argparse.Namespace,
                         console: Console) -> dict[str, Any]:
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    t0 = time.perf_counter()
    engine = build_direct_engine(config)
    start_s = time.perf_counter() - t0
    try:
        tokenizer = engine.get_tokenizer()
        prompts = [str(tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                                     add_generation_prompt=True)) for p in PROMPTS]
        params = SamplingParams(max_tokens=args.max_tokens, temperature=0.0,
                                output_kind=RequestOutputKind.FINAL_ONLY)

        async def one(i: int) -> dict[str, Any]:
            began = time.perf_counter()
            final = None
            async for out in engine.generate(prompts[i % len(prompts)], params, uuid.uuid4().hex):
                final = out
            assert final is not None and final.finished
            return {"tokens": len(final.outputs[0].token_ids), "finish": final.outputs[0].finish_reason,
                    "text": final.outputs[0].text, "latency_s": time.perf_counter() - began,
                    "ttft_s": final.metrics.first_token_latency if final.metrics else None}

        await asyncio.gather(*(one(i) for i in range(args.warmup)))
        levels = {}
        for level in args.levels:
            levels[level] = _best([await _direct_level(one, level, _requests(args, level))
                                   for _ in range(args.rounds)])
            console.print(f"  direct c={level}: {levels[level]['tokens_per_s']:.1f} tok/s")
    finally:
        engine.shutdown()
        # Its __del__ shuts it down again: let that run now, since at interpreter exit it fails (a frame
        # of this coroutine outlives the run and would keep the engine until then).
        engine = None
    return {"engine_start_s": start_s, "output_kind": "final_only", "levels": levels}


async def _direct_level(one: Callable[[int], Awaitable[dict[str, Any]]], level: int,
                        n: int) -> dict[str, Any]:
    gate = asyncio.Semaphore(level)

    async def gated(i: int) -> dict[str, Any]:
        async with gate:
            return await one(i)

    cpu = CpuMeter()
    t0 = time.perf_counter()
    outs = await asyncio.gather(*(gated(i) for i in range(n)))
    wall_s = time.perf_counter() - t0
    return _level_result(level, outs, wall_s, cpu.used(),
                         [o["ttft_s"] for o in outs if o["ttft_s"] is not None])


def _wait_engine_gone(timeout_s: float = 30.0) -> None:
    """Wait until the baseline's engine processes have exited: the two engines never share the cores."""
    deadline = time.monotonic() + timeout_s
    while _engine_running():
        if time.monotonic() > deadline:
            raise RuntimeError("the direct engine's processes did not exit")
        time.sleep(0.2)


def _engine_running() -> bool:
    for p in psutil.Process().children(recursive=True):
        try:
            if _title(p).startswith("VLLM::"):
                return True
        except psutil.Error:  # it exited meanwhile
            continue
    return False


# -- raysquad ---------------------------------------------------------------------------------------


def measure_raysquad(config: VLLMEngineConfig, args: argparse.Namespace,
                     console: Console) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="raysquad-bench-") as data_dir:
        settings = Settings(
            data_dir=Path(data_dir), namespace=f"bench-{uuid.uuid4().hex[:8]}", engine="vllm",
            default_model=MODEL, vllm=config, ray_num_cpus=args.num_cpus,
            ray_object_store_memory=OBJECT_STORE_BYTES, lease_s=60.0,
        )
        t0 = time.perf_counter()
        rt = Runtime.start(settings, apps=APPS)
        start_s = time.perf_counter() - t0
        try:
            client = rt.client()
            warm = [client.submit(WORKFLOW, _input(args, i)) for i in range(args.warmup)]
            for rec in warm:
                _expect_ok(client.wait(rec.id, timeout_s=args.timeout_s))
            levels = {}
            for level in args.levels:
                levels[level] = _best([_raysquad_level(rt, client, args, level)
                                       for _ in range(args.rounds)])
                console.print(f"  raysquad c={level}: {levels[level]['tokens_per_s']:.1f} tok/s")
        finally:
            rt.stop()  # and Ray with it: this script started the cluster
    return {"engine_start_s": start_s, "settings": settings.model_dump(mode="json", include={
        "workers", "tasks_per_worker", "worker_num_cpus", "ray_num_cpus", "store"}), "levels": levels}


def _input(args: argparse.Namespace, i: int) -> dict[str, Any]:
    return {"question": PROMPTS[i % len(PROMPTS)], "max_tokens": args.max_tokens}


def _raysquad_level(rt: Runtime, client: Client, args: argparse.Namespace, level: int) -> dict[str, Any]:
    """Keep ``level`` tasks in flight until ``n`` have succeeded, topping up as the Store counts them.

    The wall time runs from the first submit to the Store's ``finished_at`` of the last task.
    """
    n = _requests(args, level)
    before = asyncio.run(rt.store.count_tasks(TaskStatus.SUCCEEDED))
    (engine,) = rt.engines[MODEL]
    ttft_before = len(asyncio.run(engine.stats())["ttft_s"])
    deadline = time.monotonic() + args.timeout_s
    ids: list[str] = []
    cpu = CpuMeter()
    t0 = time.time()
    polls = 0
    while True:
        done = asyncio.run(rt.store.count_tasks(TaskStatus.SUCCEEDED)) - before
        while len(ids) < min(n, done + level):
            ids.append(client.submit(WORKFLOW, _input(args, len(ids))).id)
        if done >= n:
            break
        polls += 1
        if polls % 20 == 0 and (time.monotonic() > deadline or
                                asyncio.run(rt.store.count_tasks(TaskStatus.FAILED))):
            raise RuntimeError(f"level {level}: tasks did not all succeed in time")
        time.sleep(POLL_S)  # one small Store call per poll: the poll takes little from what it measures
    used = cpu.used()
    ttft = asyncio.run(engine.stats())["ttft_s"][ttft_before:]
    records = [_expect_ok(client.get(i)) for i in ids]
    wall_s = max(r.finished_at or 0.0 for r in records) - t0
    outs = [{"tokens": r.output["tokens"], "finish": r.output["finish"], "text": r.output["text"],
             "latency_s": (r.finished_at or 0.0) - r.created_at} for r in records]
    return _level_result(level, outs, wall_s, used, ttft)


def _expect_ok(record: Any) -> Any:
    if record.status is not TaskStatus.SUCCEEDED:
        raise RuntimeError(f"task {record.id} ended {record.status.value}: {record.error}")
    return record


# -- measurement and report ------------------------------------------------------------------------


class CpuMeter:
    """CPU seconds used by this process and its descendants since creation, grouped by process title."""

    def __init__(self) -> None:
        self._start = self._snapshot()

    @staticmethod
    def _snapshot() -> dict[int, tuple[str, float]]:
        me = psutil.Process()
        snap = {}
        for p in [me, *me.children(recursive=True)]:
            try:
                t = p.cpu_times()
                snap[p.pid] = (_title(p), t.user + t.system)
            except psutil.Error:
                continue
        return snap

    def used(self) -> dict[str, float]:
        """CPU seconds per process title, largest first (processes that ended meanwhile are missed)."""
        by_name: dict[str, float] = defaultdict(float)
        for pid, (name, total) in self._snapshot().items():
            by_name[name] += total - self._start.get(pid, (name, 0.0))[1]
        return dict(sorted(((k, round(v, 2)) for k, v in by_name.items() if v >= 0.05),
                           key=lambda kv: -kv[1]))


def _title(p: psutil.Process) -> str:
    """``ray::EngineActor`` for a Ray worker busy in ``EngineActor.chat``; the program's name otherwise."""
    first = (p.cmdline() or [p.name()])[0].split(" ")[0]
    return first.split(".")[0] if first.startswith("ray::") else first.rsplit("/", 1)[-1][:40]


def _best(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The fastest round, with the throughput of every round kept."""
    best = dict(max(rounds, key=lambda r: r["tokens_per_s"]))
    best["rounds_tokens_per_s"] = [r["tokens_per_s"] for r in rounds]
    return best


def _level_result(level: int, outs: list[dict[str, Any]], wall_s: float,
                  cpu_s: dict[str, float], ttft: list[float]) -> dict[str, Any]:
    tokens = sum(o["tokens"] for o in outs)
    latencies = sorted(o["latency_s"] for o in outs)
    return {
        "concurrency": level, "requests": len(outs), "completion_tokens": tokens, "wall_s": wall_s,
        "tokens_per_s": tokens / wall_s,
        "finished_by_length": sum(o["finish"] == "length" for o in outs),
        "latency_s": {"p50": latencies[len(latencies) // 2], "max": latencies[-1]},
        "ttft_s": {"p50": _quantile(ttft, 0.5), "p99": _quantile(ttft, 0.99), "n": len(ttft)},
        "cpu_s": cpu_s, "texts": [o["text"] for o in outs],
    }


def _quantile(values: list[float], q: float) -> float | None:
    """The nearest-rank quantile; None without values."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)] if ordered else None


def _result(args: argparse.Namespace, config: VLLMEngineConfig, direct: dict[str, Any],
            ours: dict[str, Any]) -> dict[str, Any]:
    levels = []
    for level in args.levels:
        d, r = direct["levels"][level], ours["levels"][level]
        same = sum(a == b for a, b in zip(d.pop("texts"), r.pop("texts"), strict=True))
        levels.append({"concurrency": level, "direct_tokens_per_s": d["tokens_per_s"],
                       "raysquad_tokens_per_s": r["tokens_per_s"],
                       "ratio": r["tokens_per_s"] / d["tokens_per_s"], "identical_texts": same,
                       "direct": d, "raysquad": r})
    at_target = [lv for lv in levels if lv["concurrency"] in TARGET_LEVELS]
    return {
        "benchmark": "llm_throughput",
        "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "levels": levels,
        "targets": {"levels": list(TARGET_LEVELS), "min_ratio": TARGET_RATIO,
                    "ratios": {lv["concurrency"]: lv["ratio"] for lv in at_target},
                    "pass": bool(at_target) and all(lv["ratio"] >= TARGET_RATIO
                                                    for lv in at_target)},
        "engine_start_s": {"direct": direct["engine_start_s"], "raysquad": ours["engine_start_s"]},
        "settings": {"args": {k: v for k, v in vars(args).items() if k != "loadavg_before"},
                     "vllm": config.model_dump(mode="json"), "direct_output_kind": direct["output_kind"],
                     "runtime": ours["settings"], "prompts": PROMPTS},
        "machine": {"nproc": os.cpu_count(), "python": platform.python_version(),
                    "ray": ray.__version__, "vllm": _vllm_version(), "platform": platform.platform(),
                    "loadavg_before": args.loadavg_before, "loadavg_after": list(os.getloadavg())},
    }


def _vllm_version() -> str:
    import vllm

    return str(vllm.__version__)


def _print(console: Console, r: dict[str, Any]) -> None:
    t = r["targets"]
    args = r["settings"]["args"]
    table = Table(title=f"LLM throughput: {args['max_tokens']} tokens per request, completion tokens/s, "
                        f"best of {args['rounds']} rounds (load avg {r['machine']['loadavg_before'][0]:.1f})")
    for name in ("concurrent", "requests", "direct tok/s", "raysquad tok/s", "ratio", "same text",
                 "rounds d / r", "TTFT p50 d / r"):
        table.add_column(name, justify="right")
    for lv in r["levels"]:
        ratio = f"{lv['ratio']:.2f}x"
        if lv["concurrency"] in t["levels"]:
            mark = "[green]pass[/]" if lv["ratio"] >= t["min_ratio"] else "[red]miss[/]"
            ratio += f" (>= {t['min_ratio']}x {mark})"
        table.add_row(str(lv["concurrency"]), str(lv["direct"]["requests"]),
                      f"{lv['direct_tokens_per_s']:.1f}", f"{lv['raysquad_tokens_per_s']:.1f}", ratio,
                      f"{lv['identical_texts']}/{lv['direct']['requests']}",
                      " / ".join(", ".join(f"{x:.0f}" for x in lv[side]["rounds_tokens_per_s"])
                                 for side in ("direct", "raysquad")),
                      " / ".join(_seconds(lv[side]["ttft_s"]["p50"]) for side in ("direct", "raysquad")))
    console.print(table)
    for lv in r["levels"]:
        if lv["concurrency"] in t["levels"]:
            for side in ("direct", "raysquad"):
                top = ", ".join(f"{k} {v:.1f}" for k, v in list(lv[side]["cpu_s"].items())[:6])
                console.print(f"CPU s at {lv['concurrency']} concurrent, {side} "
                              f"({lv[side]['wall_s']:.1f} s wall): {top}")


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def _draw(console: Console, result: dict[str, Any], path: Path) -> None:
    levels = result["levels"]
    xs = [lv["concurrency"] for lv in levels]
    args = result["settings"]["args"]

    def ttft(side: str, q: str) -> list[float]:
        return [lv[side]["ttft_s"][q] or 0.0 for lv in levels]

    draw(console, path, f"LLM throughput: {args['max_tokens']} tokens per request, "
                        f"{Path(args['model_path']).name} on vLLM ({result['machine']['nproc']} CPUs)", [
        Panel("time to first token", "seconds", xs, {
            "direct p50": ttft("direct", "p50"), "raysquad p50": ttft("raysquad", "p50"),
            "direct p99": ttft("direct", "p99"), "raysquad p99": ttft("raysquad", "p99")},
            lines=True, xlabel="requests in flight", styles={
                "direct p50": {"color": "C0"}, "raysquad p50": {"color": "C1"},
                "direct p99": {"color": "C0", "linestyle": "--"},
                "raysquad p99": {"color": "C1", "linestyle": "--"}}),
        Panel("throughput", "completion tokens / s", xs, {
            "direct vLLM": [lv["direct_tokens_per_s"] for lv in levels],
            "raysquad": [lv["raysquad_tokens_per_s"] for lv in levels]},
            lines=True, xlabel="requests in flight"),
    ])


if __name__ == "__main__":
    main()
