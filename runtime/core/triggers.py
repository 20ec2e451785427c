"""What starts work by itself: event triggers on workflows (``on_event``), schedules declared on
workflows (``on_schedule``, run by runtime/events/schedules.py), and the topic patterns that workflows and
agent roles subscribe with.

A topic is dot-separated words (``docs.new``, ``repo.push``). A pattern matches topics word by word:
``*`` is any one word, ``**`` any number of words (none included): ``docs.*`` matches ``docs.new``
but not ``docs.new.pdf``; ``docs.**`` matches both, and ``docs``.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterError, croniter

from runtime.core.errors import InvalidSchedule, InvalidTopic

_WORD = r"[A-Za-z0-9_\-]+"
TOPIC_RE = re.compile(rf"^{_WORD}(\.{_WORD})*$")
PATTERN_RE = re.compile(rf"^({_WORD}|\*|\*\*)(\.({_WORD}|\*|\*\*))*$")
MAX_TOPIC_CHARS = 200


def check_topic(topic: str) -> str:
    """The topic, or InvalidTopic (a 422) saying what a topic may be."""
    if len(topic) > MAX_TOPIC_CHARS or not TOPIC_RE.match(topic):
        raise InvalidTopic(topic, f"a topic is dot-separated words of letters, digits, '_' and "
                                  f"'-', at most {MAX_TOPIC_CHARS} characters (like docs.new)")
    return topic


def check_pattern(pattern: str) -> str:
    if len(pattern) > MAX_TOPIC_CHARS or not PATTERN_RE.match(pattern):
        raise InvalidTopic(pattern, "a topic pattern is dot-separated words, '*' (one word) or "
                                    "'**' (any number of words), like docs.* or repo.**")
    return pattern


@functools.lru_cache(maxsize=4096)
def _compiled(pattern: str) -> re.Pattern[str]:
    parts = []
    for word in pattern.split("."):
        parts.append(r"(\.[^.]+)*" if word == "**" else
                     r"\.[^.]+" if word == "*" else r"\." + re.escape(word))
    # Every word was written with a leading dot; the topic is matched with one in front.
    return re.compile("^" + "".join(parts) + "$")


def topic_matches(pattern: str, topic: str) -> bool:
    return bool(_compiled(pattern).match("." + topic))


Where = Callable[[Any], bool] | Mapping[str, Any] | None


def where_matches(where: Where, data: Any) -> bool:
    """A filter on an event's data: a function of the data, or a mapping of dotted paths to the
    values they must hold (``{"repo.branch": "main"}``)."""
    if where is None:
        return True
    if callable(where):
        return bool(where(data))
    for path, wanted in where.items():
        value = data
        for name in path.split("."):
            if not isinstance(value, Mapping) or name not in value:
                return False
            value = value[name]
        if value != wanted:
            return False
    return True


@dataclass(frozen=True)
class OnEvent:
    """Start one task of the workflow per matching event, with the event's data as its input.

    Flow control per event key (events without a key share one): ``debounce_s`` starts one run
    once the key's events have stopped for that long, with the last event's data; ``one_per_key``
    holds an event while a task it started for the key is still active; ``cancel_running``
    cancels the key's active task when a newer event arrives, then starts one for it.
    """

    topic: str
    where: Where = None
    debounce_s: float | None = None
    one_per_key: bool = False
    cancel_running: bool = False

    def matches(self, topic: str, data: Any) -> bool:
        return topic_matches(self.topic, topic) and where_matches(self.where, data)


def on_event(topic: str, where: Where = None, *, debounce_s: float | None = None,
             one_per_key: bool = False, cancel_running: bool = False) -> OnEvent:
    """A workflow trigger: ``@workflow(triggers=[on_event("docs.new", where={"lang": "en"})])``."""
    check_pattern(topic)
    if debounce_s is not None and debounce_s <= 0:
        raise ValueError("debounce_s must be positive")
    return OnEvent(topic, where, debounce_s, one_per_key, cancel_running)


#: A cron's fields: minute hour day month weekday, and optionally seconds last. croniter also takes
#: a year (a 7th field); a schedule refuses it, as a year-bound cron runs out of ticks.
MAX_CRON_FIELDS = 6


def check_cron(cron: str, timezone: str) -> None:
    """InvalidSchedule unless ``cron`` is a cron expression (five fields, or six with seconds
    last) that has ticks to come, and ``timezone`` an IANA time zone."""
    fields = cron.split()
    if not croniter.is_valid(cron):
        raise InvalidSchedule(f"{cron!r} is not a cron expression (minute hour day month weekday, "
                              "and optionally seconds last, like '*/5 * * * *')")
    if len(fields) > MAX_CRON_FIELDS:
        raise InvalidSchedule(f"{cron!r} has a year field (a 7th): a schedule takes five fields, "
                              "or six with seconds last")
    if any(token.upper().startswith("R") for f in fields for token in f.split(",")):
        # croniter's random 'R' draws anew each time it reads the cron: the ticks would move.
        raise InvalidSchedule(f"{cron!r} has a random field ('R'); name the time instead")
    try:
        zone = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidSchedule(f"{timezone!r} is not a time zone (like 'UTC' or 'Europe/Paris')") from None
    try:  # without a year, a cron that ticks at all ticks forever: one tick to come is enough
        croniter(cron, datetime.now(zone)).get_next(float)
    except CroniterError:
        raise InvalidSchedule(f"{cron!r} never ticks (like February 31st)") from None


def fixed_time(cron: str) -> bool:
    """Whether ``cron`` names fixed times of day: neither its minute nor its hour field is a
    wildcard (``*``, ``*/15``). Such a schedule runs once on a day a clock change repeats an hour
    (as in Vixie cron); a wildcard one runs at each real instant."""
    fields = _ALIASES.get(cron.strip().lower(), cron).split()
    return not (fields[0].startswith("*") or fields[1].startswith("*"))


_ALIASES = {"@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *",
            "@weekly": "0 0 * * 0", "@daily": "0 0 * * *", "@midnight": "0 0 * * *",
            "@hourly": "0 * * * *"}


def min_interval_s(cron: str) -> float:
    """The shortest time between two ticks of ``cron`` (a valid one), from its seconds, minutes
    and hours of the day (a bound from below: days may spread the ticks further)."""
    fields, _ = croniter.expand(_ALIASES.get(cron.strip().lower(), cron))

    def values(field: list[Any], top: int) -> list[int]:
        return list(range(top)) if field == ["*"] else sorted({int(v) for v in field})

    seconds = values(fields[5], 60) if len(fields) > 5 else [0]
    times = sorted(h * 3600 + m * 60 + s for h in values(fields[1], 24)
                   for m in values(fields[0], 60) for s in seconds)
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    return float(min([*gaps, times[0] + 86_400 - times[-1]]))


def check_interval(cron: str, floor_s: float | None) -> None:
    """InvalidSchedule if ``cron`` may tick more often than every ``floor_s`` seconds."""
    if floor_s is not None and (every := min_interval_s(cron)) < floor_s:
        raise InvalidSchedule(
            f"{cron!r} ticks as often as every {every:g} s; this tenant's schedules may tick at "
            f"most every {floor_s:g} s (schedule_min_interval_s; admin_tenants have no floor)")


@dataclass(frozen=True)
class OnSchedule:
    """A schedule declared on a workflow (``@workflow(triggers=[on_schedule(...)])``); it is
    created, or updated, when the runtime starts, for the default tenant."""

    cron: str
    timezone: str = "UTC"
    input: dict[str, Any] = field(default_factory=dict)
    catch_up: Literal["skip", "once"] = "skip"
    overlap: Literal["skip", "allow", "cancel"] = "skip"
    id: str | None = None


def on_schedule(cron: str, *, timezone: str = "UTC", input: dict[str, Any] | None = None,  # noqa: A002
                catch_up: Literal["skip", "once"] = "skip",
                overlap: Literal["skip", "allow", "cancel"] = "skip",
                id: str | None = None) -> OnSchedule:  # noqa: A002
    """A workflow trigger: start a task on each tick of ``cron`` in ``timezone``."""
    check_cron(cron, timezone)
    return OnSchedule(cron, timezone, dict(input or {}), catch_up, overlap, id)
