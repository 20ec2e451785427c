"""One exception hierarchy, rooted at RaysquadError.

An error with details names them as annotated fields and its message as a ``template`` over them
(``WithFields`` makes it a dataclass), so its constructor takes the fields in order and keeps them in
``args``, which is what a pickle round trip replays when the error crosses a Ray actor boundary (see
ray-project/ray#50211); tests/unit/core/test_errors.py round-trips each class.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, dataclass_transform
from urllib.parse import urlsplit, urlunsplit


class RaysquadError(Exception):
    """Base class for all raysquad errors. ``str()`` fills the class's ``template`` from the error's
    attributes (a class whose message needs more overrides ``__str__``); without one, an error says
    what it was given, like any Exception."""

    template: ClassVar[str] = ""

    def __str__(self) -> str:
        return self.template.format_map(vars(self)) if self.template else super().__str__()


@dataclass_transform(eq_default=False)
class WithFields:
    """Mixed into an error with fields: each class under it is a dataclass of its annotated fields
    (``eq=False``, ``repr=False``: an error keeps Exception's identity and repr) whose ``args`` are
    those fields, in order. An error without it (the kinds below, an app's own subclass) keeps
    Exception's constructor."""

    # Declared for mypy: each subclass is made a dataclass, and is an Exception (which has args).
    __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]
    args: tuple[Any, ...]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        dataclasses.dataclass(eq=False, repr=False)(cls)

    def __post_init__(self) -> None:
        self.args = tuple(getattr(self, field.name) for field in dataclasses.fields(self))


def _listed(names: tuple[str, ...]) -> str:
    return ", ".join(names) or "none"


def _kind(error_type: str) -> str:
    return f"{error_type}: " if error_type else ""


def _gave_up(attempts: int, error_type: str, message: str, dead_letter: str = "") -> str:
    """How a call that ran out of attempts ended (a step's, a model call's, a tool call's)."""
    where = f"; dead letter {dead_letter}" if dead_letter else ""
    return f"after {attempts} attempt(s): {_kind(error_type)}{message}{where}"


# -- what kind of failure: the retry loops (runtime/core/retry.py) and the HTTP API (serve/errors.py) read
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

    @property
    def retry_after_s(self) -> float | None:
        """None here; an error that knows when to try again has a ``retry_after_s`` field."""
        return None


class ConfigError(RaysquadError):
    """Raised when configuration is invalid or names something that does not exist."""


class StoreError(RaysquadError, WithFields):
    """Raised when the Store cannot read or write durable state. Its message is what any caller may
    see (the HTTP API answers it in a 500 body), so it never names where the database is or who
    connects to it; ``detail`` (what the database said, its address) is for the log only and is left
    out of ``str()``."""
    message: str
    detail: str = ""
    template = "{message}"


class TaskNotFound(NotFound, WithFields):
    """Raised when a task id does not exist in the Store."""
    task_id: str
    template = "no task with id {task_id!r}"


class WorkflowNotFound(NotFound, WithFields):
    """Raised when a submission names a workflow that is not loaded."""
    name: str
    known: tuple[str, ...] = ()

    def __str__(self) -> str:
        return f"unknown workflow {self.name!r} (loaded: {_listed(self.known)})"


class InvalidInput(Refused, WithFields):
    """Raised when a workflow's input does not validate against its input model. ``problems`` say
    each as a line; ``details`` the same as objects, ``{loc, msg, type}`` (the HTTP API's shape)."""
    workflow: str
    problems: list[str]
    details: list[dict[str, Any]] | None = None

    def __str__(self) -> str:
        return f"invalid input for workflow {self.workflow!r}: " + "; ".join(self.problems)


class QueueFull(Retryable, WithFields):
    """Raised when a bounded queue refuses an item; nothing already accepted is affected."""
    queue: str
    capacity: int
    retry_after_s: float = 1.0
    template = "queue {queue!r} is full ({capacity} items); try again in {retry_after_s:.1f}s"


# The quotas below are QueueFull (a 429) with arguments of their own: each sets QueueFull's fields
# from them and keeps them, in order, as its ``args``.


class TenantQuotaExceeded(QueueFull):
    """Raised when a tenant's queued tasks already hold its share of the queue (a 429): of input
    bytes (``tenant_queued_bytes``) or of tasks (``tenant_queued_tasks``), as ``limit_name`` says."""

    def __init__(self, tenant: str, queued: int, limit: int, retry_after_s: float = 1.0,
                 limit_name: str = "tenant_queued_bytes") -> None:
        super().__init__(f"tenant {tenant}", limit, retry_after_s)
        self.tenant, self.queued, self.limit_name = tenant, queued, limit_name
        self.args = (tenant, queued, limit, retry_after_s, limit_name)

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
    template = ("task {task_id!r} holds {pending} signals not yet taken ({size} bytes of payload), "
                "and may hold {max_signals} (task_pending_signals) and {max_bytes} bytes "
                "(task_signal_bytes); a signal is taken when the task waits for it, try again later")

    def __init__(self, task_id: str, pending: int, size: int, max_signals: int, max_bytes: int,
                 retry_after_s: float = 10.0) -> None:
        super().__init__(f"signals of task {task_id}", max_signals, retry_after_s)
        self.task_id, self.pending, self.size = task_id, pending, size
        self.max_signals, self.max_bytes = max_signals, max_bytes
        self.args = (task_id, pending, size, max_signals, max_bytes, retry_after_s)


class EventQuotaExceeded(QueueFull):
    """Raised when a tenant already keeps as many events (or bytes of event data) as it may (a
    429): old events are forgotten after the retention period (event_retention_s)."""
    template = ("tenant {tenant!r} keeps {events} events ({size} bytes of data), and may keep "
                "{max_events} ({max_bytes} bytes); old events are forgotten after the retention "
                "period, try again later")

    def __init__(self, tenant: str, events: int, size: int, max_events: int, max_bytes: int,
                 retry_after_s: float = 60.0) -> None:
        super().__init__(f"events of tenant {tenant}", max_events, retry_after_s)
        self.tenant, self.events, self.size = tenant, events, size
        self.max_events, self.max_bytes = max_events, max_bytes
        self.args = (tenant, events, size, max_events, max_bytes, retry_after_s)


class InputTooLarge(Refused, WithFields):
    """Raised when a task's input is larger than ``max_input_bytes`` (a 413)."""
    size: int
    limit: int
    what: str = "the task's input"
    template = "{what} is {size} bytes as JSON; the limit is {limit}"


class PriorityNotAllowed(Refused, WithFields):
    """Raised when a tenant asks for a priority outside the range it may use (a 422)."""
    tenant: str
    priority: int
    low: int
    high: int
    template = "priority {priority} is not allowed: tenant {tenant!r} may use {low} to {high}"


class InvalidName(Refused, WithFields):
    """Raised for an id, key or name that holds a control character (a 422): PostgreSQL refuses
    NUL in text, and the rest break headers and logs."""
    what: str
    reason: str
    template = "{what}: {reason}"


class InvalidCursor(Refused, WithFields):
    """Raised when a page cursor is not one the task list gave out (a 422)."""
    cursor: str

    def __str__(self) -> str:
        return f"cursor {self.cursor[:60]!r} is not one a task list gave out (use its next_cursor)"


class InvalidTransition(Conflict, WithFields):
    """Raised when an operation does not apply to a task in its current status."""
    task_id: str
    status: str
    operation: str
    template = "cannot {operation} task {task_id!r}: it is {status}"


class StepError(RaysquadError, WithFields):
    """Raised when a step failed after all of its attempts; carries the last error's text."""
    step_key: str
    message: str
    error_type: str = ""
    attempts: int = 1

    def __str__(self) -> str:
        return f"step {self.step_key!r} failed " + _gave_up(self.attempts, self.error_type,
                                                            self.message)


class StepTimeout(Retryable, WithFields):
    """Raised inside a step attempt that ran past its timeout."""
    step_key: str
    timeout_s: float
    template = "step {step_key!r} timed out after {timeout_s}s"


class TaskCancelled(RaysquadError, WithFields):
    """Raised in a workflow at its next step boundary after the task was cancelled."""
    task_id: str
    template = "task {task_id!r} was cancelled"


class SignalTimeout(RaysquadError, WithFields):
    """Raised by ``ctx.wait_for_signal`` when no signal of that name arrived within its timeout."""
    task_id: str
    name: str
    timeout_s: float
    template = "task {task_id!r}: no signal {name!r} within {timeout_s}s"


class LeaseLost(Conflict, WithFields):
    """Raised when a worker finds that another owner now holds its task's lease."""
    task_id: str
    owner: str
    template = "lease on task {task_id!r} is no longer held by {owner!r}"


class AgentNotFound(NotFound, WithFields):
    """Raised when a workflow addresses an agent role that is not loaded."""
    role: str
    known: tuple[str, ...] = ()

    def __str__(self) -> str:
        return f"unknown agent role {self.role!r} (loaded: {_listed(self.known)})"


class AgentError(RaysquadError, WithFields):
    """Raised when an agent's handler raised; carries the original error's type and text."""
    role: str
    message: str
    error_type: str = ""

    def __str__(self) -> str:
        return f"agent {self.role!r} failed: {_kind(self.error_type)}{self.message}"


class NoApprovalWaiting(Conflict, WithFields):
    """Raised when a decision names a call the task is not waiting for approval of."""
    task_id: str
    call_id: str
    waiting_for: str
    template = ("task {task_id!r} is not waiting for approval of call {call_id!r} "
                "(waiting for: {waiting_for})")


class ApprovalNeeded(RaysquadError, WithFields):
    """Raised by an agent's call of a tool that requires approval before anyone decided on it: the
    task parks (waiting for ``approval:<call_id>``) until a person approves, denies or edits it."""
    task_id: str
    step_key: str
    call_id: str
    tool: str
    arguments: dict[str, Any]
    template = "task {task_id!r}: the call {call_id!r} of tool {tool!r} waits for approval"


class ToolDenied(Refused, WithFields):
    """Raised in a workflow whose own call of a tool that requires approval was denied (an agent's
    model hears the reason as the call's result instead)."""
    task_id: str
    tool: str
    call_id: str
    reason: str
    template = "task {task_id!r}: the call {call_id!r} of tool {tool!r} was denied: {reason}"


class TokenBudgetExceeded(Refused, WithFields):
    """Raised when a task's model calls used more tokens than its budget; the task fails."""
    task_id: str
    used: int
    budget: int
    template = ("task {task_id!r} used {used} tokens, over its token budget of {budget} "
                "(token_budget on submit, RAYSQUAD_TASK_TOKEN_BUDGET by default)")


class AgentLoopFailed(RaysquadError, WithFields):
    """Raised when an agent's loop cannot reach a final answer: its turns ran out, or the model kept
    calling tools it was not offered or with arguments that do not fit."""
    role: str
    message: str
    template = "agent {role!r} gave no final answer: {message}"


class EngineError(RaysquadError, WithFields):
    """Raised when an LLM engine fails a request."""
    model: str
    message: str
    template = "engine for model {model!r} failed: {message}"


class AnswerDoesNotFit(EngineError):
    """Raised when a model's answer is not JSON that fits the chat's ``response_format``, or names
    a tool it was not offered (an engine that cannot constrain its output; a later try may fit)."""
    template = "model {model!r} answered what does not fit: {message}"


class EngineUnavailable(EngineError, Retryable):
    """Raised when a model's upstream kept answering 429 or 5xx, or could not be reached, through
    all of the engine's own attempts: a later try may succeed."""


class ModelFailed(Refused, WithFields):
    """Raised when a model call failed for good: its retries ran out on its model and on each of
    its fallback models (``models``, in the order tried). ``dead_letter`` names its record, which a
    replay runs again (on another model, if asked). A Refused error: the same call would fail the
    same way again, so the step that made it is not retried around it (the task fails, and a replay
    of the letter resumes it)."""
    models: tuple[str, ...]
    message: str
    error_type: str = ""
    attempts: int = 1
    dead_letter: str = ""

    def __str__(self) -> str:
        return f"model call failed on {_listed(self.models)} " + _gave_up(
            self.attempts, self.error_type, self.message, self.dead_letter)


class NotAModelCall(Refused, WithFields):
    """Raised when a replay names a model for a dead letter that is not a model call's."""
    dead_letter: str
    tool: str
    template = ("dead letter {dead_letter!r} is a call of {tool!r}, not a model call: only a model "
                "call's letter is replayed on another model")


class ModelNotFound(NotFound, WithFields):
    """Raised when an LLM call names a model that no engine serves."""
    model: str
    known: tuple[str, ...] = ()

    def __str__(self) -> str:
        return f"no engine serves model {self.model!r} (served: {_listed(self.known)})"


class RuntimeAlreadyRunning(Conflict, WithFields):
    """Raised when a runtime is started in a Ray namespace that already has one."""
    namespace: str
    template = ("a raysquad runtime is already running in Ray namespace {namespace!r}; "
                "`raysquad down` stops it (or set RAYSQUAD_NAMESPACE to run another beside it)")


class StoreInUse(Conflict, WithFields):
    """Raised when another runtime holds the Store (a SQLite file, a PostgreSQL schema) that a
    runtime was to open; ``path`` says which."""
    path: str
    holder: str = ""

    def __str__(self) -> str:
        by = f" ({self.holder})" if self.holder else ""
        return (f"{self.path} is in use by another raysquad runtime{by}; stop that one first "
                "(`raysquad down`), or give this one a Store of its own")


class ClusterStartFailed(Retryable, WithFields):
    """Raised when a local Ray cluster could not be started (its raylet or GCS did not come up)."""
    why: str
    template = "could not start a local Ray cluster: {why}"


class ClusterUnreachable(Retryable, WithFields):
    """Raised when no Ray cluster answers at the address a runtime was to join."""
    address: str
    why: str = ""

    def __str__(self) -> str:
        why = f" ({self.why})" if self.why else ""
        return (f"no Ray cluster answered at {self.address!r}{why}; start one with `ray start "
                "--head`, or give its address with --address or RAYSQUAD_RAY_ADDRESS")


class RuntimeNotRunning(Retryable, WithFields):
    """Raised when a client cannot find a running raysquad runtime."""
    where: str
    template = "no raysquad runtime is running at {where}; start one with `raysquad up`"


class WaitTimeout(RaysquadError, WithFields):
    """Raised by Client.wait when the task did not end within the given time."""
    task_id: str
    timeout_s: float
    status: str
    template = "task {task_id!r} still {status} after {timeout_s}s"


class TaskFailed(RaysquadError, WithFields):
    """Raised by Client.result when the task ended in failure or was cancelled."""
    task_id: str
    status: str
    error: str
    template = "task {task_id!r} {status}: {error}"


class RemoteError(RaysquadError, WithFields):
    """Raised by the HTTP client when the server answers with an error status."""
    status: int
    kind: str
    message: str
    template = "{message} (HTTP {status})"


# -- gates and tools -------------------------------------------------------------------------------


class GateTimeout(Retryable, WithFields):
    """Raised when a gate did not grant passage within the caller's time limit."""
    key: str
    timeout_s: float
    template = "gate {key!r} granted no passage within {timeout_s}s"


class GateRequestTooLarge(Refused, WithFields):
    """Raised when one request asks a gate for more tokens than its whole window allows."""
    key: str
    tokens: int
    limit: int
    template = "a request for {tokens} tokens can never pass gate {key!r}: its window allows {limit}"


class ToolNotFound(NotFound, WithFields):
    """Raised when a tool call names a tool that is not registered."""
    name: str
    known: tuple[str, ...] = ()

    def __str__(self) -> str:
        return f"unknown tool {self.name!r} (registered: {_listed(self.known)})"


class ToolArgsInvalid(Refused, WithFields):
    """Raised when a tool call's arguments do not validate against the tool's signature."""
    name: str
    problems: list[str]

    def __str__(self) -> str:
        return f"invalid arguments for tool {self.name!r}: " + "; ".join(self.problems)


class ToolFailed(RaysquadError, WithFields):
    """Raised to the caller when a tool call failed for good; ``dead_letter`` names its record."""
    name: str
    message: str
    error_type: str = ""
    attempts: int = 1
    dead_letter: str = ""

    def __str__(self) -> str:
        return f"tool {self.name!r} failed " + _gave_up(self.attempts, self.error_type,
                                                        self.message, self.dead_letter)


class AddressRefused(Refused, WithFields):
    """Raised when http_fetch would connect to a private, loopback, link-local or reserved address,
    or to a port that is not allowed. It names the host as the caller gave it, never an address the
    host resolved to (the tenant is not told what is inside; the log has it)."""
    retryable = False
    host: str
    reason: str
    setting: str = "RAYSQUAD_TOOLS__HTTP_ALLOW_NETWORKS"

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


class ResponseTooLarge(Refused, WithFields):
    """Raised when a fetched body exceeds the size cap: as it arrives, and again as it decodes. It
    names the URL without its userinfo and query (``public_url``)."""
    retryable = False
    url: str
    limit: int
    template = "response from {url} exceeds {limit} bytes"

    def __post_init__(self) -> None:
        self.url = public_url(self.url)
        super().__post_init__()


class McpServerUnavailable(Retryable, WithFields):
    """Raised when an MCP server's session cannot be opened (its process does not start, or it
    does not answer in its timeout): worth another try, which starts it again."""
    server: str
    reason: str
    template = "MCP server {server!r} is unavailable: {reason}"


class UpstreamError(Retryable, WithFields):
    """Raised when an upstream service answers 429 or 5xx (busy or failing): worth another try, after
    its Retry-After where it sent one (retry loops cap that at their policy's max_backoff_s). It names
    the URL without its userinfo and query (``public_url``)."""
    url: str
    status: int
    retry_after_s: float | None = None
    template = "{url} answered HTTP {status}"

    def __post_init__(self) -> None:
        self.url = public_url(self.url)
        super().__post_init__()


class QueryRefused(Refused, WithFields):
    """Raised when sql_query is given anything but one read-only statement within its limits (time,
    functions, value size), or no database is set."""
    retryable = False
    reason: str
    template = "query refused: {reason}"


class DeadLetterNotFound(NotFound, WithFields):
    """Raised when a dead letter id does not exist."""
    dead_letter: str
    template = "no dead letter with id {dead_letter!r}"


class ActorUnavailable(Retryable, WithFields):
    """Raised when a part of the control plane stays unreachable past a call's deadline (it is
    restarting, or gone); the call may be tried again later. The HTTP API answers 503."""
    actor: str
    waited_s: float
    retry_after_s: float = 2.0
    template = ("the runtime's {actor!r} actor did not answer for {waited_s:.1f}s (restarting?); "
                "try again in {retry_after_s:.0f}s")


class PoisonTask(RaysquadError, WithFields):
    """The error a task ends with when it crashed its worker (or could not be resumed) too often."""
    task_id: str
    attempts: int
    reason: str
    template = "task {task_id!r} given up after {attempts} failed attempt(s) to run it: {reason}"


class InvalidTopic(Refused, WithFields):
    """Raised for a topic or topic pattern that is not dot-separated words."""
    topic: str
    rule: str

    def __str__(self) -> str:
        return f"bad topic {self.topic[:100]!r}: {self.rule}"


class WebhookSourceNotFound(NotFound, WithFields):
    """Raised for a webhook to a source that RAYSQUAD_WEBHOOKS does not configure."""
    source: str

    def __str__(self) -> str:
        return f"no webhook source {self.source[:100]!r} is configured (RAYSQUAD_WEBHOOKS)"


class WebhookRejected(Refused, WithFields):
    """Raised for a webhook delivery whose signature is missing, wrong or stale."""
    source: str
    why: str
    template = "webhook for {source!r} rejected: {why}"


class InvalidEventData(Refused, WithFields):
    """Raised for event data that is not JSON (NaN, an infinity, a value JSON cannot hold)."""
    topic: str
    problem: str
    template = "bad data for an event on {topic!r}: {problem}"


class EventNotFound(NotFound, WithFields):
    """Raised when a tenant has no event with the id asked for."""
    event_id: str

    def __str__(self) -> str:
        return f"no event with id {self.event_id[:200]!r}"


class InvalidSchedule(Refused, WithFields):
    """Raised for a schedule that cannot run: a bad cron expression, time zone or id."""
    problem: str
    template = "bad schedule: {problem}"


class ScheduleNotFound(NotFound, WithFields):
    """Raised when a tenant has no schedule with the id asked for."""
    schedule_id: str

    def __str__(self) -> str:
        return f"no schedule with id {self.schedule_id[:200]!r}"
