"""The HTTP routes of the event-driven half: publish an event, list events, see what became of one,
and webhooks from outside systems (Standard Webhooks: ``webhook-id``, ``webhook-timestamp``,
``webhook-signature``; HMAC-SHA256 with one of the source's secrets; a 5-minute replay window, the
scheme's own; the delivery's id as the event id, so a replayed delivery publishes nothing new)."""

# No ``from __future__ import annotations`` here: FastAPI reads the routes' parameter types (the
# tenant dependency among them) as objects.
import json
from typing import Annotated, Any, Literal
from urllib.parse import quote

from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from runtime.core.errors import (
    EventNotFound,
    InvalidCursor,
    ScheduleNotFound,
    WebhookRejected,
    WebhookSourceNotFound,
)
from runtime.core.models import Name, Schedule, TopicEvent
from runtime.events.bus import new_event
from serve.answers import error_body
from serve.deps import BODY_ERRORS, Tenant, client_of, responses, settings_of

TOPIC_PATTERN = r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$"
Topic = Annotated[str, Path(min_length=1, max_length=200, pattern=TOPIC_PATTERN,
                            description="dot-separated words, like docs.new")]
EventId = Annotated[str, Path(min_length=1, max_length=200)]
MAX_SEQ = 2**63 - 1  # the largest integer either store keeps
Source = Annotated[str, Path(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.-]+$")]


class PublishBody(BaseModel):
    """An event: ``data`` is what subscribers get (a triggered workflow's input). ``id`` makes a
    retried publish the same event; ``key`` groups events for flow control."""

    model_config = ConfigDict(extra="forbid")

    id: Name | None = Field(None, min_length=1, max_length=200)
    key: Name | None = Field(None, min_length=1, max_length=200)
    data: Any = None


class EventPage(BaseModel):
    items: list[TopicEvent]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next page; null at the end")


class DeliveryView(BaseModel):
    target: str = Field(description="workflow:<name> or agent:<role>")
    key: str
    attempts: int
    due_at: float
    done_at: float | None = None
    outcome: str | None = Field(None, description="started, handled, superseded, rejected: ...")
    task_id: str | None = Field(None, description="the task a workflow delivery started")


class EventReportView(BaseModel):
    event: TopicEvent
    deliveries: list[DeliveryView]


class ScheduleBody(BaseModel):
    """A cron schedule: a task of ``workflow`` with ``input`` at each tick of ``cron`` (five
    fields, or six with seconds last) in ``timezone``. Sent again with the same ``id``, it replaces
    the schedule's definition."""

    model_config = ConfigDict(extra="forbid")

    id: Name = Field(min_length=1, max_length=200)
    workflow: Name = Field(min_length=1, max_length=200)
    cron: str = Field(min_length=1, max_length=200)
    timezone: str = Field("UTC", min_length=1, max_length=100)
    input: dict[str, Any] = Field(default_factory=dict)
    catch_up: Literal["skip", "once"] = "skip"
    overlap: Literal["skip", "allow", "cancel"] = "skip"
    paused: bool = False


ScheduleId = Annotated[str, Path(min_length=1, max_length=200)]


def _event_reply(event: TopicEvent, new: bool) -> JSONResponse:
    return JSONResponse(event.model_dump(mode="json"), 202 if new else 200,
                        {"Location": f"/v1/events/{quote(event.topic, safe='')}/"
                                     f"{quote(event.id, safe='')}"})


router = APIRouter()


@router.post("/v1/events/{topic}", status_code=202, response_model=TopicEvent,
             operation_id="publishEvent",
             responses={**responses(429, *BODY_ERRORS),
                        200: {"model": TopicEvent, "description": "the id's event, kept before"}})
async def publish_event(topic: Topic, body: PublishBody, tenant: Tenant,
                        request: Request) -> JSONResponse:
    """Publish an event on ``topic``: kept first, then delivered at least once to every
    workflow and agent role that subscribes. 202 when new; 200 with the kept event when its
    ``id`` was published before (nothing new happens)."""
    event = new_event(topic, body.data, key=body.key, event_id=body.id, tenant=tenant,
                      source="http", max_bytes=settings_of(request).max_input_bytes)
    return _event_reply(*await client_of(request).publish_event(event))


@router.get("/v1/events", response_model=EventPage, responses=responses(),
            operation_id="listEvents")
async def list_events(tenant: Tenant, request: Request,
                      topic: Annotated[str | None, Query(max_length=200,
                                                         pattern=TOPIC_PATTERN)] = None,
                      limit: Annotated[int, Query(ge=1, le=500)] = 50,
                      cursor: Annotated[str | None, Query(max_length=19,
                                                          pattern=r"^[0-9]+$")] = None
                      ) -> EventPage:
    """The tenant's published events, newest first, a page at a time."""
    if cursor is not None and int(cursor) > MAX_SEQ:
        raise InvalidCursor(cursor)  # no event has it (a store's integers end at 2**63 - 1)
    events = await client_of(request).topic_events(topic, tenant, limit + 1,
                                                int(cursor) if cursor else None)
    page = events[:limit]
    return EventPage(items=page,
                     next_cursor=str(page[-1].seq) if len(events) > limit else None)


@router.get("/v1/events/{topic}/{event_id:path}", response_model=EventReportView,
            responses=responses(404), operation_id="getEvent")
async def get_event(topic: Topic, event_id: EventId, tenant: Tenant,
                    request: Request) -> EventReportView:
    """An event and what became of it: one delivery per subscriber, with the task it started.
    The id may hold ``/`` (the runtime's own ids do); another topic's event is a 404."""
    event, deliveries = await client_of(request).event_report(event_id, tenant)
    if event.topic != topic:
        raise EventNotFound(event_id)
    return EventReportView(event=event, deliveries=[DeliveryView(**d) for d in deliveries])


@router.post("/v1/webhooks/{source}", status_code=202, response_model=TopicEvent,
             operation_id="receiveWebhook",
             responses={**responses(404, 429, *BODY_ERRORS),
                        200: {"model": TopicEvent, "description": "a delivery received before"}})
async def receive_webhook(source: Source, request: Request) -> JSONResponse:
    """A webhook from the outside system ``source`` (RAYSQUAD_WEBHOOKS), verified by the
    Standard Webhooks scheme and published on its topic with the JSON body as the event's
    data. 401 for a missing, wrong or stale signature; a delivery id seen before is 200 and
    publishes nothing new. No API key: the signature is the caller's credential."""
    config = settings_of(request).webhooks.get(source)
    if config is None:
        raise WebhookSourceNotFound(source)
    body = await request.body()
    headers = dict(request.headers)
    why = "no secret matched"
    for secret in config.secrets:  # each a valid key (runtime/core/config.py checks them)
        try:
            Webhook(secret).verify(body, headers, json_parse=False)
            break
        except WebhookVerificationError as e:
            why = str(e)
    else:
        raise WebhookRejected(source, why.lower())
    try:
        data = json.loads(body)
    except ValueError as e:  # signed by the source, and still not JSON: its mistake
        return error_body(400, "MalformedJSON",
                                 f"the webhook's body is not valid JSON: {e}")
    event = new_event(config.topic, data, key=None,
                      event_id=f"webhook:{source}:{request.headers['webhook-id']}", tenant=config.tenant,
                      source=f"webhook:{source}", max_bytes=settings_of(request).max_input_bytes)
    return _event_reply(*await client_of(request).publish_event(event))


@router.post("/v1/schedules", status_code=201, response_model=Schedule,
             operation_id="putSchedule", responses={**responses(404, *BODY_ERRORS),
                                                    200: {"model": Schedule,
                                                          "description": "replaced"}})
async def put_schedule(body: ScheduleBody, tenant: Tenant, request: Request) -> JSONResponse:
    """Create a schedule (201), or replace the definition of the tenant's schedule with this
    id (200). A bad cron expression, time zone, workflow or input is refused (422, 404)."""
    existed = True
    try:
        await client_of(request).schedule(body.id, tenant)
    except ScheduleNotFound:
        existed = False
    kept = await client_of(request).create_schedule(
        body.id, body.workflow, body.cron, timezone=body.timezone, input=body.input,
        catch_up=body.catch_up, overlap=body.overlap, tenant=tenant, paused=body.paused)
    return JSONResponse(kept.model_dump(mode="json"), 200 if existed else 201,
                        {"Location": f"/v1/schedules/{quote(kept.id, safe='')}"})


@router.get("/v1/schedules", response_model=list[Schedule], responses=responses(),
            operation_id="listSchedules")
async def list_schedules(tenant: Tenant, request: Request,
                         limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                         cursor: Annotated[Name | None, Query(min_length=1, max_length=200)] = None,
                         ) -> list[Schedule]:
    """The tenant's schedules by id, ``limit`` at a time; the next page: ``cursor`` = the
    last id of this one (a page shorter than ``limit`` is the last)."""
    return await client_of(request).schedules(tenant, limit, cursor)


@router.get("/v1/schedules/{schedule_id}", response_model=Schedule, responses=responses(404),
            operation_id="getSchedule")
async def get_schedule(schedule_id: ScheduleId, tenant: Tenant, request: Request) -> Schedule:
    return await client_of(request).schedule(schedule_id, tenant)


@router.post("/v1/schedules/{schedule_id}/pause", response_model=Schedule,
             responses=responses(404), operation_id="pauseSchedule")
async def pause_schedule(schedule_id: ScheduleId, tenant: Tenant,
                         request: Request) -> Schedule:
    return await client_of(request).pause_schedule(schedule_id, tenant)


@router.post("/v1/schedules/{schedule_id}/resume", response_model=Schedule,
             responses=responses(404), operation_id="resumeSchedule")
async def resume_schedule(schedule_id: ScheduleId, tenant: Tenant,
                          request: Request) -> Schedule:
    """Resume from the next tick to come (ticks while paused do not run)."""
    return await client_of(request).resume_schedule(schedule_id, tenant)


@router.delete("/v1/schedules/{schedule_id}", status_code=204, responses=responses(404),
               operation_id="deleteSchedule")
async def delete_schedule(schedule_id: ScheduleId, tenant: Tenant,
                          request: Request) -> Response:
    await client_of(request).delete_schedule(schedule_id, tenant)
    return Response(status_code=204)
