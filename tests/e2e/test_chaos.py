"""Fault injection: SIGKILL the process of every kind of runtime actor, one at a time, while tasks run.

One runtime on a real local Ray (and its HTTP API on Serve) runs ``tests.apps.chaos``'s five-step
workflow (a step, an agent call, a tool call, an LLM call through a gate, a step). For each kind of
actor (Store, dispatcher, worker pool, agent pool, mailbox, gate keeper, engine, tool executor, a
worker, an agent replica) the test waits, briefly, until that actor has work in flight, kills its
process, submits one task during the outage over Ray and one over HTTP, and waits for the actor to
come back and for some task to finish after the kill. At the end every task has succeeded, no plain
step started again after the Store had recorded it, and none ran more often than its task was run.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import ray

from runtime import GateLimits, Runtime, Settings, TaskStatus
from runtime.core.config import SimulatedEngineConfig
from tests.apps.chaos import STEP_KEYS, TOOL
from tests.conftest import wait_for
from tests.e2e.live import free_port
from tests.faults import (
    Kind,
    Victim,
    came_back,
    kill,
    pick,
    read_effects,
    recorded_keys,
    started_keys,
    task_rows,
    wait_until,
)

WORKFLOW = "chaos_steps"
SLEEP_S = 0.3  # per step, handler and tool: long enough for a kill to find work in flight
IN_FLIGHT = 4  # tasks kept unfinished while the test kills
BUSY_WAIT_S = 8.0  # how long to look for work in flight at the victim before killing anyway
BACK_S = 60.0  # a killed actor is back (restarted or replaced) within this
PROGRESS_S = 60.0  # some task finishes within this after a kill
DRAIN_S = 120.0  # every task has ended within this after the last kill
AGENT_KEY, TOOL_KEY, LLM_KEY = STEP_KEYS[1], STEP_KEYS[2], STEP_KEYS[3]

KILLS = [Kind.STORE, Kind.DISPATCHER, Kind.WORKER_POOL, Kind.AGENT_POOL, Kind.MAILBOX,
         Kind.GATEKEEPER, Kind.ENGINE, Kind.TOOL_EXECUTOR, Kind.WORKER, Kind.AGENT_REPLICA]
# The step whose work a kind of actor carries: the test kills it while a task is in that step.
BUSY_STEP = {Kind.AGENT_POOL: AGENT_KEY, Kind.MAILBOX: AGENT_KEY, Kind.AGENT_REPLICA: AGENT_KEY,
             Kind.TOOL_EXECUTOR: TOOL_KEY, Kind.ENGINE: LLM_KEY, Kind.GATEKEEPER: LLM_KEY}


@dataclass
class Chaos:
    rt: Runtime
    url: str
    side: Path
    database: Path
    ids: list[str]

    def submit(self) -> str:
        task_id = self.rt.client().submit(WORKFLOW, {"dir": str(self.side), "sleep_s": SLEEP_S}).id
        self.ids.append(task_id)
        return task_id


@pytest.fixture
def chaos(tmp_path: Path) -> Iterator[Chaos]:
    ray.init(address="local", num_cpus=2, object_store_memory=200 * 1024**2, include_dashboard=False,
             logging_level=logging.WARNING, log_to_driver=False)
    side = tmp_path / "effects"
    side.mkdir()
    settings = Settings(
        data_dir=tmp_path / "state", namespace=f"chaos-{uuid.uuid4().hex[:8]}", workers=2,
        lease_s=5.0, sweep_interval_s=0.2, http_port=free_port(),
        simulated=SimulatedEngineConfig(ttft_s=SLEEP_S),  # an LLM call long enough to be hit
        # Gates on the engine and the tool: their calls pass the gate keeper, so killing it matters.
        gates={"engine:sim-small": GateLimits(concurrency=32),
               f"tool:{TOOL}": GateLimits(concurrency=32)},
    )
    rt = Runtime.start(settings, apps=["tests.apps.chaos"])
    try:
        from serve.launch import start_http, stop_http

        url = start_http(settings)
        try:
            yield Chaos(rt, url, side, settings.database_path, [])
        finally:
            stop_http()
    finally:
        rt.stop(shutdown_ray=False)
        ray.shutdown()


def test_every_actor_kind_killed_mid_run_loses_nothing(chaos: Chaos) -> None:
    started = time.monotonic()
    http = httpx.Client(base_url=chaos.url, timeout=90)
    wait_for(lambda: _http_ready(http), timeout_s=60, what="the HTTP API to answer")
    for _ in range(IN_FLIGHT):
        chaos.submit()
    report = []
    with ThreadPoolExecutor(2) as pool:
        for kind in KILLS:
            report.append(_kill_one(chaos, http, pool, kind))

    def all_ended() -> bool:
        rows = task_rows(chaos.database)
        return all(TaskStatus(rows[t]["status"]).ended for t in chaos.ids if t in rows)

    wait_for(all_ended, timeout_s=DRAIN_S, interval_s=0.2, what="every task to end")
    for line in report:
        print(line)
    rows = task_rows(chaos.database)
    print(f"{len(chaos.ids)} tasks; runs > 1: {sum(r['runs'] > 1 for r in rows.values())}; "
          f"wall {time.monotonic() - started:.0f}s")

    assert sorted(rows) == sorted(chaos.ids), "the Store holds exactly the tasks submitted"
    failed = {t: (r["status"], r["error"]) for t, r in rows.items() if r["status"] != "succeeded"}
    assert not failed, failed
    for task_id in chaos.ids:
        output = chaos.rt.client().get(task_id).output
        assert output["agent"] == f"handled {task_id}" and output["finished"] == f"finish {task_id}"
    effects = read_effects(chaos.side, chaos.database)
    assert effects.repeated() == [], "a plain step ran again after it was recorded as completed"
    assert effects.over_runs() == [], "a plain step ran more often than its task was run"
    assert effects.missing(chaos.ids) == []
    assert all(effects.agent.get(t, 0) >= 1 and effects.tool.get(t, 0) >= 1 for t in chaos.ids)
    print(f"plain steps re-run after an interruption (allowed): {effects.rerun_interrupted()}; "
          f"agent handler runs {sum(effects.agent.values())}, tool runs "
          f"{sum(effects.tool.values())} for {len(chaos.ids)} tasks")


def _kill_one(chaos: Chaos, http: httpx.Client, pool: ThreadPoolExecutor, kind: Kind) -> str:
    """Kill one actor of ``kind`` with work in flight, submit during the outage, see it recover."""
    looked_at = time.monotonic()

    def busy_now() -> set[str]:
        _top_up(chaos)  # tasks that finish meanwhile are replaced: someone reaches the victim's step
        return _busy_tasks(chaos, kind)

    busy = wait_until(busy_now, BUSY_WAIT_S)
    looked_s = time.monotonic() - looked_at
    prefer = None
    if kind is Kind.WORKER and busy:
        owner = chaos.rt.client().get(sorted(busy)[0]).owner
        prefer = f"worker:{owner}" if owner else None
    if kind is Kind.TOOL_EXECUTOR:
        prefer = _busiest_executor(chaos)
    victim: Victim | None = wait_until(lambda: pick(kind, chaos.rt.settings.namespace, prefer), 30)
    assert victim is not None, f"no live actor of kind {kind.name}"
    killed_at = time.time()
    kill(victim)
    in_outage = [pool.submit(_ray_submit, chaos), pool.submit(_http_submit, http, chaos)]
    wait_for(lambda: came_back(victim, chaos.rt.settings.namespace), timeout_s=BACK_S,
             interval_s=0.1, what=f"{victim.name} to come back after SIGKILL")
    back_s = time.time() - killed_at
    outcomes = [_outcome(f) for f in in_outage]

    def finished_since() -> bool:
        return any((r["finished_at"] or 0) > killed_at for r in task_rows(chaos.database).values())

    wait_for(finished_since, timeout_s=PROGRESS_S, interval_s=0.2,
             what=f"a task to finish after {victim.name} was killed")
    return (f"{kind.name:14} {victim.name:28} pid {victim.pid:>6}: {len(busy or ())} task(s) busy there "
            f"(looked {looked_s:.1f}s), "
            f"back in {back_s:4.1f}s, submits during the outage: {', '.join(outcomes)}")


def _top_up(chaos: Chaos) -> None:
    """Keep IN_FLIGHT tasks unfinished, so that there is always work for a kill to interrupt."""
    rows = task_rows(chaos.database)
    unfinished = sum(1 for t in chaos.ids if t not in rows or not TaskStatus(rows[t]["status"]).ended)
    for _ in range(IN_FLIGHT - unfinished):
        chaos.submit()


def _busy_tasks(chaos: Chaos, kind: Kind) -> set[str]:
    """Tasks whose work sits at ``kind`` now: in the step it carries, or running at all."""
    rows = task_rows(chaos.database)
    running = {t for t, r in rows.items() if r["status"] == "running"}
    step = BUSY_STEP.get(kind)
    if step is None:
        return running
    recorded = recorded_keys(chaos.database)
    if step == LLM_KEY:  # the engine writes no side effect: in the LLM call = past the tool, not done
        return {t for t in running if TOOL_KEY in recorded[t] and LLM_KEY not in recorded[t]}
    began = started_keys(chaos.side)
    return {t for t in running if step in began[t] and step not in recorded[t]}


def _busiest_executor(chaos: Chaos) -> str | None:
    import asyncio

    loads = []
    for i, handle in enumerate(chaos.rt.tool_executors):
        try:
            loads.append((asyncio.run(handle.stats(deadline_s=2.0))["in_flight"], f"tools:{i}"))
        except Exception:  # noqa: BLE001 - a load we cannot read is no reason to stop
            continue
    return max(loads)[1] if loads and max(loads)[0] > 0 else None


def _http_submit(http: httpx.Client, chaos: Chaos) -> str:
    """POST a task during the outage: a 202 now, or a 503 with Retry-After (then again, same key)."""
    key, started = uuid.uuid4().hex, time.monotonic()
    body = {"workflow": WORKFLOW, "input": {"dir": str(chaos.side), "sleep_s": SLEEP_S},
            "idempotency_key": key}
    seen = []
    for _ in range(10):
        response = http.post("/v1/tasks", json=body)
        seen.append(str(response.status_code))
        if response.status_code in (200, 202):
            chaos.ids.append(response.json()["id"])
            return f"http {'->'.join(seen)} in {time.monotonic() - started:.1f}s"
        assert response.status_code == 503, f"{response.status_code}: {response.text}"
        retry_after = response.headers.get("Retry-After")
        assert retry_after is not None and retry_after.isdigit(), response.headers
        time.sleep(int(retry_after))  # what the header asks of a client, not a wait for a condition
    raise AssertionError(f"HTTP submit refused {len(seen)} times: {seen}")


def _ray_submit(chaos: Chaos) -> str:
    started = time.monotonic()
    chaos.submit()
    return f"ray ok in {time.monotonic() - started:.1f}s"


def _outcome(future: Future[str]) -> str:
    return future.result(timeout=120)


def _http_ready(http: httpx.Client) -> bool:
    try:
        return http.get("/healthz").status_code == 200
    except httpx.TransportError:
        return False

