"""Agent sessions: concurrent multi-turn agent conversations on two vLLM replicas, by routing.

Each conversation is one agent step (``agent_session`` in ``benchmarks/session_apps.py``): a shared
system prompt (about 290 tokens), a first lookup's result, then ``--turns`` chats, an archive
lookup's result (a real tool call, about 140 tokens) added between turns, so the history grows
every turn and every turn sends all of it again. A lookup takes between 0 and 2 s (1 s on average,
``--tool-latency-s``; fixed per conversation and turn), as a real one does: so the conversations'
turns do not stay in step, as they would with instant tools, where a conversation's next turn
would find only the slot its last turn freed and even least-loaded routing would keep it on one
replica. ``--conversations`` of them run at once, through the runtime (workflow -> agent ->
``ctx.chat`` -> the agent replica's Router -> an engine actor), on ``--replicas`` vLLM engine
replicas with prefix caching on.

The same load runs once per routing (``least_loaded``, then ``affinity``), each on a fresh runtime
(fresh engines, empty prefix caches). Measured per routing:

- the prefix-cache hit rate: vLLM's own counters in each engine (prompt tokens looked up in the
  cache, and found there; ``EngineActor.stats``), over the whole load;
- TTFT p50 and p99: each request's time from the engine actor's call to its first token
  (admission wait included), as each engine recorded it;
- tokens/s: the completion tokens vLLM generated over the makespan, from the first submit to the
  Store's ``finished_at`` of the last conversation;
- how often a turn ran on the replica of the turn before it (``stayed``; from the request ids each
  engine served).

The JSON holds the ratios affinity / least_loaded (``hit_rate_ratio``, ``ttft_p50_ratio``,
``tok_s_ratio``); a PNG beside it draws hit rate, TTFT and tokens/s per routing.

On this 2-core CPU machine each replica gets a core of its own (``--cpu-bind 0,1``: vLLM's own
choice would put both on core 0, keeping core 1 for the frontends). On a GPU machine, ``--gpu``
with ``--model-path`` (and ``--gpus-per-replica``: two replicas share one GPU by default).

    .venv/bin/python benchmarks/agent_sessions.py [--conversations 16] [--turns 6]
    .venv/bin/python benchmarks/agent_sessions.py --gpu --model-path /models/Qwen2.5-7B-Instruct
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
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make `benchmarks.session_apps` importable here
    sys.path.insert(0, str(ROOT))

import ray  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from benchmarks.common import write_result  # noqa: E402
from benchmarks.plots import Panel, draw, png_path  # noqa: E402
from benchmarks.session_apps import TOPICS  # noqa: E402
from runtime import Runtime, Settings, TaskStatus  # noqa: E402
from runtime.core.config import VLLMEngineConfig  # noqa: E402
from runtime.core.models import ChatMessage, ChatRequest  # noqa: E402

WORKFLOW = "agent_session"
APPS = ["benchmarks.session_apps"]
MODEL = "smollm2"
MODEL_DIR = ROOT / ".raysquad" / "models" / "smollm2-135m-instruct"
OBJECT_STORE_BYTES = 200 * 1024**2
ROUTINGS = ("least_loaded", "affinity")
# Issue 26, must-show 1: affinity against least_loaded.
TARGETS = {"hit_rate_ratio": (">=", 2.0), "ttft_p50_ratio": ("<=", 0.6), "tok_s_ratio": (">=", 1.2)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = _parse(argv)
    args.loadavg_before = list(os.getloadavg())
    # Ray workers of a local cluster inherit the driver's environment: this is how they find benchmarks/.
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    console = Console(width=130)
    if args.loadavg_before[0] > 1.0:
        console.print(f"[yellow]load average {args.loadavg_before[0]:.1f} on {os.cpu_count()} CPUs: "
                      "other work will skew these figures[/]")
    config = _engine_config(args)
    assert (config.model_path / "config.json").exists(), f"no model at {config.model_path}: run `make model`"
    runs: dict[str, list[dict[str, Any]]] = {r: [] for r in args.routings}
    for n in range(args.rounds):
        for routing in args.routings:
            console.print(f"round {n + 1}: {routing} routing, {args.conversations} conversations x "
                          f"{args.turns} turns on {args.replicas} replicas ...")
            runs[routing].append(measure(routing, config, args))
            console.print(f"  {_line(runs[routing][-1])}")
    result = _result(args, config, {r: _best(rs) for r, rs in runs.items()})
    _print(console, result)
    write_result(console, args.json, result)
    _draw(console, result, png_path(args.json))
    return result


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--conversations", type=int, default=16, help="conversations at once")
    p.add_argument("--turns", type=int, default=6, help="chats per conversation")
    p.add_argument("--max-tokens", type=int, default=48, help="completion tokens asked per turn")
    p.add_argument("--tool-words", type=int, default=110, help="words of each tool result")
    p.add_argument("--tool-latency-s", type=float, default=1.0,
                   help="mean time a lookup takes (each between 0 and twice this, fixed per turn)")
    p.add_argument("--replicas", type=int, default=2, help="vLLM engine replicas")
    p.add_argument("--routings", type=lambda s: s.split(","), default=list(ROUTINGS),
                   help="routings to compare, comma-separated, in the order run")
    p.add_argument("--slack", type=int, default=Settings.model_fields["engine_affinity_slack"].default,
                   help="RAYSQUAD_ENGINE_AFFINITY_SLACK for affinity routing")
    p.add_argument("--rounds", type=int, default=1, help="runs per routing (alternating); the best counts")
    p.add_argument("--max-num-seqs", type=int, default=32, help="vLLM's max_num_seqs (and max_inflight)")
    p.add_argument("--model-path", default=str(MODEL_DIR))
    p.add_argument("--cpu-bind", default="0,1",
                   help="CPU: VLLM_CPU_OMP_THREADS_BIND per replica, comma-separated ('' for vLLM's own)")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray cluster")
    p.add_argument("--gpu", action="store_true", help="a GPU machine: replicas on GPUs, no CPU binding")
    p.add_argument("--gpus-per-replica", type=float, default=None,
                   help="with --gpu: GPUs each replica asks for (default: one GPU shared by all)")
    p.add_argument("--gpu-memory-utilization", type=float, default=None,
                   help="with --gpu: each replica's share of its GPU's memory (default 0.85 / replicas)")
    p.add_argument("--dtype", default=None, help="vLLM dtype (default: float32 on CPU, auto on GPU)")
    p.add_argument("--max-model-len", type=int, default=None, help="default: 2048 on CPU, 4096 on GPU")
    p.add_argument("--timeout-s", type=float, default=1800.0, help="give up on a routing's load after this")
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "agent_sessions.json"))
    args = p.parse_args(argv)
    bad = [r for r in args.routings if r not in ROUTINGS]
    if bad:
        p.error(f"unknown routing {bad}: choose from {list(ROUTINGS)}")
    return args


def _engine_config(args: argparse.Namespace) -> VLLMEngineConfig:
    common: dict[str, Any] = {
        "model_path": Path(args.model_path).resolve(), "replicas": args.replicas,
        "max_num_seqs": args.max_num_seqs, "max_inflight": args.max_num_seqs,
        "max_model_len": args.max_model_len or (4096 if args.gpu else 2048), "prefix_caching": True}
    if args.gpu:
        return VLLMEngineConfig(
            **common, dtype=args.dtype or "auto", enforce_eager=False,
            num_gpus=args.gpus_per_replica or 1.0 / args.replicas,
            gpu_memory_utilization=args.gpu_memory_utilization or 0.85 / args.replicas)
    return VLLMEngineConfig(**common, dtype=args.dtype or "float32",
                            cpu_threads_bind=tuple(c for c in args.cpu_bind.split(",") if c))


# -- one routing's run ------------------------------------------------------------------------------


def measure(routing: str, config: VLLMEngineConfig, args: argparse.Namespace) -> dict[str, Any]:
    """The whole load on a fresh runtime routed by ``routing``; vLLM's counters before and after."""
    with tempfile.TemporaryDirectory(prefix="raysquad-sessions-") as data_dir:
        settings = Settings(
            data_dir=Path(data_dir), namespace=f"sessions-{uuid.uuid4().hex[:8]}", engine="vllm",
            default_model=MODEL, vllm=config, engine_routing=routing,
            engine_affinity_slack=args.slack, ray_num_cpus=args.num_cpus,
            ray_object_store_memory=OBJECT_STORE_BYTES, lease_s=60.0)
        t0 = time.perf_counter()
        rt = Runtime.start(settings, apps=APPS)
        start_s = time.perf_counter() - t0
        try:
            engines = rt.engines[MODEL]
            # Each engine's first request is slow (lazy set-up): one, unlike the load, on each first.
            hello = ChatRequest(model=MODEL, max_tokens=4,
                                messages=[ChatMessage(role="user", content="Say hello.")])
            asyncio.run(_gather(e.chat(hello) for e in engines))
            before = asyncio.run(_gather(e.stats() for e in engines))
            client = rt.client()
            began = time.time()
            ids = [client.submit(WORKFLOW, {"topic": _topic(i), "turns": args.turns,
                                            "max_tokens": args.max_tokens,
                                            "tool_words": args.tool_words,
                                            "tool_latency_s": args.tool_latency_s}).id
                   for i in range(args.conversations)]
            records = [client.wait(i, timeout_s=args.timeout_s) for i in ids]
            failed = [r for r in records if r.status is not TaskStatus.SUCCEEDED]
            if failed:
                raise RuntimeError(f"{len(failed)} conversation(s) did not succeed: {failed[0].error}")
            after = asyncio.run(_gather(e.stats() for e in engines))
        finally:
            rt.stop()  # and Ray with it: this script started the cluster
    makespan_s = max(r.finished_at or 0.0 for r in records) - began
    return _run_result(routing, start_s, makespan_s, before, after,
                       [r.output["prompt_tokens"] for r in records])


