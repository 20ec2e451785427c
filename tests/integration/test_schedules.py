"""Cron schedules on a real runtime: each tick fires once across a kill of the scheduler and a full
restart, the catch-up policies for missed ticks, the overlap policies, pause and resume, refusals,
schedules declared on workflows, and a schedule that cannot run paused without stopping the others."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from runtime import Runtime, TaskStatus
from runtime.core.errors import InvalidInput, InvalidSchedule, ScheduleNotFound, WorkflowNotFound
from runtime.core.models import Schedule
from runtime.events.schedules import new_schedule, prev_tick
from tests.conftest import wait_for
from tests.faults import Kind, came_back, kill, pick

APPS = ["tests.apps.events"]
FAST = {"event_poll_s": 0.1, "schedule_grace_s": 3.0}
EVERY_2S = "* * * * * */2"  # seconds last


def ticks_of(rt: Runtime, schedule_id: str) -> list[float]:
    """The ticks that started a task, from the tasks' idempotency keys."""
    keys = [t.idempotency_key or "" for t in rt.client().list(workflow="tick", limit=500)]
    prefix = f"schedule:{schedule_id}:"
    return sorted(float(k[len(prefix):]) for k in keys if k.startswith(prefix))


def test_each_tick_fires_once_across_a_scheduler_kill_and_a_full_restart(
        make_runtime, side_dir: Path) -> None:
    rt = make_runtime(APPS, **FAST)
    rt.client().create_schedule("every2", "tick", EVERY_2S, input={"dir": str(side_dir)},
                                overlap="allow")
    wait_for(lambda: len(ticks_of(rt, "every2")) >= 2, timeout_s=30, what="two ticks")

    victim = pick(Kind.EVENTS, rt.settings.namespace)
    assert victim is not None
    kill(victim)  # SIGKILL of the scheduler's process; Ray restarts it
    wait_for(lambda: came_back(victim, rt.settings.namespace), timeout_s=60,
             what="the scheduler to restart")
    before_kill = len(ticks_of(rt, "every2"))
    wait_for(lambda: len(ticks_of(rt, "every2")) >= before_kill + 2, timeout_s=30,
             what="ticks after the scheduler's restart")

    rt.stop(shutdown_ray=False)  # the whole runtime, every actor killed
    stopped_at = time.time()
    rt = make_runtime(APPS, **FAST)  # the same Store: a restart
    restarted_at = time.time()
    before_restart = len(ticks_of(rt, "every2"))
    wait_for(lambda: len(ticks_of(rt, "every2")) >= before_restart + 2, timeout_s=30,
             what="ticks after the full restart")

    ticks = ticks_of(rt, "every2")
    assert len(ticks) == len(set(ticks))  # no tick started two tasks
    assert all(t % 2 == 0 for t in ticks)  # every one a tick of the schedule
    # Every task ran its workflow once (the newest tick's task may still be on its way).
    rt.client().pause_schedule("every2")
    wait_for(lambda: all(t.status == TaskStatus.SUCCEEDED
                         for t in rt.client().list(workflow="tick", limit=500)),
             timeout_s=30, what="every tick's task to finish")
    for task in rt.client().list(workflow="tick", limit=500):
        lines = (side_dir / f"tick.{task.id}").read_text().count("\n")
        # Once; twice only for a task the full stop interrupted mid-step (its step had run, its
        # record had not landed): a step's code is at least once, its record exactly once.
        assert lines == 1 or (lines == 2 and client_get_runs(rt, task.id) > 1), (task.id, lines)
    # catch_up="skip": of the ticks while nothing ran, only those within the grace of the
    # restart ran; the rest were skipped.
    missed = [t for t in ticks if stopped_at + 2 < t < restarted_at - FAST["schedule_grace_s"] - 2]
    assert missed == [], (missed, stopped_at, restarted_at)


def test_missed_ticks_are_skipped_or_run_once(make_runtime, side_dir: Path) -> None:
    rt = make_runtime(APPS, **FAST)
    client = rt.client()
    now = time.time()
    last_year = now - 400 * 86400  # a yearly tick, long missed
    for policy in ("skip", "once"):
        schedule = new_schedule(f"yearly-{policy}", "tick", "0 0 1 1 *",
                                input={"dir": str(side_dir)}, catch_up=policy,
                                now=last_year)  # its next tick: a year ago or so
        asyncio.run(rt.store.put_schedule(schedule))
    client.create_schedule("nudge", "tick", "0 0 1 1 *", input={"dir": str(side_dir)})  # wakes it

    wait_for(lambda: all(client.schedule(f"yearly-{p}").next_at > now for p in ("skip", "once")),
             timeout_s=30, what="both schedules to move past their missed ticks")
    assert ticks_of(rt, "yearly-skip") == []
    (once,) = ticks_of(rt, "yearly-once")  # one run, for the latest missed tick
    assert last_year < once < now
    assert client.schedule("yearly-once").last_task_id is not None


