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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from datetime import datetime
from typing import Any, Literal
from zoneinfo import ZoneInfo

from croniter import croniter

from runtime import metrics
from runtime.catalog import Catalog
from runtime.config import Settings
from runtime.errors import InvalidSchedule, InvalidTransition, QueueFull, RaysquadError, TaskNotFound
from runtime.models import Schedule, SubmitRequest
from runtime.store.actor import StoreService
from runtime.triggers import check_cron

log = logging.getLogger(__name__)

LEASE_NAME = "scheduler"
LEASE_S = 10.0
BATCH = 100
#: Ticks looked at when finding the latest missed one (a schedule far behind moves on past them).
MAX_TICKS = 100_000


def next_tick(cron: str, timezone: str, after: float) -> float:
    """The first tick of ``cron`` in ``timezone`` strictly after ``after`` (seconds since epoch)."""
    start = datetime.fromtimestamp(after, ZoneInfo(timezone))
    return float(croniter(cron, start).get_next(float))


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
        for schedule in declared(self.catalog):
            await self.store.put_schedule(schedule)

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
        """Fire what is due; how long to sleep until the next tick."""
        if not await self.store.take_lease(LEASE_NAME, self.owner, LEASE_S):
            return LEASE_S / 4  # another scheduler holds it; look again before it could run out
        for schedule in await self.store.due_schedules(BATCH):
            try:
                await self.fire(schedule, time.time())
            except RaysquadError:
                log.warning("schedule %s: tick at %s failed; trying again", schedule.id,
                            schedule.next_at, exc_info=True)
        upcoming = await self.store.next_schedule_at()
        # Until the next tick, and at least every quarter lease (to keep it); a new schedule wakes
        # the scheduler at once.
        until = LEASE_S / 4 if upcoming is None else min(LEASE_S / 4, upcoming - time.time())
        return max(0.01, until)

    async def fire(self, s: Schedule, now: float) -> None:
        grace = self.settings.schedule_grace_s
        tick: float | None = s.next_at
        if now - s.next_at > grace:  # missed: find the latest tick that has passed
            latest, n = s.next_at, 0
            while (following := next_tick(s.cron, s.timezone, latest)) <= now and n < MAX_TICKS:
                latest, n = following, n + 1
            on_time = now - latest <= grace
            tick = latest if (s.catch_up == "once" or on_time) else None
        following = next_tick(s.cron, s.timezone, max(now, tick or now))
        task_id = None
        if tick is not None and await self._may_start(s):
            try:
                record, _ = await self.store.submit(SubmitRequest(
                    workflow=s.workflow, input=s.input, tenant=s.tenant,
                    idempotency_key=f"schedule:{s.id}:{tick:.3f}"))
            except QueueFull:
                return  # the tick stays due; the next round tries it again
            except RaysquadError as e:  # refused for what it is: this tick cannot run
                log.warning("schedule %s: tick refused: %s", s.id, e)
            else:
                task_id = record.id
                self.fired += 1
        await self.store.advance_schedule(s.tenant, s.id, s.next_at, following, tick, task_id)
        metrics.inc("raysquad_schedule_ticks", outcome="fired" if task_id else
                    "missed" if tick is None else "not started")

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