def _topic(i: int) -> str:
    """Conversation ``i``'s topic: each conversation its own."""
    return TOPICS[i % len(TOPICS)] + (f" (part {i // len(TOPICS) + 1})" if i >= len(TOPICS) else "")


async def _gather(calls: Any) -> list[Any]:
    return list(await asyncio.gather(*calls))


def _run_result(routing: str, start_s: float, makespan_s: float, before: list[dict[str, Any]],
                after: list[dict[str, Any]], prompts: list[list[int]]) -> dict[str, Any]:
    """One routing's figures from the engines' counters (after minus before)."""
    per_replica = []
    ttft: list[float] = []
    served: dict[tuple[str, int], int] = {}  # (conversation, turn) -> replica
    for replica, (b, a) in enumerate(zip(before, after, strict=True)):
        for request_id in a["request_ids"][len(b["request_ids"]):]:
            conversation, _, turn = request_id.rpartition("/")  # <task>/<step>/<turn>
            served[(conversation, int(turn))] = replica
        delta = {k: a[k] - b[k] for k in ("requests", "prompt_tokens", "completion_tokens",
                                          "prefix_queried", "prefix_hits")}
        samples = a["ttft_s"][len(b["ttft_s"]):]  # the engine keeps its last 10,000: enough here
        ttft += samples
        delta["hit_rate"] = delta["prefix_hits"] / delta["prefix_queried"] if delta["prefix_queried"] else 0.0
        per_replica.append(delta)
    queried = sum(r["prefix_queried"] for r in per_replica)
    hits = sum(r["prefix_hits"] for r in per_replica)
    tokens = sum(r["completion_tokens"] for r in per_replica)
    later = [(c, t) for c, t in served if t > 1]
    return {
        "routing": routing, "engine_start_s": start_s, "makespan_s": makespan_s,
        "requests": sum(r["requests"] for r in per_replica),
        "prompt_tokens": sum(r["prompt_tokens"] for r in per_replica), "completion_tokens": tokens,
        "prefix_queried": queried, "prefix_hits": hits, "hit_rate": hits / queried if queried else 0.0,
        "ttft_s": {"p50": _quantile(ttft, 0.5), "p99": _quantile(ttft, 0.99), "mean": sum(ttft) / len(ttft),
                   "n": len(ttft)},
        "tokens_per_s": tokens / makespan_s,
        # How often a turn ran where the turn before it had: where its history is cached.
        "stayed": sum(served[(c, t)] == served.get((c, t - 1)) for c, t in later) / len(later)
        if later else 0.0,
        "per_replica": per_replica,
        "prompt_tokens_by_turn": [sum(p[t] for p in prompts) / len(prompts) for t in range(len(prompts[0]))],
    }


