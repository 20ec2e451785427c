"""Models at the boundaries: task records, events, submissions, messages between actors, LLM calls."""

from __future__ import annotations

import base64
import enum
import math
import re
import secrets
import time
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from runtime.core.errors import InvalidCursor, InvalidName

#: What an id, key or name may not hold: the C0 control characters (tab and newline too) and DEL.
#: PostgreSQL refuses NUL in text (SQLite keeps it, so the backends would differ), and the rest
#: break headers, logs and terminals that show the name.
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")


def no_control_characters(value: str) -> str:
    """``value`` unchanged; ValueError (a 422 at a pydantic boundary) if it holds a control
    character."""
    found = CONTROL_CHARACTERS.search(value)
    if found is not None:
        raise ValueError(f"holds the control character U+{ord(found.group()):04X} at "
                         f"{found.start()}; ids, keys and names may not hold U+0000 to U+001F "
                         "or U+007F")
    return value


def check_name(value: str, what: str) -> str:
    """``no_control_characters`` for code outside a pydantic model: InvalidName (a 422)."""
    try:
        return no_control_characters(value)
    except ValueError as e:
        raise InvalidName(what, str(e)) from None


#: A str for ids, keys and names (idempotency keys, event ids and keys, signal names, schedule ids,
#: workflow names, tenants): refused at the model (422) if it holds a control character.
Name = Annotated[str, AfterValidator(no_control_characters)]


def new_task_id() -> str:
    """A task id: 32 hex digits, the first 13 the microseconds since the epoch, the rest random. Ids
    made later sort later, so a new task's rows go at the end of the Store's id indexes instead of
    at random places in them (with a million tasks, random ids made every insert read pages back
    from disk); 76 random bits keep them unguessable and unique."""
    return f"{time.time_ns() // 1000:013x}{secrets.token_hex(10)[:19]}"


class TaskStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    WAITING = "waiting"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def ended(self) -> bool:
        return self in (TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.CANCELLED)


# The event kinds that end a task's log (a retry may start it again).
END_EVENT_KINDS = frozenset(s.value for s in TaskStatus if s.ended)


class Usage(BaseModel):
    model_config = ConfigDict(frozen=True)

    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class SubmitRequest(BaseModel):
    """A request to run a workflow. ``priority``: higher runs first; default 0."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    workflow: Name = Field(min_length=1, max_length=200)
    input: dict[str, Any] = Field(default_factory=dict)
    priority: int = Field(0, ge=-1000, le=1000)
    idempotency_key: Name | None = Field(None, min_length=1, max_length=200)
    tenant: Name = Field("default", min_length=1, max_length=200)
    trace_parent: str | None = Field(None, max_length=200,
                                     description="W3C traceparent the task's spans belong under")
    token_budget: int | None = Field(
        None, ge=1, description="the most tokens (prompt and completion) the task's model calls "
                                "may use, delegations included (default: the runtime's)")


class TaskRecord(BaseModel):
    """A task as the Store holds it."""

    model_config = ConfigDict(frozen=True)

    id: str
    workflow: str
    input: dict[str, Any]
    status: TaskStatus
    priority: int = 0
    tenant: str = "default"
    idempotency_key: str | None = None
    output: Any = None
    error: str | None = None
    runs: int = Field(0, description="how many times a worker has started (or resumed) this task")
    created_at: float
    updated_at: float
    started_at: float | None = None
    finished_at: float | None = None
    owner: str | None = None
    lease_until: float | None = None
    cancel_requested: bool = False
    waiting_for: str | None = Field(None, description="the signal a waiting task is parked on")
    wake_at: float | None = Field(None, description="when a waiting task times out")
    crashes: int = Field(0, description="runs that ended without a word (a worker died, a lease ran out)")
    trace_parent: str | None = Field(None, description="W3C traceparent of its spans' parent")
    token_budget: int | None = Field(None, description="the most tokens its model calls may use")
    usage: dict[str, Usage] = Field(default_factory=dict,
                                    description="tokens used by its model calls, by model")

    @property
    def tokens_used(self) -> int:
        return sum(u.total_tokens for u in self.usage.values())


class TaskSummary(BaseModel):
    """A task as lists show it: its record without its input and output (those can be large; fetch
    one task for them), with the input's size."""

    model_config = ConfigDict(frozen=True)

    id: str
    workflow: str
    status: TaskStatus
    priority: int = 0
    tenant: str = "default"
    idempotency_key: str | None = None
    error: str | None = None
    runs: int = 0
    created_at: float
    updated_at: float
    started_at: float | None = None
    finished_at: float | None = None
    owner: str | None = None
    cancel_requested: bool = False
    waiting_for: str | None = None
    crashes: int = 0
    input_bytes: int = Field(0, description="the size of the task's input as JSON")


