"""The HTTP API: a FastAPI app served by Ray Serve.

A submission is validated here (against the runtime's workflow catalogue) and admitted and persisted
by the Store before the 202 goes out; everything else reads the Store. Every task route is scoped to
the caller's tenant: another tenant's task is a 404.
"""


import asyncio
import json
import math
import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any, Literal

from fastapi import Body, FastAPI, Header, HTTPException, Path, Query, Response
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from ray import serve
from sse_starlette.sse import EventSourceResponse
from starlette.routing import Route

from runtime.client.client import MAX_BATCH, AsyncClient
from runtime.client.ops import AsyncOps
from runtime.core import tracing
from runtime.core.config import GateLimits, Settings
from runtime.core.errors import DeadLetterNotFound, TaskNotFound, public_url
from runtime.core.models import (
    END_EVENT_KINDS,
    DeadLetter,
    Event,
    Name,
    SubmitRequest,
    TaskRecord,
    TaskStatus,
    TaskSummary,
    Usage,
    page_cursor,
)
from serve import auth, errors
from serve import events as events_http
from serve import processes as processes_http
from serve import status as status_page
from serve.deps import BODY_ERRORS, Admin, ErrorDetail, Tenant, admin_of, responses
from serve.mcp import McpEndpoint

app = FastAPI(
    title="raysquad", version="0.1.0",
    description="Durable multi-agent workflows on Ray: submit tasks, follow their events, signal them.",
    # No /docs or /redoc: FastAPI's pages load their scripts from a CDN, on the origin where the
    # status page keeps its API key. /openapi.json stays (any OpenAPI viewer reads it).
    docs_url=None, redoc_url=None,
)
errors.install(app)
app.add_middleware(errors.BodyGuard)
app.add_middleware(auth.NoKeyGuard)  # the outermost: before any body is read


def _openapi() -> dict[str, Any]:
    """The OpenAPI document, without the empty ``example`` that every field gains when Serve's ingress
    pickles the app (FastAPI's "no example" marker does not survive the round trip)."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, description=app.description,
                             routes=app.routes)
        for operations in schema.get("paths", {}).values():
            for op in operations.values():
                for param in op.get("parameters", []):
                    param.pop("example", None)
                    param.get("schema", {}).pop("example", None)
                for content in op.get("requestBody", {}).get("content", {}).values():
                    content.pop("example", None)
        app.openapi_schema = schema
    return app.openapi_schema


app.openapi = _openapi  # type: ignore[method-assign]  # FastAPI's documented override

MAX_SEQ = 10**18


def _json_int(value: Any) -> Any:
    """An integer as JSON Schema has it: ``5`` or ``5.0``, never ``true`` or ``"5"`` (which pydantic's
    lax mode would take)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("must be an integer")
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError("must be an integer")
        return int(value)
    return value


JsonInt = Annotated[int, BeforeValidator(_json_int)]


class SubmitBody(BaseModel):
    """A task to run. ``priority``: higher runs first."""

    model_config = ConfigDict(extra="forbid")

    workflow: Name = Field(min_length=1, max_length=200)
    input: dict[str, Any] = Field(default_factory=dict)
    priority: JsonInt = Field(0, ge=-1000, le=1000, description=(
        "higher runs first; a tenant may use only the range configured for it (default 0 to 10): "
        "outside it, 422"))
    idempotency_key: Name | None = Field(None, min_length=1, max_length=200)
    token_budget: JsonInt | None = Field(
        None, ge=1, le=10**12, description="the most tokens the task's model calls may use "
                                           "(default: the runtime's task_token_budget)")


class BatchBody(BaseModel):
    """Up to 1,000 tasks, admitted in one Store transaction."""

    model_config = ConfigDict(extra="forbid")

    tasks: list[SubmitBody] = Field(min_length=1, max_length=MAX_BATCH)


class BatchItem(BaseModel):
    status: int = Field(description=(
        "202: queued; 200: the idempotency key's first task; a 4xx: refused, nothing written"))
    id: str | None = Field(None, description="the task (absent when refused)")
    created_at: float | None = Field(None, description="when the task was first submitted")
    error: ErrorDetail | None = Field(None, description="why it was refused")


