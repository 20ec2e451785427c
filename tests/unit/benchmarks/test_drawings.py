"""The agent sessions benchmark's figures from engine counters, and the drawings beside the JSON."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from benchmarks import agent_sessions, llm_throughput
from benchmarks.plots import Panel, draw, png_path
from runtime.core.config import VLLMEngineConfig

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def stats(requests: int, queried: int, hits: int, tokens: int, ttft: list[float],
          ids: list[str]) -> dict[str, Any]:
    return {"requests": requests, "prompt_tokens": queried, "completion_tokens": tokens,
            "prefix_queried": queried, "prefix_hits": hits, "ttft_s": ttft, "request_ids": ids}


def test_a_routings_figures_are_the_engines_counters_after_minus_before() -> None:
    before = [stats(1, 10, 0, 4, [9.0], ["warm"]), stats(1, 10, 0, 4, [9.0], ["warm"])]
    # Conversation a: turns 1, 2 on replica 0, turn 3 on 1; b: 1 on 1, 2 and 3 on 0.
    after = [stats(5, 1010, 600, 84, [9.0, 0.1, 0.2, 0.3, 0.4], ["warm", "a/s/1", "a/s/2", "b/s/2", "b/s/3"]),
             stats(3, 510, 100, 44, [9.0, 0.5, 0.6], ["warm", "b/s/1", "a/s/3"])]
    r = agent_sessions._run_result("affinity", 60.0, 10.0, before, after, [[100, 200], [300, 400]])
    assert (r["requests"], r["prefix_queried"], r["prefix_hits"]) == (6, 1500, 700)
    assert r["hit_rate"] == pytest.approx(700 / 1500)
    assert r["tokens_per_s"] == pytest.approx(120 / 10.0)
    # The warm-up's 9.0 s is not counted: only each engine's samples since "before".
    assert r["ttft_s"]["n"] == 6 and r["ttft_s"]["p50"] == 0.3 and r["ttft_s"]["p99"] == 0.6
    assert [x["requests"] for x in r["per_replica"]] == [4, 2]
    assert r["prompt_tokens_by_turn"] == [200.0, 300.0]
    assert r["stayed"] == 2 / 4  # a's turn 2 and b's turn 3 ran where the turn before had


def args(tmp_path: Path, **more: Any) -> argparse.Namespace:
    ns = agent_sessions._parse(["--json", str(tmp_path / "agent_sessions.json")])
    ns.loadavg_before = [0.5, 0.5, 0.5]
    for k, v in more.items():
        setattr(ns, k, v)
    return ns


def test_the_ratios_are_affinity_over_least_loaded_and_judged_against_the_targets(tmp_path: Path) -> None:
    def run(hit_rate: float, p50: float, tok_s: float) -> dict[str, Any]:
        return {"hit_rate": hit_rate, "ttft_s": {"p50": p50, "p99": 2 * p50}, "tokens_per_s": tok_s,
                "stayed": 0.5,
                "makespan_s": 100 / tok_s, "per_replica": [{"requests": 48}, {"requests": 48}],
                "prompt_tokens": 1000}

    result = agent_sessions._result(args(tmp_path), VLLMEngineConfig(),
                                    {"least_loaded": run(0.3, 1.0, 50.0), "affinity": run(0.75, 0.5, 55.0)})
    assert result["hit_rate_ratio"] == pytest.approx(2.5)
    assert result["ttft_p50_ratio"] == pytest.approx(0.5)
    assert result["tok_s_ratio"] == pytest.approx(1.1)
    assert result["targets"]["pass"] == {"hit_rate_ratio": True, "ttft_p50_ratio": True,
                                         "tok_s_ratio": False}
    console = Console(record=True, width=200)
    agent_sessions._print(console, result)
    assert "2.50x (>= 2.0 pass)" in console.export_text()
    png = png_path(args(tmp_path).json)
    agent_sessions._draw(console, result, png)
    assert png.read_bytes().startswith(PNG_MAGIC) and png.parent == tmp_path


def test_the_gpu_flag_puts_the_replicas_on_one_shared_gpu() -> None:
    ns = agent_sessions._parse(["--gpu", "--model-path", "/models/big"])
    config = agent_sessions._engine_config(ns)
    assert (config.num_gpus, config.dtype, config.cpu_threads_bind) == (0.5, "auto", ())
    assert config.gpu_memory_utilization == pytest.approx(0.425) and config.max_model_len == 4096
    cpu = agent_sessions._engine_config(agent_sessions._parse([]))
    assert (cpu.num_gpus, cpu.cpu_threads_bind, cpu.prefix_caching) == (0, ("0", "1"), True)


def test_llm_throughput_draws_ttft_and_tokens_per_s_per_concurrency(tmp_path: Path) -> None:
    def side(tok_s: float, p50: float | None) -> dict[str, Any]:
        return {"tokens_per_s": tok_s, "ttft_s": {"p50": p50, "p99": p50}}

    result = {"levels": [{"concurrency": c, "direct_tokens_per_s": 10.0 * c, "raysquad_tokens_per_s": 9.0 * c,
                          "direct": side(10.0 * c, 0.1 * c), "raysquad": side(9.0 * c, None)}
                         for c in (1, 4)],
              "settings": {"args": {"max_tokens": 64, "model_path": "/m/smollm2"}}, "machine": {"nproc": 2}}
    png = tmp_path / "llm_throughput.png"
    llm_throughput._draw(Console(quiet=True), result, png)
    assert png.read_bytes().startswith(PNG_MAGIC)


def test_a_drawing_of_bars_and_lines(tmp_path: Path) -> None:
    out = draw(Console(quiet=True), tmp_path / "d" / "x.png", "t", [
        Panel("bars", "s", ["a", "b"], {"p50": [1.0, 2.0], "p99": [3.0, 4.0]}),
        Panel("lines", "tok/s", [1, 4, 16], {"one": [1.0, 2.0, 3.0]}, lines=True)])
    assert out is not None and out.read_bytes().startswith(PNG_MAGIC)
    assert png_path("results/a.json") == Path("results/a.png")
