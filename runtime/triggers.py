"""What starts work by itself: event triggers on workflows (``on_event``), schedules declared on
workflows (``on_schedule``, run by runtime/schedules.py), and the topic patterns that workflows and
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
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from runtime.errors import InvalidSchedule, InvalidTopic

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


def check_cron(cron: str, timezone: str) -> None:
    """InvalidSchedule unless ``cron`` is a cron expression (five fields, or six with seconds
    last) and ``timezone`` an IANA time zone."""
    if not croniter.is_valid(cron):
        raise InvalidSchedule(f"{cron!r} is not a cron expression (minute hour day month weekday, "
                              "and optionally seconds last, like '*/5 * * * *')")
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidSchedule(f"{timezone!r} is not a time zone (like 'UTC' or 'Europe/Paris')") from None


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