class BatchReply(BaseModel):
    accepted: int = Field(description="items answered 202 or 200")
    refused: int = Field(description="items answered with a 4xx")
    items: list[BatchItem] = Field(description="one per task, in the order sent")


class ApprovalBody(BaseModel):
    """A person's decision on a tool call that waits for approval."""

    model_config = ConfigDict(extra="forbid")

    decision: Literal["approve", "deny"]
    reason: str | None = Field(None, max_length=2000, description="told to the model on a deny")
    arguments: dict[str, Any] | None = Field(
        None, description="an approval's replacement for the call's arguments")


class ReplayBody(BaseModel):
    """How to run a dead letter again: a model call's, on another model."""

    model_config = ConfigDict(extra="forbid")

    model: Name | None = Field(None, min_length=1, max_length=200, description=(
        "a model call's letter runs on this model (an engine must serve it; else 404), not on "
        "the models it had; any other letter answers 400"))


class TaskView(BaseModel):
    id: str
    workflow: str
    status: TaskStatus
    priority: int
    input: dict[str, Any]
    output: Any = None
    error: str | None = None
    runs: int
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    waiting_for: str | None = None
    cancel_requested: bool = False
    token_budget: int | None = None
    usage: dict[str, Usage] = Field(default_factory=dict, description="tokens used, by model")
    links: dict[str, str]

    @classmethod
    def of(cls, r: TaskRecord) -> "TaskView":
        return cls(**task_fields(r))


def task_fields(r: TaskRecord) -> dict[str, Any]:
    """A task as the API shows it: TaskView's fields, in its order, as JSON-ready values."""
    return {
        "id": r.id, "workflow": r.workflow, "status": r.status.value, "priority": r.priority,
        "input": r.input, "output": r.output, "error": r.error, "runs": r.runs,
        "created_at": r.created_at, "started_at": r.started_at, "finished_at": r.finished_at,
        "waiting_for": r.waiting_for, "cancel_requested": r.cancel_requested,
        "token_budget": r.token_budget,
        "usage": {model: u.model_dump() for model, u in r.usage.items()},
        "links": task_links(r.id),
    }


def task_links(task_id: str) -> dict[str, str]:
    base = f"/v1/tasks/{task_id}"
    return {"self": base, "result": f"{base}/result", "events": f"{base}/events",
            "cancel": f"{base}/cancel", "retry": f"{base}/retry"}


STREAM_PING_S = 15


class StreamSlots:
    """The event streams this replica holds open, per tenant and in all. A stream holds one of the
    replica's request slots for as long as it lasts; both limits sit below the replica's
    ``max_ongoing_requests``, so streams never take the slots other requests need."""

    def __init__(self, per_tenant: int, total: int) -> None:
        self.per_tenant = per_tenant
        self.total = total
        self.open_by_tenant: Counter[str] = Counter()

    def open(self, tenant: str) -> Callable[[], None]:
        """Take a slot for ``tenant`` (HTTPException 429 if none is free); returns its release."""
        if self.open_by_tenant[tenant] >= self.per_tenant:
            raise HTTPException(429, f"tenant {tenant!r} has {self.per_tenant} event streams open, "
                                     "the most it may; close one first",
                                headers={"Retry-After": "5"})
        if sum(self.open_by_tenant.values()) >= self.total:
            raise HTTPException(429, f"this server holds {self.total} event streams open, the most "
                                     "it may; try again shortly", headers={"Retry-After": "5"})
        self.open_by_tenant[tenant] += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.open_by_tenant[tenant] -= 1
                if self.open_by_tenant[tenant] <= 0:
                    del self.open_by_tenant[tenant]

        return release


