"""One exception hierarchy, rooted at RaysquadError.

Every exception here passes all of its arguments to ``super().__init__`` so that it survives a pickle
round trip when it crosses a Ray actor boundary (see ray-project/ray#50211); tests/unit/test_errors.py
round-trips each class.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit


class RaysquadError(Exception):
    """Base class for all raysquad errors."""


# -- what kind of failure: the retry loops (runtime/retry.py) and the HTTP API (serve/errors.py) read
# these bases, never a list of classes. An error under none of them is a failure nobody classified.


class NotFound(RaysquadError):
    """Base of errors for something named that does not exist (a task, a workflow, a tool): asking
    again finds nothing more, so it is never retried."""


class Conflict(RaysquadError):
    """Base of errors for an operation that does not apply to the present state of what it names
    (a task's status, a lease another owner holds): never retried."""


class Refused(RaysquadError):
    """Base of errors for a request refused for what it asks (invalid input, a policy, a limit): it
    would be refused again, so it is never retried."""


class Retryable(RaysquadError):
    """Base of errors for a passing condition (busy, restarting, throttled, timed out): another
    attempt may succeed, after ``retry_after_s`` where the error gives one."""

    retry_after_s: float | None = None


class ConfigError(RaysquadError):
    """Raised when configuration is invalid or names something that does not exist."""


class StoreError(RaysquadError):
    """Raised when the Store cannot read or write durable state. Its message is what any caller may
    see (the HTTP API answers it in a 500 body), so it never names where the database is or who
    connects to it; ``detail`` (what the database said, its address) is for the log only and is left
    out of ``str()``."""

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message, detail)
        self.message = message
        self.detail = detail

    def __str__(self) -> str:
        return self.message


class TaskNotFound(NotFound):
    """Raised when a task id does not exist in the Store."""

    def __init__(self, task_id: str) -> None:
        super().__init__(task_id)
        self.task_id = task_id

    def __str__(self) -> str:
        return f"no task with id {self.task_id!r}"


class WorkflowNotFound(NotFound):
    """Raised when a submission names a workflow that is not loaded."""

    def __init__(self, name: str, known: tuple[str, ...] = ()) -> None:
        super().__init__(name, known)
        self.name = name
        self.known = known

    def __str__(self) -> str:
        known = ", ".join(self.known) or "none"
        return f"unknown workflow {self.name!r} (loaded: {known})"


class InvalidInput(Refused):
    """Raised when a workflow's input does not validate against its input model."""

    def __init__(self, workflow: str, problems: list[str]) -> None:
        super().__init__(workflow, problems)
        self.workflow = workflow
        self.problems = problems

    def __str__(self) -> str:
        return f"invalid input for workflow {self.workflow!r}: " + "; ".join(self.problems)


class QueueFull(Retryable):
    """Raised when a bounded queue refuses an item; nothing already accepted is affected."""

    def __init__(self, queue: str, capacity: int, retry_after_s: float = 1.0) -> None:
        super().__init__(queue, capacity, retry_after_s)
        self.queue = queue
        self.capacity = capacity
        self.retry_after_s = retry_after_s

    def __str__(self) -> str:
        return (
            f"queue {self.queue!r} is full ({self.capacity} items); "
            f"try again in {self.retry_after_s:.1f}s"
        )


class TenantQuotaExceeded(QueueFull):
    """Raised when a tenant's queued tasks already hold its share of the queue (a 429): of input
    bytes (``tenant_queued_bytes``) or of tasks (``tenant_queued_tasks``), as ``limit_name`` says."""

    def __init__(self, tenant: str, queued: int, limit: int, retry_after_s: float = 1.0,
                 limit_name: str = "tenant_queued_bytes") -> None:
        RaysquadError.__init__(self, tenant, queued, limit, retry_after_s, limit_name)
        self.tenant = tenant
        self.queued = queued
        self.limit_name = limit_name
        self.queue = f"tenant {tenant}"
        self.capacity = limit
        self.retry_after_s = retry_after_s

    @property
    def queued_bytes(self) -> int:
        return self.queued if self.limit_name == "tenant_queued_bytes" else 0

    def __str__(self) -> str:
        what = "bytes of input" if self.limit_name == "tenant_queued_bytes" else "tasks"
        return (f"tenant {self.tenant!r} has {self.queued} {what} queued, and the limit "
                f"({self.limit_name}) is {self.capacity}; try again in {self.retry_after_s:.1f}s")