def test_overlap_policies(make_runtime, side_dir: Path) -> None:
    """Every 2 s, each run held at a gate: skip starts one and lets the next ticks go, allow starts
    one per tick, cancel cancels the last run at each tick and starts anew."""
    rt = make_runtime(APPS, **FAST)
    client = rt.client()
    for policy in ("skip", "allow", "cancel"):
        client.create_schedule(f"ov-{policy}", "tick", EVERY_2S, overlap=policy,
                               input={"dir": str(side_dir), "gate": f"gate-{policy}"})
    first = {p: wait_for(lambda p=p: client.schedule(f"ov-{p}").last_tick, timeout_s=30,
                         what="a first tick") for p in ("skip", "allow", "cancel")}
    wait_for(lambda: all(client.schedule(f"ov-{p}").next_at >= first[p] + 6
                         for p in first), timeout_s=30, what="three more ticks of each")

    assert len(ticks_of(rt, "ov-skip")) == 1
    assert len(ticks_of(rt, "ov-allow")) >= 3
    cancel_ticks = ticks_of(rt, "ov-cancel")
    assert len(cancel_ticks) >= 3
    runs = sorted(client.list(workflow="tick", limit=500), key=lambda t: t.created_at)
    cancel_runs = [t for t in runs if (t.idempotency_key or "").startswith("schedule:ov-cancel:")]
    assert all(t.status is TaskStatus.CANCELLED or t.cancel_requested for t in cancel_runs[:-1])
    for policy in ("skip", "allow", "cancel"):
        client.delete_schedule(f"ov-{policy}")
        (side_dir / f"gate-{policy}").touch()


def test_pause_resume_delete_and_refusals(make_runtime, side_dir: Path) -> None:
    rt = make_runtime(APPS, **FAST)
    client = rt.client()
    assert [s.id for s in client.schedules()] == ["nightly"]  # declared on its workflow
    assert client.schedule("nightly").timezone == "Europe/Paris"

    client.create_schedule("p", "tick", EVERY_2S, input={"dir": str(side_dir)}, paused=True)
    paused_at = time.time()
    assert client.pause_schedule("p").paused
    resumed = client.resume_schedule("p")
    assert not resumed.paused and resumed.next_at > paused_at
    wait_for(lambda: len(ticks_of(rt, "p")) >= 1, timeout_s=30, what="a tick after the resume")
    assert min(ticks_of(rt, "p")) >= resumed.next_at - 0.001  # nothing ran for the paused time

    client.delete_schedule("p")
    with pytest.raises(ScheduleNotFound):
        client.schedule("p")
    with pytest.raises(ScheduleNotFound):
        client.delete_schedule("p")
    with pytest.raises(InvalidSchedule, match="cron"):
        client.create_schedule("bad", "tick", "every day", input={"dir": "x"})
    with pytest.raises(InvalidSchedule, match="time zone"):
        client.create_schedule("bad", "tick", "* * * * *", timezone="Mars/Base",
                               input={"dir": "x"})
    with pytest.raises(WorkflowNotFound):
        client.create_schedule("bad", "nope", "* * * * *")
    with pytest.raises(InvalidInput):
        client.create_schedule("bad", "tick", "* * * * *", input={"wrong": 1})
    assert [s.id for s in client.schedules()] == ["nightly"]


def test_a_schedule_that_cannot_run_is_paused_with_its_reason_and_the_others_fire(
        make_runtime, side_dir: Path) -> None:
    """Schedules kept before their cron or tenant was checked (put straight into the Store): one
    whose last tick has passed (a year field) and one whose task cannot be asked for (a tenant no
    request may carry, a ValueError that is not ours). Each used to make every round fail."""
    rt = make_runtime(APPS, **FAST)
    client = rt.client()
    now = time.time()
    a_minute_ago = prev_tick("* * * * *", "UTC", now)
    year_2020 = 1_577_836_800.0
    for bad in (Schedule(id="yearly", workflow="tick", cron="0 0 1 1 * 0 2020", next_at=year_2020,
                         input={"dir": str(side_dir)}, created_at=year_2020, updated_at=year_2020),
                Schedule(id="odd", tenant="bad\x01tenant", workflow="tick", cron="* * * * *",
                         next_at=a_minute_ago, catch_up="once", input={"dir": str(side_dir)},
                         created_at=now, updated_at=now)):
        asyncio.run(rt.store.put_schedule(bad, limited=False))
    client.create_schedule("every2", "tick", EVERY_2S, input={"dir": str(side_dir)},
                           overlap="allow")

    wait_for(lambda: len(ticks_of(rt, "every2")) >= 2, timeout_s=30, what="the others to fire")
    yearly = wait_for(lambda: (s := client.schedule("yearly")).paused and s, timeout_s=30,
                      what="the yearly schedule to be paused")
    assert "InvalidSchedule" in (yearly.paused_reason or "")
    assert "no tick after" in (yearly.paused_reason or "")
    odd = client.schedule("odd", tenant="bad\x01tenant")
    assert odd.paused and "ValidationError" in (odd.paused_reason or ""), odd
    assert "yearly" in [s.id for s in client.schedules() if s.paused_reason]

    # Its owner may pause it (a 200) and delete it; a resume says why it cannot (a 422).
    assert client.pause_schedule("yearly").paused
    with pytest.raises(InvalidSchedule, match="no tick after"):
        client.resume_schedule("yearly")
    client.delete_schedule("yearly")


def client_get_runs(rt: Runtime, task_id: str) -> int:
    return rt.client().get(task_id).runs
