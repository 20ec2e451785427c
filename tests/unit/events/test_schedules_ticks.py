"""A schedule's ticks (runtime/events/schedules.py's next_tick, prev_tick and tick_key) and what a cron
must be to be kept (runtime/core/triggers.py's check_cron and check_interval)."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from runtime.core.errors import InvalidSchedule
from runtime.core.triggers import check_cron, check_interval, fixed_time, min_interval_s
from runtime.events.schedules import MAX_KEY_CHARS, new_schedule, next_tick, prev_tick, tick_key


def ticks(cron: str, timezone: str, start: datetime, n: int) -> list[str]:
    """The next ``n`` ticks after ``start`` (local), as local ISO times with their offsets."""
    zone = ZoneInfo(timezone)
    at, out = start.replace(tzinfo=zone).timestamp(), []
    for _ in range(n):
        at = next_tick(cron, timezone, at)
        out.append(datetime.fromtimestamp(at, zone).isoformat())
    return out


@pytest.mark.parametrize(("cron", "timezone", "start", "expected"), [
    # Fall back: 01:00-02:00 (New York), 02:00-03:00 (Paris) happen twice; one run, the first.
    ("30 1 * * *", "America/New_York", datetime(2027, 11, 6, 12),
     ["2027-11-07T01:30:00-04:00", "2027-11-08T01:30:00-05:00"]),
    ("30 2 * * *", "Europe/Paris", datetime(2027, 10, 30, 12),
     ["2027-10-31T02:30:00+02:00", "2027-11-01T02:30:00+01:00"]),
    ("@daily", "America/New_York", datetime(2027, 11, 6, 12),
     ["2027-11-07T00:00:00-04:00", "2027-11-08T00:00:00-05:00"]),
    # Spring forward: 02:30 does not exist; it runs at 03:00, once.
    ("30 2 * * *", "Europe/Paris", datetime(2027, 3, 27, 12),
     ["2027-03-28T03:00:00+02:00", "2027-03-29T02:30:00+02:00"]),
    ("30 2 * * *", "America/New_York", datetime(2027, 3, 13, 12),
     ["2027-03-14T03:00:00-04:00", "2027-03-15T02:30:00-04:00"]),
])
def test_a_fixed_time_schedule_runs_once_on_a_clock_change(
        cron: str, timezone: str, start: datetime, expected: list[str]) -> None:
    assert ticks(cron, timezone, start, 2) == expected


def test_a_wildcard_schedule_runs_at_each_instant_of_a_repeated_hour() -> None:
    assert ticks("*/30 * * * *", "America/New_York", datetime(2027, 11, 7, 0, 45), 5) == [
        "2027-11-07T01:00:00-04:00", "2027-11-07T01:30:00-04:00",
        "2027-11-07T01:00:00-05:00", "2027-11-07T01:30:00-05:00", "2027-11-07T02:00:00-05:00"]
    assert ticks("30 * * * *", "Europe/Paris", datetime(2027, 10, 31, 1, 45), 3) == [
        "2027-10-31T02:30:00+02:00", "2027-10-31T02:30:00+01:00", "2027-10-31T03:30:00+01:00"]


def test_the_last_tick_before_skips_the_repeat_too() -> None:
    zone = ZoneInfo("America/New_York")
    after_both = datetime(2027, 11, 7, 3, tzinfo=zone).timestamp()
    latest = prev_tick("30 1 * * *", "America/New_York", after_both)
    assert datetime.fromtimestamp(latest, zone).isoformat() == "2027-11-07T01:30:00-04:00"
    assert prev_tick("*/30 * * * *", "America/New_York", after_both) == after_both - 1800
    # Strictly before: a tick at the instant itself is not the last one before it.
    assert prev_tick("0 * * * *", "UTC", 7200.0) == 3600.0


@pytest.mark.parametrize(("cron", "message"), [
    ("0 0 1 1 * 0 2027", "year field"),  # croniter takes a 7th field, a year: it runs out of ticks
    ("0 0 1 1 * 0 2020", "year field"),
    ("0 0 31 2 *", "never ticks"),  # February 31st
    ("0 0 30 2 *", "never ticks"),
    ("R * * * *", "random"),  # croniter draws anew each time it reads the cron
    ("every day", "not a cron expression"),
])
def test_a_cron_without_ticks_to_come_is_refused(cron: str, message: str) -> None:
    with pytest.raises(InvalidSchedule, match=message):
        check_cron(cron, "UTC")
    with pytest.raises(InvalidSchedule, match=message):
        new_schedule("s", "tick", cron)


@pytest.mark.parametrize("cron", ["*/5 * * * *", "0 9 * * mon-fri", "* * * * * */2", "@hourly",
                                  "0 0 29 2 *", "0 0 L * *", "0 0 * * 5#3"])
def test_five_or_six_fields_are_kept(cron: str) -> None:
    check_cron(cron, "Europe/Paris")


def test_a_stored_cron_that_no_longer_ticks_says_so() -> None:
    """A schedule kept before year fields were refused: no tick after its last is InvalidSchedule
    (a 422, and the scheduler pauses it with this reason), not croniter's ValueError."""
    with pytest.raises(InvalidSchedule, match="no tick after"):
        next_tick("0 0 1 1 * 0 2020", "UTC", 1_800_000_000.0)
    with pytest.raises(InvalidSchedule, match="no tick"):
        next_tick("* * * * *", "Mars/Base", 0.0)


@pytest.mark.parametrize(("cron", "every_s", "fixed"), [
    ("* * * * * *", 1, False), ("* * * * * */2", 2, False), ("*/15 * * * *", 900, False),
    ("0 9 * * 1", 86_400, True), ("0 0,23 * * *", 3600, True), ("@hourly", 3600, False),
    ("30 1 * * * */5", 5, True), ("0,59 * * * *", 60, False),
])
def test_how_often_a_cron_ticks(cron: str, every_s: float, fixed: bool) -> None:
    assert min_interval_s(cron) == every_s
    assert fixed_time(cron) is fixed


def test_a_floor_refuses_crons_that_tick_more_often() -> None:
    check_interval("* * * * * *", None)  # no floor
    check_interval("* * * * *", 60.0)
    with pytest.raises(InvalidSchedule, match=r"every 2 s.*at most every 60 s"):
        check_interval("* * * * * */2", 60.0)


def test_a_long_schedule_id_still_makes_an_idempotency_key() -> None:
    long_a, long_b = "a" * 200, "a" * 199 + "b"
    assert tick_key("nightly", 60.0) == "schedule:nightly:60.000"
    keys = {tick_key(long_a, 60.0), tick_key(long_b, 60.0), tick_key(long_a, 61.0)}
    assert len(keys) == 3 and all(len(k) <= MAX_KEY_CHARS for k in keys)