class CountedEventStream(EventSourceResponse):
    """An SSE response that gives its stream slot back however it ends (done, or the client gone)."""

    def __init__(self, content: AsyncIterator[dict[str, Any]], release: Callable[[], None],
                 **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self._release = release

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()


_SECRET_NAME = re.compile(r"auth|token(?!s)|secret|passw|api[_-]?key|cookie|credential|signature",
                          re.IGNORECASE)
REDACTED = "[redacted]"


def redacted(letter: DeadLetter) -> DeadLetter:
    """A dead letter as a tenant sees it: the values of headers and of arguments named like
    secrets (at any depth) replaced, since a workflow may have added credentials to a call, and
    URLs without their userinfo and query (``public_url``), in its arguments and in a replay's
    result. The Store keeps the call whole, for replay."""

    def scrub(value: Any, secret: bool) -> Any:
        if isinstance(value, dict):
            return {k: scrub(v, secret or (isinstance(k, str) and bool(_SECRET_NAME.search(k))))
                    for k, v in value.items()}
        if isinstance(value, list):
            return [scrub(v, secret) for v in value]
        if secret:
            return REDACTED
        if isinstance(value, str) and value[:8].lower().startswith(("http://", "https://")):
            return public_url(value)
        return value

    args = {k: scrub(v, k == "headers" or bool(_SECRET_NAME.search(k)))
            for k, v in letter.args.items()}
    return letter.model_copy(update={"args": args, "result": scrub(letter.result, False)})


def _json(value: Any) -> bytes:
    """JSON as FastAPI's JSONResponse renders it. (Defined above ``Ingress``: ``serve.ingress``
    pickles the class where it is declared, with the globals that exist by then.)"""
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


class TaskSummaryView(BaseModel):
    """A task in a list: without its input and output (GET the task for those)."""

    id: str
    workflow: str
    status: TaskStatus
    priority: int
    input_bytes: int
    error: str | None = None
    runs: int
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    waiting_for: str | None = None
    cancel_requested: bool = False
    links: dict[str, str]

    @classmethod
    def of(cls, r: TaskSummary) -> "TaskSummaryView":
        return cls(id=r.id, workflow=r.workflow, status=r.status, priority=r.priority,
                   input_bytes=r.input_bytes, error=r.error, runs=r.runs,
                   created_at=r.created_at, started_at=r.started_at, finished_at=r.finished_at,
                   waiting_for=r.waiting_for, cancel_requested=r.cancel_requested,
                   links=task_links(r.id))


class TaskPage(BaseModel):
    items: list[TaskSummaryView]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next page; null at the end")


class HistoryPage(BaseModel):
    items: list[dict[str, Any]] = Field(description=(
        "the task's events, oldest first, each as the event stream's data: "
        "{seq, kind, at, ...the event's own fields}"))
    next_after: int | None = Field(description="pass as ?after= for the next page; null at the end")


class ThroughputView(BaseModel):
    since: float = Field(description="when the first bucket begins")
    bucket_s: int
    finished: list[int] = Field(description=(
        "tasks that ended (succeeded, failed or cancelled) in each bucket, oldest first; the last "
        "bucket reaches now"))


class StatsView(BaseModel):
    counts: dict[TaskStatus, int] = Field(description="the tenant's tasks by status, every status")
    throughput: ThroughputView
    at: float = Field(description="when it was counted")


#: The most buckets ``GET /v1/stats`` draws (the Store allows more: see ``MAX_STATS_BUCKETS``).
STATS_MAX_BUCKETS = 500
#: A page of ``GET /v1/tasks/{id}/history``: the most events the Store answers at once.
HISTORY_PAGE = 1000


def event_data(event: Event) -> dict[str, Any]:
    """An event as the API shows it (the SSE stream's data, the history's items)."""
    return {"seq": event.seq, "kind": event.kind, "at": event.at, **event.data}


class ResultView(BaseModel):
    id: str
    status: TaskStatus
    output: Any = None
    error: str | None = None


class ReadinessView(BaseModel):
    status: Literal["ready", "down"]
    down: list[str] = Field(description="the actors of the control plane that do not answer")
    parts: dict[str, str] = Field(description="every control-plane actor: ok, or why not")


class WorkflowView(BaseModel):
    name: str
    description: str
    input_schema: dict[str, Any]
    output_schema: dict[str, Any]


# OpenAPI links from a submit's reply to the routes of the task it created (clients and fuzzers
# follow them from one call to the next).
TASK_LINKS = {
    name: {"operationId": op, "parameters": {"task_id": "$response.body#/id"}}
    for name, op in (("get", "getTask"), ("result", "getResult"), ("events", "streamEvents"),
                     ("cancel", "cancelTask"), ("retry", "retryTask"))
}


app.include_router(events_http.router)
app.include_router(processes_http.router)
status_page.install(app, admin_of)
# MCP (streamable HTTP): every workflow a tool, with the same keys and tenants (serve/mcp.py).
# A route, not a mount: POST /mcp itself (a mount would redirect it to /mcp/).
app.router.routes.append(Route("/mcp", McpEndpoint(app.state), methods=["GET", "POST", "DELETE"]))
# ASCII only: JSON Schema's \w is [A-Za-z0-9_], Python's matches any letter.
GateKey = Annotated[str, Path(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.:@/*-]+$")]


@serve.deployment(max_ongoing_requests=256)
@serve.ingress(app)
class Ingress:
    def __init__(self, settings: Settings) -> None:
        app.state.settings = settings
        tracing.configure(settings.tracing)
        self.streams = StreamSlots(settings.max_streams_per_tenant, settings.max_streams)
        self.client = AsyncClient.from_named_actors(settings.namespace, settings)
        app.state.client = self.client  # for the routes outside this class (serve/events.py)
        self.ops = AsyncOps(settings.namespace)

    async def _task(self, task_id: str, tenant: str) -> TaskRecord:
        record = await self.client.get(task_id)
        if record.tenant != tenant:
            raise TaskNotFound(task_id)  # another tenant's task does not exist for this caller
        return record

    @app.post("/v1/tasks", status_code=202, response_model=TaskView, operation_id="submitTask",
              responses={**responses(404, 429, *BODY_ERRORS),
                         202: {"links": TASK_LINKS},
                         200: {"model": TaskView, "description": "the idempotency key's first task",
                               "links": TASK_LINKS}})
    async def submit(self, body: SubmitBody, tenant: Tenant,
                     traceparent: Annotated[str | None, Header(max_length=200)] = None) -> Response:
        """Queue a task and answer at once. The same idempotency key returns the first task (200).
        With tracing on, the task's spans make a new trace, linked to the caller's
        ``traceparent`` if it sends a valid one."""
        with tracing.root_span(f"submit {body.workflow}", traceparent,
                               **{"raysquad.workflow": body.workflow}):
            record, created = await self.client.submit_request(
                SubmitRequest(workflow=body.workflow, input=body.input, priority=body.priority,
                              idempotency_key=body.idempotency_key, tenant=tenant,
                              trace_parent=tracing.current_traceparent(),
                              token_budget=body.token_budget))
        # The hot path: the body is built once from the Store's record, not validated again as a
        # TaskView on the way out (response_model still documents it).
        return Response(_json(task_fields(record)), 202 if created else 200,
                        {"Location": f"/v1/tasks/{record.id}"}, media_type="application/json")

    @app.post("/v1/tasks:batch", response_model=BatchReply, operation_id="submitTasks",
              responses=responses(429, *BODY_ERRORS))
    async def submit_batch(self, body: BatchBody, tenant: Tenant,
                           traceparent: Annotated[str | None, Header(max_length=200)] = None
                           ) -> Response:
        """Queue up to 1,000 tasks in one Store transaction. Each gets its own answer, in order:
        202 (queued), 200 (its idempotency key's first task) or the 4xx a single submit of it would
        have got, with nothing written for it. The request as a whole is refused (422) only when
        it does not match this schema."""
        with tracing.root_span("submit batch", traceparent,
                               **{"raysquad.batch_size": len(body.tasks)}):
            parent = tracing.current_traceparent()
            outcomes = await self.client.submit_requests([
                SubmitRequest(workflow=t.workflow, input=t.input, priority=t.priority,
                              idempotency_key=t.idempotency_key, tenant=tenant,
                              trace_parent=parent, token_budget=t.token_budget)
                for t in body.tasks])
        items: list[dict[str, Any]] = []
        for outcome in outcomes:
            if isinstance(outcome, tuple):
                record, created = outcome
                items.append({"status": 202 if created else 200, "id": record.id,
                              "created_at": record.created_at})
            else:
                status, detail = errors.answer(outcome)
                items.append({"status": status, "error": detail})
        accepted = sum(1 for item in items if item["status"] < 300)
        return Response(_json({"accepted": accepted, "refused": len(items) - accepted,
                               "items": items}), 200, media_type="application/json")

    @app.get("/v1/tasks", response_model=TaskPage, responses=responses(), operation_id="listTasks")
    async def list_tasks(self, tenant: Tenant, status: TaskStatus | None = None,
                         workflow: Annotated[str | None, Query(max_length=200)] = None,
                         limit: Annotated[int, Query(ge=1, le=500)] = 50,
                         cursor: Annotated[str | None, Query(max_length=200,
                                                             pattern=r"^[A-Za-z0-9_=-]+$")] = None
                         ) -> TaskPage:
        """Tasks of the caller's tenant, newest first, a page at a time (follow ``next_cursor``);
        without inputs and outputs, which may be large (GET a task for them)."""
        records = await self.client.list(status, workflow, tenant, limit + 1, cursor)
        page = records[:limit]
        return TaskPage(items=[TaskSummaryView.of(r) for r in page],
                        next_cursor=page_cursor(page[-1]) if len(records) > limit else None)

    @app.get("/v1/stats", response_model=StatsView, responses=responses(), operation_id="getStats")
    async def stats(self, tenant: Tenant,
                    window_s: Annotated[int, Query(ge=1, le=86400)] = 900,
                    bucket_s: Annotated[int, Query(ge=1, le=3600)] = 60) -> StatsView:
        """The caller's tasks by status, and how many ended in each ``bucket_s`` of the last
        ``window_s`` (at most 500 buckets). Buckets start on multiples of ``bucket_s``, so
        successive reads line up; the last one reaches now."""
        buckets = math.ceil(window_s / bucket_s)
        if buckets > STATS_MAX_BUCKETS:
            raise HTTPException(422, f"window_s={window_s} in buckets of bucket_s={bucket_s} is "
                                     f"{buckets} buckets; the most is {STATS_MAX_BUCKETS}: make "
                                     "bucket_s larger or window_s smaller")
        since = (math.floor(time.time() / bucket_s) + 1 - buckets) * bucket_s
        stats = await self.client.task_stats(tenant, since, bucket_s)
        return StatsView(counts=stats.counts, at=stats.at, throughput=ThroughputView(
            since=stats.since, bucket_s=bucket_s, finished=stats.finished))

    @app.get("/v1/tasks/{task_id}", response_model=TaskView, responses=responses(404),
             operation_id="getTask")
    async def get_task(self, task_id: str, tenant: Tenant) -> TaskView:
        return TaskView.of(await self._task(task_id, tenant))

    @app.get("/v1/tasks/{task_id}/result", response_model=ResultView, operation_id="getResult",
             responses={**responses(404), 202: {"model": ResultView, "description": "not ended yet"},
                        409: {"model": ResultView, "description": "failed or cancelled"}})
    async def result(self, task_id: str, tenant: Tenant, response: Response) -> ResultView:
        """200 with the output once succeeded, 202 while not ended, 409 with the error otherwise."""
        r = await self._task(task_id, tenant)
        if r.status is TaskStatus.SUCCEEDED:
            return ResultView(id=r.id, status=r.status, output=r.output)
        if not r.status.ended:
            response.status_code = 202
            return ResultView(id=r.id, status=r.status)
        response.status_code = 409
        return ResultView(id=r.id, status=r.status, error=r.error or r.status.value)

    @app.get("/v1/tasks/{task_id}/events", operation_id="streamEvents", responses={
        **responses(404, 400), 200: {"content": {"text/event-stream": {}},
                                 "description": "Server-Sent Events; ends when the task ends"}})
    async def events(self, task_id: str, tenant: Tenant,
                     last_event_id: Annotated[str | None, Header()] = None,
                     after: Annotated[int, Query(ge=0, le=MAX_SEQ)] = 0) -> EventSourceResponse:
        """The task's events as SSE, from after ``Last-Event-ID`` (or ``after``), until it ends.

        A stream lasts at most ``stream_max_s``; the client then reconnects with ``Last-Event-ID``.
        Each tenant may hold ``max_streams_per_tenant`` streams open (429 past it)."""
        await self._task(task_id, tenant)
        start = after
        if last_event_id is not None:
            if not re.fullmatch(r"[0-9]{1,18}", last_event_id):
                raise HTTPException(400, f"Last-Event-ID must be an event seq (digits), not "
                                         f"{last_event_id[:40]!r}")
            start = int(last_event_id)
        release = self.streams.open(tenant)
        return CountedEventStream(self._stream(task_id, start), release, ping=STREAM_PING_S)

    async def _stream(self, task_id: str, after: int) -> AsyncIterator[dict[str, Any]]:
        settings: Settings = app.state.settings
        ends = time.monotonic() + settings.stream_max_s
        while (left := ends - time.monotonic()) > 0:
            batch = await self.client.wait_events(task_id, after, 0.0)
            if not batch:
                if (await self.client.get(task_id)).status.ended:
                    # Ended, and nothing after ``after``: one more look closes the race, then stop.
                    batch = await self.client.wait_events(task_id, after, 0.0)
                    if not batch:
                        return
                else:
                    batch = await self.client.wait_events(task_id, after, min(10.0, left))
            for event in batch:
                after = event.seq
                yield {"id": str(event.seq), "event": event.kind,
                       "data": json.dumps(event_data(event))}
                if event.kind in END_EVENT_KINDS:
                    return
            await asyncio.sleep(0)
        # The stream's time is up: the client reconnects with Last-Event-ID (EventSource does so
        # by itself, after the ``retry`` delay).
        yield {"comment": "stream length reached; reconnect with Last-Event-ID", "retry": 1000}

    @app.get("/v1/tasks/{task_id}/history", response_model=HistoryPage, responses=responses(404),
             operation_id="getHistory")
    async def history(self, task_id: str, tenant: Tenant,
                      after: Annotated[int, Query(ge=0, le=MAX_SEQ)] = 0,
                      limit: Annotated[int, Query(ge=1, le=HISTORY_PAGE)] = HISTORY_PAGE
                      ) -> HistoryPage:
        """The task's recorded events after seq ``after``, a page at a time (follow
        ``next_after``): what the event stream sends, read at once, for a task that ended as for
        one that runs (whose stream then goes on from the last seq)."""
        await self._task(task_id, tenant)
        batch = await self.client.wait_events(task_id, after, 0.0)
        page = batch[:limit]
        more = len(batch) > limit or len(batch) >= HISTORY_PAGE
        return HistoryPage(items=[event_data(e) for e in page],
                           next_after=page[-1].seq if page and more else None)

    @app.post("/v1/tasks/{task_id}/cancel", response_model=TaskView, operation_id="cancelTask",
              responses=responses(404, 409, *BODY_ERRORS))
    async def cancel(self, task_id: str, tenant: Tenant) -> TaskView:
        """Cancel now if queued or waiting; at the next step boundary if running."""
        await self._task(task_id, tenant)
        return TaskView.of(await self.client.cancel(task_id))

    @app.post("/v1/tasks/{task_id}/retry", response_model=TaskView, operation_id="retryTask",
              responses=responses(404, 409, *BODY_ERRORS))
    async def retry(self, task_id: str, tenant: Tenant) -> TaskView:
        """Run a failed or cancelled task again from its last checkpoint."""
        await self._task(task_id, tenant)
        return TaskView.of(await self.client.retry(task_id))

    @app.post("/v1/tasks/{task_id}/signals/{name}", status_code=202, response_model=TaskView,
              operation_id="signalTask", responses=responses(404, 409, *BODY_ERRORS))
    async def signal(self, task_id: str, name: Annotated[Name, Field(min_length=1, max_length=200)],
                     tenant: Tenant, payload: Annotated[Any, Body()] = None) -> TaskView:
        """Send a signal with a JSON payload; a task waiting for it resumes."""
        await self._task(task_id, tenant)
        return TaskView.of(await self.client.signal(task_id, name, payload))

    @app.post("/v1/tasks/{task_id}/approvals/{call_id}", status_code=202,
              response_model=TaskView, operation_id="decideApproval",
              responses=responses(404, 409, *BODY_ERRORS))
    async def decide(self, task_id: str, call_id: Annotated[Name, Field(min_length=1,
                                                                         max_length=200)],
                     body: ApprovalBody, tenant: Tenant) -> TaskView:
        """Approve, deny (the reason goes back to the model as the tool's result) or edit the
        arguments of a tool call the task is parked on (its ``waiting_for`` is
        ``approval:<call_id>``); 409 if it is not waiting for that call. An approval sent twice
        runs the call once."""
        await self._task(task_id, tenant)
        return TaskView.of(await self.client.decide(task_id, call_id, body.decision, body.reason,
                                                    body.arguments))

    @app.get("/v1/workflows", response_model=list[WorkflowView], responses=responses())
    async def workflows(self, tenant: Tenant) -> list[WorkflowView]:
        return [WorkflowView(**w) for w in await self.client.workflows()]

    # -- tools, gates, dead letters ------------------------------------------------------------

    @app.get("/v1/tools", responses=responses())
    async def tools(self, tenant: Tenant) -> list[dict[str, Any]]:
        """The tools workflows and agents can call: name, description, argument schema, batching."""
        return await self.ops.tools()

    @app.get("/v1/gates", responses=responses(403))
    async def gates(self, admin: Admin) -> dict[str, dict[str, Any]]:
        """Every gate: its limits and state (holdings, the window's use, waiters, grants by tenant)."""
        return await self.ops.gates()

    @app.put("/v1/gates/{key}", responses=responses(403, *BODY_ERRORS))
    async def set_gate(self, key: GateKey, limits: GateLimits, admin: Admin) -> dict[str, Any]:
        """Set a gate's limits now (until the runtime stops; configuration is where lasting limits
        belong). A new key makes a new gate."""
        await self.ops.set_gate(key, limits)
        return (await self.ops.gates())[key]

    @app.delete("/v1/gates/{key}", status_code=204, responses=responses(403, 404))
    async def delete_gate(self, key: GateKey, admin: Admin) -> Response:
        """Remove a gate: its waiters pass at once and later calls pass without asking."""
        if key not in await self.ops.gates():
            raise HTTPException(404, f"no gate {key!r}")
        await self.ops.set_gate(key, None)
        return Response(status_code=204)

    @app.get("/v1/dead-letters", response_model=list[DeadLetter], responses=responses())
    async def dead_letters(self, tenant: Tenant, status: Literal["dead", "replayed"] | None = None,
                           tool: str | None = None,
                           limit: Annotated[int, Query(ge=1, le=500)] = 100) -> list[DeadLetter]:
        """Calls of the caller's tenant that ran out of retries, newest first: tool calls, model
        calls (tool ``llm:<model>``, the request as arguments) and outbound webhooks (header values
        and arguments named like secrets are shown as "[redacted]")."""
        return [redacted(letter) for letter in await self.ops.dead_letters(status, tool, tenant,
                                                                            limit)]

    @app.post("/v1/dead-letters/{letter_id}/replay", response_model=DeadLetter,
              responses=responses(400, 404, *BODY_ERRORS))
    async def replay(self, letter_id: str, tenant: Tenant,
                     body: ReplayBody | None = None) -> DeadLetter:
        """Run a dead letter's call again; on success it is marked replayed with its result, and a
        task that failed at that call resumes past it. A model call's letter runs on the body's
        ``model`` if it names one (``{"model": "m2"}``), else on the models it had."""
        letter = await self.ops.dead_letter(letter_id)
        if letter.tenant != tenant:
            raise DeadLetterNotFound(letter_id)
        return redacted(await self.ops.replay(letter_id, body.model if body else None))

    @app.get("/healthz")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", responses={503: {"description": "a part of the control plane is down",
                                         "model": ReadinessView}})
    async def readyz(self) -> JSONResponse:
        """200 once every part of the control plane answers; 503 naming the parts that do not."""
        parts = await self.client.readiness()
        down = sorted(name for name, state in parts.items() if state != "ok")
        body = {"status": "down" if down else "ready", "down": down, "parts": parts}
        headers = {"Retry-After": "2"} if down else {}
        return JSONResponse(body, status_code=503 if down else 200, headers=headers)