class Event(BaseModel):
    """One entry of a task's event log; ``seq`` counts from 1 per task."""

    model_config = ConfigDict(frozen=True)

    task_id: str
    seq: int
    kind: str
    data: dict[str, Any] = Field(default_factory=dict)
    at: float


@dataclass(frozen=True)
class Lease:
    """A claim on a running task: its owner and its fencing token (the task's run number, which each
    claim increments). Every write a runner makes carries it, and the Store refuses the write with
    LeaseLost once another claim has replaced this one, so a stale runner can change nothing."""

    task_id: str
    owner: str
    token: int


class Claim(BaseModel):
    """What a worker gets when it claims a task: the record and every step recorded so far."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    task: TaskRecord
    steps: dict[str, bytes] = Field(default_factory=dict, description="step key -> serialized output")

    @property
    def lease(self) -> Lease:
        return Lease(self.task.id, self.task.owner or "", self.task.runs)


class TopicEvent(BaseModel):
    """An event published on a topic. It is kept in the Store first (an outbox), then delivered at
    least once to each workflow and agent role that subscribes. ``id`` de-duplicates per tenant: a
    publish sent again with the same id is the same event."""

    model_config = ConfigDict(frozen=True)

    id: str
    topic: str
    key: str | None = Field(None, description="groups events for flow control (debounce, one per key)")
    data: Any = None
    tenant: str = "default"
    source: str = Field("client", description="client, http, task:<id>, agent:<role>, webhook:<source>")
    created_at: float
    seq: int = Field(0, description="the Store's order of events (set when it is kept)")


class Schedule(BaseModel):
    """A cron schedule that starts a workflow at each tick (runtime/events/schedules.py).

    ``catch_up``: what a tick that passed while no scheduler ran (a full restart) becomes: ``skip``
    (nothing; the next tick runs) or ``once`` (one run for all that were missed). ``overlap``: what
    a tick does while the last run it started is still active: ``skip`` it, ``allow`` a second
    run, or ``cancel`` the last run and start anew."""

    model_config = ConfigDict(frozen=True)

    id: str
    tenant: str = "default"
    workflow: str
    cron: str
    timezone: str = "UTC"
    input: dict[str, Any] = Field(default_factory=dict)
    catch_up: Literal["skip", "once"] = "skip"
    overlap: Literal["skip", "allow", "cancel"] = "skip"
    paused: bool = False
    next_at: float = Field(description="the next tick, seconds since the epoch")
    last_tick: float | None = None
    last_task_id: str | None = None
    created_at: float
    updated_at: float
    paused_reason: str | None = Field(
        None, description="why the scheduler paused it (a cron with no tick to come, a tick it "
                          "could not start); cleared by a resume or a new definition")


class Delivery(BaseModel):
    """One event on its way to one subscriber (``workflow:<name>`` or ``agent:<role>``);
    ``attempt`` counts from 1, and more than 1 means it may have been delivered before."""

    model_config = ConfigDict(frozen=True)

    event: TopicEvent
    target: str
    attempt: int


@dataclass(frozen=True)
class Route:
    """Where the bus sends an event: a subscriber, the event's key for it, when (a debounce puts it
    later), and whether it replaces the subscriber's pending deliveries for the key."""

    target: str
    key: str
    due_at: float
    supersede: bool = False


class AgentMessage(BaseModel):
    """A message in an agent role's mailbox. Large payload values ride inside as Refs.

    A step's message has a task and a ``reply_to``; an event delivered to a subscribing role has
    ``event`` set instead (no task, no reply), and ``attempt`` > 1 when it may be a redelivery."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    id: str
    role: str
    task_id: str
    step_key: str
    priority: int = 0
    tenant: str = "default"
    payload: Any = None
    reply_to: Any = Field(None, description="the workflow worker's actor handle")
    event: TopicEvent | None = None
    attempt: int = 1
    lease: Lease | None = Field(
        None, description="the task's run that asked: the handler's model and tool calls are "
                          "recorded under its step, fenced by this lease")

    @property
    def redelivered(self) -> bool:
        """This message may have been handled before (at-least-once delivery)."""
        return self.attempt > 1


#: A tool's name as models and OpenAI's API take it.
TOOL_NAME = r"^[A-Za-z0-9_-]{1,64}$"


class ToolCall(BaseModel):
    """A call of a tool the model asked for: ``arguments`` is a JSON object (checked against the
    tool's schema before it runs)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(min_length=1, max_length=200)
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)