def _quantile(values: list[float], q: float) -> float:
    """The nearest-rank quantile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def _best(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The round with the most tokens/s, with every round's kept."""
    best = dict(max(runs, key=lambda r: r["tokens_per_s"]))
    best["rounds"] = [{k: r[k] for k in ("hit_rate", "ttft_s", "tokens_per_s", "makespan_s", "stayed")}
                      for r in runs]
    return best


# -- report -------------------------------------------------------------------------------------------


def _result(args: argparse.Namespace, config: VLLMEngineConfig,
            by_routing: dict[str, dict[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {"benchmark": "agent_sessions", "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                              "routings": by_routing}
    if set(ROUTINGS) <= set(by_routing):
        ll, aff = by_routing["least_loaded"], by_routing["affinity"]
        ratios = {"hit_rate_ratio": aff["hit_rate"] / ll["hit_rate"] if ll["hit_rate"] else math.inf,
                  "ttft_p50_ratio": aff["ttft_s"]["p50"] / ll["ttft_s"]["p50"],
                  "tok_s_ratio": aff["tokens_per_s"] / ll["tokens_per_s"],
                  "ttft_p99_ratio": aff["ttft_s"]["p99"] / ll["ttft_s"]["p99"],
                  "makespan_ratio": aff["makespan_s"] / ll["makespan_s"]}
        result.update(ratios)
        passed = {k: (ratios[k] >= v if op == ">=" else ratios[k] <= v) for k, (op, v) in TARGETS.items()}
        result["targets"] = {"wanted": {k: f"{op} {v}" for k, (op, v) in TARGETS.items()},
                             "pass": passed, "all_pass": all(passed.values())}
    result["settings"] = {
        "args": {k: v for k, v in vars(args).items() if k != "loadavg_before"},
        "vllm": config.model_dump(mode="json")}
    result["machine"] = {
        "nproc": os.cpu_count(), "python": platform.python_version(), "ray": ray.__version__,
        "vllm": _vllm_version(), "platform": platform.platform(), "gpu": args.gpu,
        "loadavg_before": args.loadavg_before, "loadavg_after": list(os.getloadavg())}
    return result


def _vllm_version() -> str:
    import vllm

    return str(vllm.__version__)


def _line(r: dict[str, Any]) -> str:
    return (f"hit rate {r['hit_rate']:.1%}, TTFT p50 {r['ttft_s']['p50']:.2f} s, "
            f"{r['tokens_per_s']:.1f} tok/s, makespan {r['makespan_s']:.1f} s")


def _print(console: Console, result: dict[str, Any]) -> None:
    args = result["settings"]["args"]
    table = Table(title=f"Agent sessions: {args['conversations']} conversations x {args['turns']} turns "
                        f"on {args['replicas']} vLLM replicas "
                        f"(load avg {result['machine']['loadavg_before'][0]:.1f})")
    for name in ("routing", "prefix hit rate", "TTFT p50", "TTFT p99", "tok/s", "makespan",
                 "requests per replica", "turns where the last ran"):
        table.add_column(name, justify="right")
    for routing, r in result["routings"].items():
        table.add_row(routing, f"{r['hit_rate']:.1%}", f"{r['ttft_s']['p50']:.2f} s",
                      f"{r['ttft_s']['p99']:.2f} s", f"{r['tokens_per_s']:.1f}", f"{r['makespan_s']:.1f} s",
                      " / ".join(str(x["requests"]) for x in r["per_replica"]), f"{r['stayed']:.0%}")
    if "targets" in result:
        t = result["targets"]

        def judged(key: str) -> str:
            mark = "[green]pass[/]" if t["pass"][key] else "[red]miss[/]"
            return f"{result[key]:.2f}x ({t['wanted'][key]} {mark})"

        table.add_row("affinity / least_loaded", judged("hit_rate_ratio"), judged("ttft_p50_ratio"),
                      f"{result['ttft_p99_ratio']:.2f}x", judged("tok_s_ratio"),
                      f"{result['makespan_ratio']:.2f}x", "", "")
    console.print(table)


def _draw(console: Console, result: dict[str, Any], path: Path) -> None:
    routings = list(result["routings"])
    rs = [result["routings"][r] for r in routings]
    args = result["settings"]["args"]
    where = "GPU" if args["gpu"] else f"{result['machine']['nproc']}-core CPU"
    draw(console, path, f"Agent sessions: {args['conversations']} conversations x {args['turns']} turns, "
                        f"{args['replicas']} vLLM replicas ({where}, {Path(args['model_path']).name})", [
        Panel("vLLM prefix-cache hit rate", "prompt tokens found cached (%)", routings,
              {"hit rate": [100 * r["hit_rate"] for r in rs]}),
        Panel("time to first token", "seconds", routings,
              {"p50": [r["ttft_s"]["p50"] for r in rs], "p99": [r["ttft_s"]["p99"] for r in rs]}),
        Panel("throughput", "completion tokens / s", routings,
              {"tokens/s": [r["tokens_per_s"] for r in rs]}),
    ])


if __name__ == "__main__":
    main()
