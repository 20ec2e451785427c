"""One backoff loop for workflow steps, tool calls and engine requests.

``retry`` runs an attempt function under a RetryPolicy: each attempt under an optional timeout (its
expiry is a StepTimeout, a retryable error), a classifier that says which errors deserve another
attempt, exponential backoff with jitter between attempts, and a hook told of each retry (for events
and logs). When it stops trying it raises ``GaveUp``, which each caller turns into its own error
(StepError, ToolFailed, EngineError) before anything crosses an actor boundary.

An upstream's ``Retry-After`` (an error's ``retry_after_s``) is honoured, but never beyond the
policy's ``max_backoff_s``: a server that answers ``Retry-After: 1e9`` must not hold a worker slot
for ever. A hint that is not a finite, non-negative number is ignored.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TypeVar

from runtime.core.config import RetryPolicy
from runtime.core.errors import Conflict, NotFound, Refused, Retryable, StepTimeout

T = TypeVar("T")

Sleep = Callable[[float], Awaitable[object]]


@dataclass(frozen=True)
class Retrying:
    """What the on-retry hook is told: attempt ``attempt`` (from 1) failed with ``error``; the next
    starts in ``delay_s``. ``retry_after_s`` is the upstream's hint as honoured (capped), if any."""

    attempt: int
    error: Exception
    delay_s: float
    retry_after_s: float | None = None


class GaveUp(Exception):  # noqa: N818 - an outcome of the loop, turned into the caller's own error
    """Raised by ``retry`` when it stops: ``error`` is the last attempt's, ``attempts`` how many ran,
    ``retryable`` whether the attempts ran out (True) or the error was not worth another (False).

    It never leaves the caller of ``retry``, which raises its own picklable error instead.
    """

    def __init__(self, error: Exception, attempts: int, retryable: bool) -> None:
        super().__init__(error, attempts, retryable)
        self.error = error
        self.attempts = attempts
        self.retryable = retryable

    def __str__(self) -> str:
        return f"gave up after {self.attempts} attempt(s): {type(self.error).__name__}: {self.error}"


def is_retryable(error: BaseException, policy: RetryPolicy | None = None,
                 unknown: bool = True) -> bool:
    """Whether another attempt may succeed where ``error`` ended this one.

    Never for an error whose class name the policy lists as non-retryable, nor for one that says it
    would fail again (NotFound, Conflict, Refused); always for one that says it is passing
    (Retryable, which includes a timed-out attempt); ``unknown`` for any other error.
    """
    if policy is not None and type(error).__name__ in policy.non_retryable:
        return False
    if isinstance(error, Retryable):
        return True
    if isinstance(error, (NotFound, Conflict, Refused)):
        return False
    return unknown


def usable_retry_after_s(value: object) -> float | None:
    """``value`` as a delay in seconds if it is one: a finite number, not negative."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    seconds = float(value)
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def retry_after_s(error: BaseException) -> float | None:
    """The error's ``retry_after_s`` hint (an upstream's Retry-After), if it carries a usable one."""
    return usable_retry_after_s(getattr(error, "retry_after_s", None))


def capped_retry_after_s(hint: float | None, policy: RetryPolicy) -> float | None:
    """A usable hint, capped by the policy's ``max_backoff_s``; None for none or an unusable one."""
    usable = usable_retry_after_s(hint)
    return None if usable is None else min(usable, policy.max_backoff_s)


def delay_s(policy: RetryPolicy, attempt: int, retry_after: float | None = None,
            rand: Callable[[], float] = random.random) -> float:
    """The wait after failed attempt ``attempt``: the policy's backoff, or the upstream's
    ``retry_after`` hint where that is longer, up to ``max_backoff_s``."""
    backoff = policy.backoff_s(attempt, rand())
    hinted = capped_retry_after_s(retry_after, policy)
    return backoff if hinted is None else max(backoff, hinted)


@asynccontextmanager
async def attempt_timeout(name: str, timeout_s: float | None) -> AsyncIterator[None]:
    """Run the body under ``timeout_s`` (None: no limit). Its expiry raises ``StepTimeout(name)``;
    a TimeoutError the body raised on its own stays what it is."""
    deadline = asyncio.timeout(timeout_s)
    try:
        async with deadline:
            yield
    except TimeoutError as e:
        if not deadline.expired():
            raise
        raise StepTimeout(name, timeout_s or 0) from e


async def retry(attempt: Callable[[], Awaitable[T]], policy: RetryPolicy, *, name: str,
                timeout_s: float | None = None,
                retryable: Callable[[Exception], bool] | None = None,
                hint: Callable[[Exception], float | None] = retry_after_s,
                on_retry: Callable[[Retrying], None] | None = None,
                passthrough: tuple[type[BaseException], ...] = (),
                sleep: Sleep = asyncio.sleep,
                rand: Callable[[], float] = random.random) -> T:
    """Run ``attempt()`` until it returns, up to ``policy.max_attempts`` times.

    ``name`` names a timed-out attempt's StepTimeout; ``retryable`` classifies an error (default:
    ``is_retryable`` under the policy); ``hint`` reads an error's Retry-After in seconds;
    ``on_retry`` hears of each retry before its wait; errors of a ``passthrough`` class (and
    cancellation) propagate at once, as they are. Raises GaveUp when it stops trying.
    """
    def default(error: Exception) -> bool:
        return is_retryable(error, policy)

    classify = retryable or default
    n = 0
    while True:
        n += 1
        try:
            async with attempt_timeout(name, timeout_s):
                return await attempt()
        except passthrough:
            raise
        except Exception as e:  # noqa: BLE001 - classified below: retried or given up on
            error = e
        if not classify(error):
            raise GaveUp(error, n, False) from error
        if n >= policy.max_attempts:
            raise GaveUp(error, n, True) from error
        honoured = capped_retry_after_s(hint(error), policy)
        wait = delay_s(policy, n, honoured, rand)
        if on_retry is not None:
            on_retry(Retrying(n, error, wait, honoured))
        await sleep(wait)