class SignalQuotaExceeded(QueueFull):
    """Raised when a task already holds as many signals not yet taken (or bytes of their
    payloads) as it may (a 429): a signal is kept until the task waits for it."""

    def __init__(self, task_id: str, pending: int, size: int, max_signals: int, max_bytes: int,
                 retry_after_s: float = 10.0) -> None:
        RaysquadError.__init__(self, task_id, pending, size, max_signals, max_bytes, retry_after_s)
        self.task_id = task_id
        self.pending = pending
        self.size = size
        self.max_signals = max_signals
        self.max_bytes = max_bytes
        self.queue = f"signals of task {task_id}"
        self.capacity = max_signals
        self.retry_after_s = retry_after_s

    def __str__(self) -> str:
        return (f"task {self.task_id!r} holds {self.pending} signals not yet taken "
                f"({self.size} bytes of payload), and may hold {self.max_signals} "
                f"(task_pending_signals) and {self.max_bytes} bytes (task_signal_bytes); a signal "
                f"is taken when the task waits for it, try again later")


class EventQuotaExceeded(QueueFull):
    """Raised when a tenant already keeps as many events (or bytes of event data) as it may (a
    429): old events are forgotten after the retention period (event_retention_s)."""

    def __init__(self, tenant: str, events: int, size: int, max_events: int, max_bytes: int,
                 retry_after_s: float = 60.0) -> None:
        RaysquadError.__init__(self, tenant, events, size, max_events, max_bytes, retry_after_s)
        self.tenant = tenant
        self.events = events
        self.size = size
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.queue = f"events of tenant {tenant}"
        self.capacity = max_events
        self.retry_after_s = retry_after_s

    def __str__(self) -> str:
        return (f"tenant {self.tenant!r} keeps {self.events} events ({self.size} bytes of data), "
                f"and may keep {self.max_events} ({self.max_bytes} bytes); old events are "
                f"forgotten after the retention period, try again later")


class InputTooLarge(Refused):
    """Raised when a task's input is larger than ``max_input_bytes`` (a 413)."""

    def __init__(self, size: int, limit: int, what: str = "the task's input") -> None:
        super().__init__(size, limit, what)
        self.size = size
        self.limit = limit
        self.what = what

    def __str__(self) -> str:
        return f"{self.what} is {self.size} bytes as JSON; the limit is {self.limit}"


class PriorityNotAllowed(Refused):
    """Raised when a tenant asks for a priority outside the range it may use (a 422)."""

    def __init__(self, tenant: str, priority: int, low: int, high: int) -> None:
        super().__init__(tenant, priority, low, high)
        self.tenant = tenant
        self.priority = priority
        self.low = low
        self.high = high

    def __str__(self) -> str:
        return (f"priority {self.priority} is not allowed: tenant {self.tenant!r} may use "
                f"{self.low} to {self.high}")


class InvalidName(Refused):
    """Raised for an id, key or name that holds a control character (a 422): PostgreSQL refuses
    NUL in text, and the rest break headers and logs."""

    def __init__(self, what: str, reason: str) -> None:
        super().__init__(what, reason)
        self.what = what
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.what}: {self.reason}"


class InvalidCursor(Refused):
    """Raised when a page cursor is not one the task list gave out (a 422)."""

    def __init__(self, cursor: str) -> None:
        super().__init__(cursor)
        self.cursor = cursor

    def __str__(self) -> str:
        return f"cursor {self.cursor[:60]!r} is not one a task list gave out (use its next_cursor)"


