"""The raysquad HTTP API as a Python client, with ``runtime.Client``'s surface for tasks.

``submit``, ``get``, ``list``, ``events``, ``wait``, ``result``, ``cancel``, ``retry``, ``signal`` and
``workflows`` take the same arguments and return the same types as over Ray, and so do ``publish``,
``topic_events`` and the schedule methods, so every CLI command works the same with ``--url`` (the
tenant is the API key's).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import httpx

from runtime.core.errors import RaysquadError, RemoteError, TaskFailed, WaitTimeout
from runtime.core.models import (
    END_EVENT_KINDS,
    DeadLetter,
    Event,
    Schedule,
    TaskRecord,
    TaskStatus,
    TaskSummary,
    TopicEvent,
)

TaskList = list[TaskSummary]
DeadLetters = list[DeadLetter]
BATCH = 1000  # tasks per POST /v1/tasks:batch, the server's most
SchemaList = list[dict[str, Any]]


class _Events:
    """The HTTP client's events and schedules (mixed into HttpClient)."""

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        raise NotImplementedError

    def publish(self, topic: str, data: Any = None, *, key: str | None = None,
                id: str | None = None) -> TopicEvent:  # noqa: A002 - the API's name
        body = {"data": data, **({"key": key} if key else {}), **({"id": id} if id else {})}
        return TopicEvent(**self._call("POST", f"/v1/events/{_path(topic)}", json=body))

    def topic_events(self, topic: str | None = None, limit: int = 100) -> list[TopicEvent]:
        params: dict[str, Any] = {"limit": min(limit, 500), **({"topic": topic} if topic else {})}
        return [TopicEvent(**e) for e in self._call("GET", "/v1/events", params=params)["items"]]

    def create_schedule(self, schedule_id: str, workflow: str, cron: str, *,
                        timezone: str = "UTC", input: dict[str, Any] | None = None,  # noqa: A002
                        catch_up: str = "skip", overlap: str = "skip",
                        paused: bool = False) -> Schedule:
        body = {"id": schedule_id, "workflow": workflow, "cron": cron, "timezone": timezone,
                "input": input or {}, "catch_up": catch_up, "overlap": overlap, "paused": paused}
        return Schedule(**self._call("POST", "/v1/schedules", json=body))

    def schedules(self) -> list[Schedule]:
        """All of them, page by page."""
        out: list[Schedule] = []
        while True:
            params = {"limit": 1000, **({"cursor": out[-1].id} if out else {})}
            page = [Schedule(**s) for s in self._call("GET", "/v1/schedules", params=params)]
            out += page
            if len(page) < 1000:
                return out

    def schedule(self, schedule_id: str) -> Schedule:
        return Schedule(**self._call("GET", f"/v1/schedules/{_path(schedule_id)}"))

    def pause_schedule(self, schedule_id: str) -> Schedule:
        return Schedule(**self._call("POST", f"/v1/schedules/{_path(schedule_id)}/pause"))

    def resume_schedule(self, schedule_id: str) -> Schedule:
        return Schedule(**self._call("POST", f"/v1/schedules/{_path(schedule_id)}/resume"))

    def delete_schedule(self, schedule_id: str) -> None:
        self._call("DELETE", f"/v1/schedules/{_path(schedule_id)}")


