"""Cron schedules: each tick of a schedule starts one task of its workflow.

The scheduler runs in the ``events`` actor beside the event bus. It holds a lease in the Store
(``scheduler``), so with more than one (a restart racing the old one) only one fires; and firing is
safe to repeat anyway: a tick's task has the idempotency key ``schedule:<id>:<tick>``, and the
schedule moves past the tick by a compare-and-set (store/schedules.py). Each tick starts at most
one task, across a kill of the scheduler and a restart of the whole runtime.

A tick is fired on time if the scheduler sees it within ``schedule_grace_s``. Ticks it sees later
were missed (nothing ran the scheduler then); ``catch_up`` says what they become: ``skip`` (none
runs, the schedule moves to the next tick to come) or ``once`` (one run, for the latest of them).
Before firing, ``overlap`` looks at the task the schedule started last: while it is active,
``skip`` lets this tick go, ``allow`` starts another, ``cancel`` cancels it and starts anew.

One schedule's failure is its own (``Scheduler.round``): a passing one leaves its tick due and puts
it off, a refusal of the task lets the tick go, anything else pauses the schedule with the reason.
See docs/design.md, "Schedules", for the clock-change rule and a tenant's bounds.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import time
import uuid
from datetime import datetime
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterError, croniter

from runtime.authoring.catalog import Catalog
from runtime.core import metrics
from runtime.core.config import Settings
from runtime.core.errors import (
    Conflict,
    InvalidSchedule,
    InvalidTransition,
    NotFound,
    Refused,
    Retryable,
    StoreError,
    TaskNotFound,
)
from runtime.core.models import Schedule, SubmitRequest
from runtime.core.retry import retry_after_s
from runtime.core.triggers import check_cron, fixed_time
from runtime.store.service import StoreService

log = logging.getLogger(__name__)

LEASE_NAME = "scheduler"
LEASE_S = 10.0
BATCH = 100
#: The shortest wait between two rounds that did not take a full batch (a tick fires that late at
#: most); a full batch goes on at once.
MIN_WAIT_S = 0.1
#: A tick whose start failed for a passing reason (the Store, a full queue) is tried again after the
#: error's own hint, or this long; meanwhile the schedules behind it go first.
RETRY_S = 1.0
#: The longest idempotency key a task takes (SubmitRequest's).
MAX_KEY_CHARS = 200


def next_tick(cron: str, timezone: str, after: float) -> float:
    """The first tick of ``cron`` in ``timezone`` strictly after ``after`` (seconds since epoch).
    On a day a clock change repeats an hour, a fixed-time cron (triggers.fixed_time) ticks at the
    first of the two instants only; in the hour a change skips, croniter moves a tick to the hour's
    end (02:30 runs at 03:00). InvalidSchedule if the cron has no tick after ``after``."""
    return _tick(cron, timezone, after, forward=True)


def prev_tick(cron: str, timezone: str, before: float) -> float:
    """The last tick of ``cron`` in ``timezone`` strictly before ``before`` (as ``next_tick``)."""
    return _tick(cron, timezone, before, forward=False)


def _tick(cron: str, timezone: str, at: float, forward: bool) -> float:
    try:
        zone = ZoneInfo(timezone)
        ticks = croniter(cron, datetime.fromtimestamp(at, zone))
        once_a_day = fixed_time(cron)
        while True:
            tick = float(ticks.get_next(float) if forward else ticks.get_prev(float))
            if not (once_a_day and datetime.fromtimestamp(tick, zone).fold):
                return tick  # fold 1: the second instant of a repeated wall-clock time
    except (CroniterError, ZoneInfoNotFoundError, ValueError, IndexError) as e:
        when = datetime.fromtimestamp(at, ZoneInfo("UTC")).isoformat(timespec="seconds")
        raise InvalidSchedule(f"{cron!r} in {timezone!r} has no tick "
                              f"{'after' if forward else 'before'} {when} ({e})") from None


def tick_key(schedule_id: str, tick: float) -> str:
    """The idempotency key of a tick's task; a schedule id too long for one is hashed."""
    key = f"schedule:{schedule_id}:{tick:.3f}"
    if len(key) <= MAX_KEY_CHARS:
        return key
    return f"schedule:#{hashlib.sha256(schedule_id.encode()).hexdigest()[:40]}:{tick:.3f}"


def new_schedule(schedule_id: str, workflow: str, cron: str, *, timezone: str = "UTC",
                 input: dict[str, Any] | None = None,  # noqa: A002
                 catch_up: Literal["skip", "once"] = "skip",
                 overlap: Literal["skip", "allow", "cancel"] = "skip", tenant: str = "default",
                 paused: bool = False, catalog: Catalog | None = None,
                 now: float | None = None) -> Schedule:
    """A schedule checked before it is kept: its id, cron and time zone, and (with ``catalog``)
    its workflow and its input against the workflow's model."""
    if not 0 < len(schedule_id) <= 200 or not schedule_id.isprintable():
        raise InvalidSchedule("a schedule id is 1 to 200 printable characters")
    check_cron(cron, timezone)
    if catalog is not None:
        catalog.workflow(workflow).validate_input(input or {})
    now = time.time() if now is None else now
    return Schedule(id=schedule_id, tenant=tenant, workflow=workflow, cron=cron, timezone=timezone,
                    input=dict(input or {}), catch_up=catch_up, overlap=overlap, paused=paused,
                    next_at=next_tick(cron, timezone, now), created_at=now, updated_at=now)