class InvalidTransition(Conflict):
    """Raised when an operation does not apply to a task in its current status."""

    def __init__(self, task_id: str, status: str, operation: str) -> None:
        super().__init__(task_id, status, operation)
        self.task_id = task_id
        self.status = status
        self.operation = operation

    def __str__(self) -> str:
        return f"cannot {self.operation} task {self.task_id!r}: it is {self.status}"


class StepError(RaysquadError):
    """Raised when a step failed after all of its attempts; carries the last error's text."""

    def __init__(self, step_key: str, message: str, error_type: str = "", attempts: int = 1) -> None:
        super().__init__(step_key, message, error_type, attempts)
        self.step_key = step_key
        self.message = message
        self.error_type = error_type
        self.attempts = attempts

    def __str__(self) -> str:
        kind = f"{self.error_type}: " if self.error_type else ""
        return f"step {self.step_key!r} failed after {self.attempts} attempt(s): {kind}{self.message}"


class StepTimeout(Retryable):
    """Raised inside a step attempt that ran past its timeout."""

    def __init__(self, step_key: str, timeout_s: float) -> None:
        super().__init__(step_key, timeout_s)
        self.step_key = step_key
        self.timeout_s = timeout_s

    def __str__(self) -> str:
        return f"step {self.step_key!r} timed out after {self.timeout_s}s"


class TaskCancelled(RaysquadError):
    """Raised in a workflow at its next step boundary after the task was cancelled."""

    def __init__(self, task_id: str) -> None:
        super().__init__(task_id)
        self.task_id = task_id

    def __str__(self) -> str:
        return f"task {self.task_id!r} was cancelled"


class SignalTimeout(RaysquadError):
    """Raised by ``ctx.wait_for_signal`` when no signal of that name arrived within its timeout."""

    def __init__(self, task_id: str, name: str, timeout_s: float) -> None:
        super().__init__(task_id, name, timeout_s)
        self.task_id = task_id
        self.name = name
        self.timeout_s = timeout_s

    def __str__(self) -> str:
        return f"task {self.task_id!r}: no signal {self.name!r} within {self.timeout_s}s"


class LeaseLost(Conflict):
    """Raised when a worker finds that another owner now holds its task's lease."""

    def __init__(self, task_id: str, owner: str) -> None:
        super().__init__(task_id, owner)
        self.task_id = task_id
        self.owner = owner

    def __str__(self) -> str:
        return f"lease on task {self.task_id!r} is no longer held by {self.owner!r}"


class AgentNotFound(NotFound):
    """Raised when a workflow addresses an agent role that is not loaded."""

    def __init__(self, role: str, known: tuple[str, ...] = ()) -> None:
        super().__init__(role, known)
        self.role = role
        self.known = known

    def __str__(self) -> str:
        known = ", ".join(self.known) or "none"
        return f"unknown agent role {self.role!r} (loaded: {known})"


class AgentError(RaysquadError):
    """Raised when an agent's handler raised; carries the original error's type and text."""

    def __init__(self, role: str, message: str, error_type: str = "") -> None:
        super().__init__(role, message, error_type)
        self.role = role
        self.message = message
        self.error_type = error_type

    def __str__(self) -> str:
        kind = f"{self.error_type}: " if self.error_type else ""
        return f"agent {self.role!r} failed: {kind}{self.message}"


class EngineError(RaysquadError):
    """Raised when an LLM engine fails a request."""

    def __init__(self, model: str, message: str) -> None:
        super().__init__(model, message)
        self.model = model
        self.message = message

    def __str__(self) -> str:
        return f"engine for model {self.model!r} failed: {self.message}"


class EngineUnavailable(EngineError, Retryable):
    """Raised when a model's upstream kept answering 429 or 5xx, or could not be reached, through
    all of the engine's own attempts: a later try may succeed."""


