"""A small HTTP client for the raysquad API, used by the CLI's ``--url`` mode.

It offers the calls ``serve.progress.follow`` needs (``get`` and ``events``), so the progress bar
works the same over HTTP (fed by the SSE stream) as over Ray.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx

from runtime.errors import RemoteError
from runtime.models import Event, TaskRecord


class HttpClient:
    def __init__(self, url: str, api_key: str | None = None, timeout_s: float = 30.0) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout_s)

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as e:
            raise RemoteError(0, "ConnectionError", f"cannot reach {self._http.base_url}: {e}") from None
        if response.status_code >= 400:
            raise _error(response)
        return response.json()

    def submit(self, workflow: str, input: dict[str, Any], priority: int = 0,
               idempotency_key: str | None = None) -> TaskRecord:
        body = {"workflow": workflow, "input": input, "priority": priority,
                "idempotency_key": idempotency_key}
        return _record(self._call("POST", "/v1/tasks", json=body))

    def get(self, task_id: str) -> TaskRecord:
        return _record(self._call("GET", f"/v1/tasks/{task_id}"))

    def events(self, task_id: str, after: int = 0, follow: bool = True) -> Iterator[Event]:
        """The task's events from its SSE stream, which ends when the task does."""
        headers = {"Last-Event-ID": str(after)} if after else {}
        try:
            with self._http.stream("GET", f"/v1/tasks/{task_id}/events", headers=headers,
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


def _record(view: dict[str, Any]) -> TaskRecord:
    fields = {k: v for k, v in view.items() if k in TaskRecord.model_fields}
    fields.setdefault("updated_at", view.get("finished_at") or view["created_at"])
    return TaskRecord(**fields)