def declared(catalog: Catalog) -> list[Schedule]:
    """The schedules the app's workflows declare."""
    out = []
    for wf in catalog.workflows.values():
        for n, s in enumerate(wf.schedules, 1):
            out.append(new_schedule(s.id or (wf.name if len(wf.schedules) == 1 else f"{wf.name}#{n}"),
                                    wf.name, s.cron, timezone=s.timezone, input=s.input,
                                    catch_up=s.catch_up, overlap=s.overlap, catalog=catalog))
    return out


class Scheduler:
    """Fires due ticks while it holds the Store's scheduler lease."""

    def __init__(self, settings: Settings, store: StoreService, catalog: Catalog) -> None:
        self.settings = settings
        self.store = store
        self.catalog = catalog
        self.owner = uuid.uuid4().hex
        self.fired = 0
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """A schedule changed: look again now."""
        self._wake.set()

    async def declare(self) -> None:
        for schedule in declared(self.catalog):  # the app's own: no tenant's bounds
            await self.store.put_schedule(schedule, limited=False)

    async def run(self) -> None:
        while True:
            self._wake.clear()
            try:
                wait_s = await self.round()
            except Exception:  # noqa: BLE001 - the Store may be restarting: try again shortly
                log.warning("scheduler round failed; trying again", exc_info=True)
                wait_s = 1.0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait_s)

    async def round(self) -> float:
        """Fire what is due; how long to sleep until the next tick. One schedule's failure is that
        schedule's alone: a passing one (the Store, a full queue) puts its tick off, and the round
        goes on to the others; any other pauses the schedule with the reason."""
        if not await self.store.take_lease(LEASE_NAME, self.owner, LEASE_S):
            return LEASE_S / 4  # another scheduler holds it; look again before it could run out
        due = await self.store.due_schedules(BATCH)
        for schedule in due:
            try:
                await self.fire(schedule, time.time())
            except (Retryable, StoreError) as e:
                after = retry_after_s(e) or RETRY_S
                log.warning("schedule %s: tick at %s not started (%s); trying again in %.1fs",
                            schedule.id, schedule.next_at, e, after)
                await self.store.defer_schedule(schedule.tenant, schedule.id, schedule.next_at,
                                                time.time() + after)
                metrics.inc("raysquad_schedule_ticks", outcome="deferred")
            except Exception as e:  # noqa: BLE001 - whatever it is, it must not stop the others
                reason = f"{type(e).__name__}: {e}"[:1000]
                log.error("schedule %s (tenant %s): paused: %s", schedule.id, schedule.tenant,
                          reason, exc_info=not isinstance(e, InvalidSchedule))
                await self.store.halt_schedule(schedule.tenant, schedule.id, schedule.next_at,
                                               reason)
                metrics.inc("raysquad_schedule_ticks", outcome="failed")
        if len(due) == BATCH:
            return 0.0  # more are due
        upcoming = await self.store.next_schedule_at()
        # Until the next tick, and at least every quarter lease (to keep it); a new schedule wakes
        # the scheduler at once.
        until = LEASE_S / 4 if upcoming is None else min(LEASE_S / 4, upcoming - time.time())
        return max(MIN_WAIT_S, until)

    async def fire(self, s: Schedule, now: float) -> None:
        """Start the task of the schedule's due tick and move the schedule past it. A refusal for
        what the task is (its workflow or input) lets the tick go; a passing failure (Retryable,
        StoreError) raises, leaving the tick due."""
        grace = self.settings.schedule_grace_s
        tick: float | None = s.next_at
        if now - s.next_at > grace:  # missed: the latest tick that has passed, found at once
            latest = max(s.next_at, prev_tick(s.cron, s.timezone, math.floor(now) + 1))
            on_time = now - latest <= grace
            tick = latest if (s.catch_up == "once" or on_time) else None
        following = next_tick(s.cron, s.timezone, max(now, tick or now))
        task_id = None
        outcome = "missed" if tick is None else "not started"
        if tick is not None and await self._may_start(s):
            try:
                record, _ = await self.store.submit(SubmitRequest(
                    workflow=s.workflow, input=s.input, tenant=s.tenant,
                    idempotency_key=tick_key(s.id, tick)))
            except (Refused, NotFound, Conflict) as e:  # refused for what it is: this tick cannot run
                log.warning("schedule %s: tick refused: %s", s.id, e)
                outcome = "refused"
            else:
                task_id, outcome = record.id, "fired"
                self.fired += 1
        await self.store.advance_schedule(s.tenant, s.id, s.next_at, following, tick, task_id)
        metrics.inc("raysquad_schedule_ticks", outcome=outcome)

    async def _may_start(self, s: Schedule) -> bool:
        if s.overlap == "allow" or s.last_task_id is None:
            return True
        try:
            last = await self.store.get_task(s.last_task_id)
        except TaskNotFound:
            return True
        if last.status.ended:
            return True
        if s.overlap == "skip":
            return False
        with contextlib.suppress(InvalidTransition, TaskNotFound):
            await self.store.request_cancel(last.id)
        return True