class ModelNotFound(NotFound):
    """Raised when an LLM call names a model that no engine serves."""

    def __init__(self, model: str, known: tuple[str, ...] = ()) -> None:
        super().__init__(model, known)
        self.model = model
        self.known = known

    def __str__(self) -> str:
        known = ", ".join(self.known) or "none"
        return f"no engine serves model {self.model!r} (served: {known})"


class RuntimeAlreadyRunning(Conflict):
    """Raised when a runtime is started in a Ray namespace that already has one."""

    def __init__(self, namespace: str) -> None:
        super().__init__(namespace)
        self.namespace = namespace

    def __str__(self) -> str:
        return (f"a raysquad runtime is already running in Ray namespace {self.namespace!r}; "
                "`raysquad down` stops it (or set RAYSQUAD_NAMESPACE to run another beside it)")


class StoreInUse(Conflict):
    """Raised when another runtime holds the Store (a SQLite file, a PostgreSQL schema) that a
    runtime was to open; ``path`` says which."""

    def __init__(self, path: str, holder: str = "") -> None:
        super().__init__(path, holder)
        self.path, self.holder = path, holder

    def __str__(self) -> str:
        by = f" ({self.holder})" if self.holder else ""
        return (f"{self.path} is in use by another raysquad runtime{by}; stop that one first "
                "(`raysquad down`), or give this one a Store of its own")


class ClusterStartFailed(Retryable):
    """Raised when a local Ray cluster could not be started (its raylet or GCS did not come up)."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why

    def __str__(self) -> str:
        return f"could not start a local Ray cluster: {self.why}"


class ClusterUnreachable(Retryable):
    """Raised when no Ray cluster answers at the address a runtime was to join."""

    def __init__(self, address: str, why: str = "") -> None:
        super().__init__(address, why)
        self.address, self.why = address, why

    def __str__(self) -> str:
        why = f" ({self.why})" if self.why else ""
        return (f"no Ray cluster answered at {self.address!r}{why}; start one with `ray start "
                "--head`, or give its address with --address or RAYSQUAD_RAY_ADDRESS")


class RuntimeNotRunning(Retryable):
    """Raised when a client cannot find a running raysquad runtime."""

    def __init__(self, where: str) -> None:
        super().__init__(where)
        self.where = where

    def __str__(self) -> str:
        return f"no raysquad runtime is running at {self.where}; start one with `raysquad up`"


class WaitTimeout(RaysquadError):
    """Raised by Client.wait when the task did not end within the given time."""

    def __init__(self, task_id: str, timeout_s: float, status: str) -> None:
        super().__init__(task_id, timeout_s, status)
        self.task_id = task_id
        self.timeout_s = timeout_s
        self.status = status

    def __str__(self) -> str:
        return f"task {self.task_id!r} still {self.status} after {self.timeout_s}s"


class TaskFailed(RaysquadError):
    """Raised by Client.result when the task ended in failure or was cancelled."""

    def __init__(self, task_id: str, status: str, error: str) -> None:
        super().__init__(task_id, status, error)
        self.task_id = task_id
        self.status = status
        self.error = error

    def __str__(self) -> str:
        return f"task {self.task_id!r} {self.status}: {self.error}"


class RemoteError(RaysquadError):
    """Raised by the HTTP client when the server answers with an error status."""

    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(status, kind, message)
        self.status = status
        self.kind = kind
        self.message = message

    def __str__(self) -> str:
        return f"{self.message} (HTTP {self.status})"


# -- gates and tools -------------------------------------------------------------------------------


class GateTimeout(Retryable):
    """Raised when a gate did not grant passage within the caller's time limit."""

    def __init__(self, key: str, timeout_s: float) -> None:
        super().__init__(key, timeout_s)
        self.key = key
        self.timeout_s = timeout_s

    def __str__(self) -> str:
        return f"gate {self.key!r} granted no passage within {self.timeout_s}s"


