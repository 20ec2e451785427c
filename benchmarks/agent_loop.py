"""The agent loop's own cost: turns per second of a declared agent, against the same loop without
raysquad's recording, in one run.

The model is the simulated engine with a zero-latency model (``ttft_s = tpot_s = 0``) in an engine
actor; the agent (``benchmarks/loop_app.py``) is offered ``TOOLS`` trivial tools and its loop calls each
once, then answers: ``TOOLS + 1`` turns, ``TOOLS + 1`` model calls and ``TOOLS`` tool calls a message.

- ``recorded``: ``--tasks`` tasks of the workflow ``loop_task``, each one agent call: the message goes
  through the role's mailbox to a replica, whose loop records each model and tool call under the
  agent's step (``<step>/llm``, ``<step>/tool:<name>``), fenced by the task's lease;
- ``unrecorded``: the same on a second runtime with ``agent_record_calls=False``;
- ``direct``: the same loop (``runtime.replicas.loop.run_loop``) run ``--tasks`` times from this
  process, with the same concurrency, its model calls sent straight to the engine actor and its tool
  calls to the tool executors: no task, no mailbox, nothing recorded.

Recording costs (recorded - unrecorded) per turn; target: at most 2 ms. The task around the loop
(unrecorded - direct) is printed too. Writes JSON.

    .venv/bin/python benchmarks/agent_loop.py [--tasks 100] [--concurrency 16] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make `benchmarks.loop_app` importable here
    sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from benchmarks.common import write_result  # noqa: E402
from benchmarks.loop_app import TOOLS, Looper  # noqa: E402
from runtime import Runtime, Settings, TaskStatus  # noqa: E402
from runtime.control.peers import find_peers  # noqa: E402
from runtime.core.config import SimulatedEngineConfig  # noqa: E402
from runtime.core.models import AgentMessage, ChatRequest, Completion, TopicEvent  # noqa: E402
from runtime.replicas.loop import LoopSpec, run_loop  # noqa: E402
from runtime.replicas.replica import AgentContext  # noqa: E402
from runtime.tools.executor import Caller  # noqa: E402

APPS = ["benchmarks.loop_app"]
TURNS = TOOLS + 1
TARGET_MS_PER_TURN = 2.0


class Direct:
    """AgentServices straight onto the engine actor and the tool executors: nothing recorded."""

    def __init__(self, peers: Any) -> None:
        self.peers = peers

    async def chat(self, request: ChatRequest, plan: Any = None) -> Completion:
        completion: Completion = await self.peers.router.chat(request)
        return completion

    async def call_tool(self, name: str, args: dict[str, Any], call_id: str | None = None) -> Any:
        return await self.peers.tools.call(name, args, Caller("bench", "agent:looper"))

    async def call_agent(self, role: str, step_key: str, payload: Any,
                         timeout_s: float | None) -> Any:
        raise AssertionError("the looper delegates nothing")

    async def publish(self, topic: str, data: Any, key: str | None, event_id: str) -> TopicEvent:
        raise AssertionError("the looper publishes nothing")

    def emit(self, kind: str, data: dict[str, Any]) -> None:
        pass


async def direct_round(services: Direct, tasks: int, concurrency: int) -> float:
    slots = asyncio.Semaphore(concurrency)
    spec = LoopSpec(role="looper", instructions=Looper.instructions, tools=tuple(Looper.tools),
                    max_turns=Looper.max_turns)

    async def one(i: int) -> None:
        async with slots:
            msg = AgentMessage(id=str(i), role="looper", task_id=f"direct-{i}",
                               step_key="agent:looper", payload=f"message {i}")
            await run_loop(AgentContext(msg, services, "sim-small"), spec, f"message {i}")

    started = time.monotonic()
    await asyncio.gather(*(one(i) for i in range(tasks)))
    return time.monotonic() - started


def raysquad_round(rt: Runtime, tasks: int, concurrency: int) -> float:
    client = rt.client()
    started = time.monotonic()
    pending: list[str] = []
    submitted = 0
    while submitted < tasks or pending:
        while submitted < tasks and len(pending) < concurrency:
            pending.append(client.submit("loop_task", {"text": f"message {submitted}"}).id)
            submitted += 1
        done = [t for t in pending if client.get(t).status.ended]
        for t in done:
            record = client.get(t)
            assert record.status is TaskStatus.SUCCEEDED, record.error
            pending.remove(t)
        if not done:
            time.sleep(0.005)
    return time.monotonic() - started


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--tasks", type=int, default=100)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "agent_loop.json"))
    args = p.parse_args(argv)
    os.environ["PYTHONPATH"] = os.pathsep.join(
        x for x in (str(ROOT), os.environ.get("PYTHONPATH", "")) if x)
    console = Console(width=110)
    sides = ("recorded", "unrecorded", "direct")
    rounds: dict[str, list[float]] = {side: [] for side in sides}
    with tempfile.TemporaryDirectory(prefix="raysquad-bench-") as data_dir:
        runtimes = {recorded: Runtime.start(Settings(
            data_dir=Path(data_dir) / side, namespace=f"loop-{uuid.uuid4().hex[:8]}",
            simulated=SimulatedEngineConfig(ttft_s=0, tpot_s=0), agent_record_calls=recorded),
            apps=APPS) for side, recorded in (("recorded", True), ("unrecorded", False))}
        try:
            services = Direct(find_peers(runtimes[True].settings, APPS))
            for rt in runtimes.values():
                raysquad_round(rt, 4, 4)  # warm: a replica, the executors, the engine
            asyncio.run(direct_round(services, 4, 4))
            for r in range(args.rounds):
                console.print(f"round {r + 1}: recorded, unrecorded, direct ...")
                rounds["recorded"].append(raysquad_round(runtimes[True], args.tasks,
                                                         args.concurrency))
                rounds["unrecorded"].append(raysquad_round(runtimes[False], args.tasks,
                                                           args.concurrency))
                rounds["direct"].append(asyncio.run(direct_round(services, args.tasks,
                                                                 args.concurrency)))
        finally:
            for rt in runtimes.values():
                rt.stop()
    turns = args.tasks * TURNS
    median = {k: statistics.median(v) for k, v in rounds.items()}
    per_turn_ms = {k: 1000 * v / turns for k, v in median.items()}
    recording = per_turn_ms["recorded"] - per_turn_ms["unrecorded"]
    table = Table(title=f"agent loop: {args.tasks} messages x {TURNS} turns ({TOOLS} tool calls), "
                        f"{args.concurrency} at once, zero-latency model; median of {args.rounds}")
    for column in ("side", "turns/s", "ms per turn", "rounds (s)"):
        table.add_column(column, justify="right")
    for side in sides:
        table.add_row(side, f"{turns / median[side]:.0f}", f"{per_turn_ms[side]:.2f}",
                      ", ".join(f"{x:.2f}" for x in rounds[side]))
    console.print(table)
    verdict = "pass" if recording <= TARGET_MS_PER_TURN else "MISS"
    console.print(f"recording each model and tool call costs {recording:.2f} ms per turn "
                  f"(recorded - unrecorded); target <= {TARGET_MS_PER_TURN} ms: {verdict}. "
                  f"The task around the loop (submit, claim, the agent hop, finish) adds "
                  f"{per_turn_ms['unrecorded'] - per_turn_ms['direct']:.2f} ms per turn over the "
                  "loop run directly.")
    return write_result(console, args.json, {
        "settings": vars(args), "turns_per_message": TURNS, "rounds_s": rounds,
        "ms_per_turn": per_turn_ms, "recording_ms_per_turn": recording,
        "target_ms_per_turn": TARGET_MS_PER_TURN, "pass": recording <= TARGET_MS_PER_TURN})


if __name__ == "__main__":
    main()