class HttpClient(_Events):
    def __init__(self, url: str, api_key: str | None = None, timeout_s: float = 30.0) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout_s)

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        if method != "GET" and kwargs.get("json") is None:
            # A server without API keys takes a state-changing request only as JSON, bodiless too.
            kwargs["headers"] = {"Content-Type": "application/json", **kwargs.get("headers", {})}
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as e:
            raise RemoteError(0, "ConnectionError", f"cannot reach {self._http.base_url}: {e}") from None
        if response.status_code >= 400:
            raise _error(response)
        return response.json() if response.content else None

    def submit(self, workflow: str, input: dict[str, Any] | None = None, *, priority: int = 0,
               idempotency_key: str | None = None) -> TaskRecord:
        body = {"workflow": workflow, "input": input or {}, "priority": priority,
                "idempotency_key": idempotency_key}
        return _record(self._call("POST", "/v1/tasks", json=body))

    def submit_many(self, tasks: Iterable[Mapping[str, Any]]) -> list[TaskRecord | RaysquadError]:
        """Queue many tasks, 1,000 to a request (``POST /v1/tasks:batch``, one Store transaction
        each); one answer per task, in order: its record, or a ``RemoteError`` with the status
        that refused it. Each task is a mapping with ``submit``'s names (``workflow``, ``input``,
        ``priority``, ``idempotency_key``)."""
        bodies = [{k: v for k, v in t.items() if v is not None} for t in tasks]
        outcomes: list[TaskRecord | RaysquadError] = []
        for start in range(0, len(bodies), BATCH):
            chunk = bodies[start:start + BATCH]
            reply = self._call("POST", "/v1/tasks:batch", json={"tasks": chunk})
            for body, item in zip(chunk, reply["items"], strict=True):
                outcome = _batch_outcome(body, item)
                outcomes.append(self.get(outcome) if isinstance(outcome, str) else outcome)
        return outcomes

    def get(self, task_id: str) -> TaskRecord:
        return _record(self._call("GET", f"/v1/tasks/{_path(task_id)}"))

    def list(self, status: TaskStatus | str | None = None, workflow: str | None = None,
             limit: int = 100, cursor: str | None = None) -> TaskList:
        params: dict[str, Any] = {"limit": min(limit, 500)}
        if cursor:
            params["cursor"] = cursor
        if status:
            params["status"] = TaskStatus(status).value
        if workflow:
            params["workflow"] = workflow
        page = self._call("GET", "/v1/tasks", params=params)
        return [_summary(item) for item in page["items"]]

    def wait(self, task_id: str, timeout_s: float | None = None) -> TaskRecord:
        """Block until the task ends (following its event stream) and return its record."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            record = self.get(task_id)
            if record.status.ended:
                return record
            if deadline is not None and time.monotonic() > deadline:
                raise WaitTimeout(task_id, timeout_s or 0, record.status.value)
            for event in self.events(task_id):
                if event.kind in END_EVENT_KINDS or (
                        deadline is not None and time.monotonic() > deadline):
                    break

    def result(self, task_id: str, timeout_s: float | None = None) -> Any:
        record = self.wait(task_id, timeout_s)
        if record.status is not TaskStatus.SUCCEEDED:
            raise TaskFailed(task_id, record.status.value, record.error or "")
        return record.output

    def cancel(self, task_id: str) -> TaskRecord:
        return _record(self._call("POST", f"/v1/tasks/{_path(task_id)}/cancel"))

    def retry(self, task_id: str) -> TaskRecord:
        return _record(self._call("POST", f"/v1/tasks/{_path(task_id)}/retry"))

    def signal(self, task_id: str, name: str, payload: Any = None) -> TaskRecord:
        return _record(self._call("POST", f"/v1/tasks/{_path(task_id)}/signals/{_path(name)}",
                                  json=payload))

    def decide(self, task_id: str, call_id: str, decision: str, reason: str | None = None,
               arguments: dict[str, Any] | None = None) -> TaskRecord:
        body = {"decision": decision, "reason": reason, "arguments": arguments}
        return _record(self._call("POST", f"/v1/tasks/{_path(task_id)}/approvals/{_path(call_id)}",
                                  json={k: v for k, v in body.items() if v is not None}))

    def overview(self) -> Any:
        """``GET /v1/overview``: what `raysquad top` shows (an operator's key)."""
        return self._call("GET", "/v1/overview")

    def stats(self, window_s: int = 900, bucket_s: int = 60) -> Any:
        """``GET /v1/stats``: the key's tenant's tasks by status and their throughput."""
        return self._call("GET", "/v1/stats", params={"window_s": window_s, "bucket_s": bucket_s})

    def processes(self, dead: bool = False) -> Any:
        """``GET /v1/actors``: every process of the runtime (an operator's key), as a list of
        ``{name, kind, role, replica, pid, node, state, restarts, hosts}``."""
        return self._call("GET", "/v1/actors", params={"dead": dead})["actors"]

    def dead_letters(self, status: str | None = None, tool: str | None = None,
                     limit: int = 100) -> DeadLetters:
        """``GET /v1/dead-letters``: the key's tenant's calls that ran out of retries, newest
        first (secrets shown as "[redacted]")."""
        params = {k: v for k, v in (("status", status), ("tool", tool)) if v is not None}
        page = self._call("GET", "/v1/dead-letters", params={**params, "limit": min(limit, 500)})
        return [DeadLetter.model_validate(letter) for letter in page]

    def replay(self, letter_id: str, model: str | None = None) -> DeadLetter:
        """``POST /v1/dead-letters/{id}/replay``: run its call again (a model call's on ``model``
        if given)."""
        return DeadLetter.model_validate(self._call(
            "POST", f"/v1/dead-letters/{_path(letter_id)}/replay",
            json={"model": model} if model else None))

    def workflows(self) -> SchemaList:
        return self._call("GET", "/v1/workflows")

    def events(self, task_id: str, after: int = 0, follow: bool = True) -> Iterator[Event]:
        """The task's events from its SSE stream, until the task ends (the stream always follows;
        ``follow`` is accepted for the same signature as over Ray). A stream the server ends
        before the task does (streams have a maximum length) is opened again from the last event."""
        while True:
            got = False
            for event in self._stream_once(task_id, after):
                got = True
                after = event.seq
                yield event
                if event.kind in END_EVENT_KINDS:
                    return
            if not got:  # nothing more, and the server closed: the task has ended
                return

    def _stream_once(self, task_id: str, after: int) -> Iterator[Event]:
        headers = {"Last-Event-ID": str(after)} if after else {}
        try:
            with self._http.stream("GET", f"/v1/tasks/{_path(task_id)}/events", headers=headers,
                                   timeout=httpx.Timeout(30.0, read=None)) as response:
                if response.status_code >= 400:
                    response.read()
                    raise _error(response)
                data: list[str] = []
                for line in response.iter_lines():
                    if line.startswith("data:"):
                        data.append(line[5:].strip())
                    elif not line and data:
                        body = json.loads("\n".join(data))
                        data = []
                        seq, kind, at = body.pop("seq"), body.pop("kind"), body.pop("at")
                        yield Event(task_id=task_id, seq=seq, kind=kind, at=at, data=body)
        except httpx.HTTPError as e:
            raise RemoteError(0, "ConnectionError", f"event stream broke: {e}") from None


def _error(response: httpx.Response) -> RemoteError:
    try:
        detail = response.json()["error"]
        return RemoteError(response.status_code, detail["type"], detail["message"])
    except (ValueError, KeyError, TypeError):
        return RemoteError(response.status_code, "HTTPError", response.text[:200])


def _batch_outcome(body: dict[str, Any], item: dict[str, Any]) -> TaskRecord | RaysquadError | str:
    """A batch item's answer as ``submit_many`` returns it: a new task's record as it was sent (the
    reply carries its id and ``created_at``), the error that refused it, or, for an idempotency
    key's earlier task (200), its id (read with ``get``)."""
    if item["status"] >= 300:
        error = item.get("error") or {}
        return RemoteError(item["status"], error.get("type", "HTTPError"), error.get("message", ""))
    if item["status"] != 202:
        return str(item["id"])
    return TaskRecord(id=item["id"], workflow=body["workflow"], input=body.get("input", {}),
                      status=TaskStatus.QUEUED, priority=body.get("priority", 0),
                      idempotency_key=body.get("idempotency_key"), created_at=item["created_at"],
                      updated_at=item["created_at"])


def _record(view: dict[str, Any]) -> TaskRecord:
    fields = {k: v for k, v in view.items() if k in TaskRecord.model_fields}
    fields.setdefault("updated_at", view.get("finished_at") or view["created_at"])
    return TaskRecord(**fields)


def _summary(view: dict[str, Any]) -> TaskSummary:
    fields = {k: v for k, v in view.items() if k in TaskSummary.model_fields}
    fields.setdefault("updated_at", view.get("finished_at") or view["created_at"])
    return TaskSummary(**fields)


def _path(segment: str) -> str:
    """A value as one URL path segment."""
    from urllib.parse import quote

    return quote(segment, safe="")