class GateRequestTooLarge(Refused):
    """Raised when one request asks a gate for more tokens than its whole window allows."""

    def __init__(self, key: str, tokens: int, limit: int) -> None:
        super().__init__(key, tokens, limit)
        self.key = key
        self.tokens = tokens
        self.limit = limit

    def __str__(self) -> str:
        return (f"a request for {self.tokens} tokens can never pass gate {self.key!r}: "
                f"its window allows {self.limit}")


class ToolNotFound(NotFound):
    """Raised when a tool call names a tool that is not registered."""

    def __init__(self, name: str, known: tuple[str, ...] = ()) -> None:
        super().__init__(name, known)
        self.name = name
        self.known = known

    def __str__(self) -> str:
        known = ", ".join(self.known) or "none"
        return f"unknown tool {self.name!r} (registered: {known})"


class ToolArgsInvalid(Refused):
    """Raised when a tool call's arguments do not validate against the tool's signature."""

    def __init__(self, name: str, problems: list[str]) -> None:
        super().__init__(name, problems)
        self.name = name
        self.problems = problems

    def __str__(self) -> str:
        return f"invalid arguments for tool {self.name!r}: " + "; ".join(self.problems)


class ToolFailed(RaysquadError):
    """Raised to the caller when a tool call failed for good; ``dead_letter`` names its record."""

    def __init__(self, name: str, message: str, error_type: str = "", attempts: int = 1,
                 dead_letter: str = "") -> None:
        super().__init__(name, message, error_type, attempts, dead_letter)
        self.name = name
        self.message = message
        self.error_type = error_type
        self.attempts = attempts
        self.dead_letter = dead_letter

    def __str__(self) -> str:
        kind = f"{self.error_type}: " if self.error_type else ""
        where = f"; dead letter {self.dead_letter}" if self.dead_letter else ""
        return f"tool {self.name!r} failed after {self.attempts} attempt(s): {kind}{self.message}{where}"


class AddressRefused(Refused):
    """Raised when http_fetch would connect to a private, loopback, link-local or reserved address,
    or to a port that is not allowed. It names the host as the caller gave it, never an address the
    host resolved to (the tenant is not told what is inside; the log has it)."""

    retryable = False

    def __init__(self, host: str, reason: str,
                 setting: str = "RAYSQUAD_TOOLS__HTTP_ALLOW_NETWORKS") -> None:
        super().__init__(host, reason, setting)
        self.host = host
        self.reason = reason
        self.setting = setting

    def __str__(self) -> str:
        allow = f"; allow it with {self.setting}" if self.setting else ""
        return f"refused to connect to {self.host}: {self.reason}{allow}"


