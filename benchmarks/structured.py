"""Structured outputs on vLLM (CPU, SmolLM2-135M): constrained against unconstrained generation.

raysquad's vLLM engine (``runtime.llm.vllm.VLLMEngine``, in this process) runs ``--chats`` chats of
each kind, ``--concurrency`` at once, one kind after the other in one run:

- ``free``: the question answered as text (no constraint);
- ``tool``: the same question with the ``order_status`` tool offered and ``tool_choice="required"``
  (the answer held by vLLM's structured outputs to a call of it);
- ``format``: the same question with ``response_format=Ticket`` (the answer held to its schema).

For each it prints the completion tokens per second (vLLM's counts over the wall time) and how many
constrained answers parsed and validated (every one must). Writes JSON.

    .venv/bin/python benchmarks/structured.py [--chats 50] [--concurrency 16] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make `tests.apps.llm` importable here
    sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from benchmarks.common import write_result  # noqa: E402
from runtime.core.config import VLLMEngineConfig  # noqa: E402
from runtime.core.models import ChatMessage, ChatRequest, Completion  # noqa: E402
from runtime.core.structured import as_response_format, tool_specs  # noqa: E402
from runtime.tools.registry import defined_tool  # noqa: E402
from tests.apps.llm import Ticket, order_status  # noqa: E402

MODEL_DIR = ROOT / ".raysquad" / "models" / "smollm2-135m-instruct"


def question(i: int) -> str:
    return f"Customer {i}: where is my order A{1000 + i}? It was due {i % 7 + 1} days ago."


def request(kind: str, i: int, max_tokens: int) -> ChatRequest:
    extra: dict[str, Any] = {}
    if kind == "tool":
        extra = {"tools": tool_specs(["order_status"], defined_tool), "tool_choice": "required"}
    elif kind == "format":
        extra = {"response_format": as_response_format(Ticket)}
    return ChatRequest(model="smollm2", messages=[ChatMessage(role="user", content=question(i))],
                       max_tokens=max_tokens, request_id=f"{kind}-{i}", **extra)


def valid(kind: str, completion: Completion) -> bool:
    try:
        if kind == "tool":
            (call,) = completion.tool_calls
            order_status.validate(call.arguments)
            return call.name == "order_status"
        if kind == "format":
            Ticket.model_validate(completion.parsed)
        return True
    except Exception:  # noqa: BLE001 - any failure to parse or validate counts as not valid
        return False


async def run_kind(engine: Any, kind: str, chats: int, concurrency: int,
                   max_tokens: int) -> dict[str, Any]:
    slots = asyncio.Semaphore(concurrency)
    results: list[Completion | BaseException] = []

    async def one(i: int) -> None:
        async with slots:
            try:
                results.append(await engine.chat(request(kind, i, max_tokens)))
            except Exception as e:  # noqa: BLE001 - counted as not valid
                results.append(e)

    started = time.monotonic()
    await asyncio.gather(*(one(i) for i in range(chats)))
    wall = time.monotonic() - started
    done = [r for r in results if isinstance(r, Completion)]
    tokens = sum(c.usage.completion_tokens for c in done)
    return {"kind": kind, "chats": chats, "wall_s": round(wall, 2), "tokens": tokens,
            "tokens_per_s": round(tokens / wall, 1),
            "valid": sum(valid(kind, c) for c in done), "errors": len(results) - len(done)}


async def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    from runtime.llm.vllm import VLLMEngine

    engine = VLLMEngine("smollm2", VLLMEngineConfig(model_path=MODEL_DIR,
                                                    max_num_seqs=args.concurrency,
                                                    max_inflight=args.concurrency))
    await run_kind(engine, "free", 2, 2, 8)  # warm up (first-call compilation, grammar setup)
    await run_kind(engine, "format", 2, 2, 8)
    return [await run_kind(engine, kind, args.chats, args.concurrency, args.max_tokens)
            for kind in ("free", "tool", "format")]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chats", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=160)
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "structured.json"))
    args = parser.parse_args(argv)
    if not (MODEL_DIR / "config.json").exists():
        sys.exit(f"no model at {MODEL_DIR}: run `make model`")
    rows = asyncio.run(measure(args))
    console = Console()
    table = Table(title=f"vLLM structured outputs, SmolLM2-135M on the CPU: {args.chats} chats "
                        f"per kind, {args.concurrency} at once")
    for column in ("kind", "tokens/s", "tokens", "wall s", "valid", "errors"):
        table.add_column(column, justify="right")
    free = rows[0]["tokens_per_s"] or 1.0
    for r in rows:
        table.add_row(r["kind"], f"{r['tokens_per_s']} ({r['tokens_per_s'] / free:.2f}x)",
                      str(r["tokens"]), str(r["wall_s"]), f"{r['valid']}/{r['chats']}",
                      str(r["errors"]))
    console.print(table)
    return write_result(console, args.json, {"settings": vars(args), "kinds": rows})


if __name__ == "__main__":
    main()