class ToolSpec(BaseModel):
    """A tool offered to the model, in OpenAI's function form: a name, what it does, and the JSON
    schema of its arguments (an object)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=TOOL_NAME)
    description: str = ""
    parameters: dict[str, Any] = Field(
        default_factory=lambda: {"type": "object", "properties": {}})


class ResponseFormat(BaseModel):
    """The JSON schema the model's answer must fit (``response_format=`` of a chat)."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    name: str = Field("answer", pattern=TOOL_NAME)
    json_schema: dict[str, Any] = Field(alias="schema")


class ChatMessage(BaseModel):
    """One message of a conversation. An assistant message may carry the tool calls it made (and
    no text); a ``tool`` message is one call's result, naming the call it answers."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    name: str | None = Field(None, description="a tool message: the tool that answered")


ToolChoice = str  # "auto", "required", "none", or the name of an offered tool
TOOL_CHOICES = ("auto", "required", "none")


class ChatRequest(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str
    messages: list[ChatMessage]
    max_tokens: int = Field(128, ge=1, le=32_768)
    temperature: float = Field(0.0, ge=0, le=2)
    priority: int = 0
    tenant: str = "default"
    request_id: str | None = None
    session: str | None = Field(
        None, description="the conversation the request is a turn of (an agent step's task id and "
                          "step key; a workflow's task id): affinity routing sends its turns to "
                          "one replica")
    tools: tuple[ToolSpec, ...] = ()
    tool_choice: ToolChoice = "auto"
    response_format: ResponseFormat | None = None

    def model_post_init(self, context: object) -> None:
        offered = [t.name for t in self.tools]
        if len(set(offered)) != len(offered):
            raise ValueError(f"tools are offered twice under one name: {offered}")
        if self.tool_choice not in TOOL_CHOICES and self.tool_choice not in offered:
            raise ValueError(f"tool_choice {self.tool_choice!r} is none of {list(TOOL_CHOICES)} "
                             f"and no offered tool (offered: {offered})")
        if self.tool_choice == "required" and not self.tools:
            raise ValueError('tool_choice "required" needs tools offered')

    def tool(self, name: str) -> ToolSpec | None:
        """The offered tool of that name."""
        return next((t for t in self.tools if t.name == name), None)

    @property
    def calls_tools(self) -> bool:
        """Whether the model may answer with tool calls."""
        return bool(self.tools) and self.tool_choice != "none"


class Completion(BaseModel):
    """A finished chat completion: text, or the tool calls the model asked for; ``parsed`` is the
    answer checked against the request's ``response_format``."""

    model_config = ConfigDict(frozen=True)

    model: str
    text: str
    usage: Usage
    finish_reason: Literal["stop", "length", "abort", "tool_calls"] = "stop"
    tool_calls: tuple[ToolCall, ...] = ()
    parsed: Any = None
    #: Answered from the Store's memo (no engine ran): its usage is what the answer cost when it
    #: was made, and it is not charged again.
    cached: bool = False

    def __setstate__(self, state: dict[Any, Any]) -> None:
        """A Completion recorded (pickled) before ``cached`` existed reads back as not cached."""
        state.get("__dict__", {}).setdefault("cached", False)
        super().__setstate__(state)


class DeadLetter(BaseModel):
    """A tool call, a model call (``tool`` ``llm:<model>``) or an outbound webhook
    (``webhook:<name>``) that ran out of retries; ``replay`` runs it again."""

    id: str
    tool: str
    args: dict[str, Any]
    error: str
    error_type: str
    attempts: int
    task_id: str | None = None
    step_key: str | None = None
    tenant: str = "default"
    created_at: float
    status: Literal["dead", "replaying", "replayed"] = "dead"
    replayed_at: float | None = Field(None, description="when it was replayed (while replaying: "
                                                        "when its replay began)")
    result: Any = None


def page_cursor(record: TaskRecord | TaskSummary) -> str:
    """Where a page of tasks (newest first) that ended with ``record`` leaves off: an opaque token."""
    return base64.urlsafe_b64encode(f"{record.created_at!r} {record.id}".encode()).decode()


def parse_cursor(cursor: str) -> tuple[float, str]:
    """The (created_at, id) a ``page_cursor`` token holds; InvalidCursor if it holds none."""
    try:
        at, task_id = base64.urlsafe_b64decode(cursor.encode()).decode().split(" ", 1)
        value = float(at)
    except (ValueError, UnicodeError) as e:
        raise InvalidCursor(cursor) from e
    if not math.isfinite(value) or not task_id:
        raise InvalidCursor(cursor)
    return value, task_id