def public_url(url: str) -> str:
    """``url`` as an error message or a dead letter may show it: scheme, host, port and path, without
    what often carries a credential (a ``user:password@``, the query string, the fragment)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(an invalid URL)"
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


class ResponseTooLarge(Refused):
    """Raised when a fetched body exceeds the size cap: as it arrives, and again as it decodes. It
    names the URL without its userinfo and query (``public_url``)."""

    retryable = False

    def __init__(self, url: str, limit: int) -> None:
        url = public_url(url)
        super().__init__(url, limit)
        self.url = url
        self.limit = limit

    def __str__(self) -> str:
        return f"response from {self.url} exceeds {self.limit} bytes"


class UpstreamError(Retryable):
    """Raised when an upstream service answers 429 or 5xx (busy or failing): worth another try, after
    its Retry-After where it sent one (retry loops cap that at their policy's max_backoff_s). It names
    the URL without its userinfo and query (``public_url``)."""

    def __init__(self, url: str, status: int, retry_after_s: float | None = None) -> None:
        url = public_url(url)
        super().__init__(url, status, retry_after_s)
        self.url = url
        self.status = status
        self.retry_after_s = retry_after_s

    def __str__(self) -> str:
        return f"{self.url} answered HTTP {self.status}"


class QueryRefused(Refused):
    """Raised when sql_query is given anything but one read-only statement within its limits (time,
    functions, value size), or no database is set."""

    retryable = False

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def __str__(self) -> str:
        return f"query refused: {self.reason}"


class DeadLetterNotFound(NotFound):
    """Raised when a dead letter id does not exist."""

    def __init__(self, dead_letter: str) -> None:
        super().__init__(dead_letter)
        self.dead_letter = dead_letter

    def __str__(self) -> str:
        return f"no dead letter with id {self.dead_letter!r}"


class ActorUnavailable(Retryable):
    """Raised when a part of the control plane stays unreachable past a call's deadline (it is
    restarting, or gone); the call may be tried again later. The HTTP API answers 503."""

    def __init__(self, actor: str, waited_s: float, retry_after_s: float = 2.0) -> None:
        super().__init__(actor, waited_s, retry_after_s)
        self.actor = actor
        self.waited_s = waited_s
        self.retry_after_s = retry_after_s

    def __str__(self) -> str:
        return (f"the runtime's {self.actor!r} actor did not answer for {self.waited_s:.1f}s "
                f"(restarting?); try again in {self.retry_after_s:.0f}s")


class PoisonTask(RaysquadError):
    """The error a task ends with when it crashed its worker (or could not be resumed) too often."""

    def __init__(self, task_id: str, attempts: int, reason: str) -> None:
        super().__init__(task_id, attempts, reason)
        self.task_id = task_id
        self.attempts = attempts
        self.reason = reason

    def __str__(self) -> str:
        return (f"task {self.task_id!r} given up after {self.attempts} failed attempt(s) to run it: "
                f"{self.reason}")


class InvalidTopic(Refused):
    """Raised for a topic or topic pattern that is not dot-separated words."""

    def __init__(self, topic: str, rule: str) -> None:
        super().__init__(topic, rule)
        self.topic = topic
        self.rule = rule

    def __str__(self) -> str:
        return f"bad topic {self.topic[:100]!r}: {self.rule}"


class WebhookSourceNotFound(NotFound):
    """Raised for a webhook to a source that RAYSQUAD_WEBHOOKS does not configure."""

    def __init__(self, source: str) -> None:
        super().__init__(source)
        self.source = source

    def __str__(self) -> str:
        return f"no webhook source {self.source[:100]!r} is configured (RAYSQUAD_WEBHOOKS)"


class WebhookRejected(Refused):
    """Raised for a webhook delivery whose signature is missing, wrong or stale."""

    def __init__(self, source: str, why: str) -> None:
        super().__init__(source, why)
        self.source = source
        self.why = why

    def __str__(self) -> str:
        return f"webhook for {self.source!r} rejected: {self.why}"


class InvalidEventData(Refused):
    """Raised for event data that is not JSON (NaN, an infinity, a value JSON cannot hold)."""

    def __init__(self, topic: str, problem: str) -> None:
        super().__init__(topic, problem)
        self.topic = topic
        self.problem = problem

    def __str__(self) -> str:
        return f"bad data for an event on {self.topic!r}: {self.problem}"


class EventNotFound(NotFound):
    """Raised when a tenant has no event with the id asked for."""

    def __init__(self, event_id: str) -> None:
        super().__init__(event_id)
        self.event_id = event_id

    def __str__(self) -> str:
        return f"no event with id {self.event_id[:200]!r}"


class InvalidSchedule(Refused):
    """Raised for a schedule that cannot run: a bad cron expression, time zone or id."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem

    def __str__(self) -> str:
        return f"bad schedule: {self.problem}"


class ScheduleNotFound(NotFound):
    """Raised when a tenant has no schedule with the id asked for."""

    def __init__(self, schedule_id: str) -> None:
        super().__init__(schedule_id)
        self.schedule_id = schedule_id

    def __str__(self) -> str:
        return f"no schedule with id {self.schedule_id[:200]!r}"
