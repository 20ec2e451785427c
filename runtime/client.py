"""The Python client for driver scripts: submit, get, wait, events, cancel, retry, list."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ray

from runtime import dispatch
from runtime.catalog import Catalog, load_catalog
from runtime.config import Settings
from runtime.errors import RaysquadError, RuntimeNotRunning, TaskFailed, WaitTimeout
from runtime.models import END_EVENT_KINDS, Event, SubmitRequest, TaskRecord, TaskStatus
from runtime.store import actor as store_actor


class Client:
    """A handle on a running runtime. ``Client.connect()`` finds one on the current Ray cluster."""

    def __init__(self, store: Any, dispatcher: Any) -> None:
        self._store = store
        self._dispatcher = dispatcher

    @classmethod
    def connect(cls, settings: Settings | None = None) -> Client:
        """Join Ray (``settings.ray_address``, default ``auto``) and find the runtime's actors."""
        settings = settings or Settings()
        where = settings.ray_address or _recorded_address(settings) or "auto"
        if not ray.is_initialized():
            # Ray turns token auth on by itself only for "auto"; a local cluster started by
            # `raysquad up` uses the token in ~/.ray/auth_token, so an explicit address needs it too.
            _use_local_token_if_any()
            try:
                ray.init(address=where, namespace=settings.namespace, log_to_driver=False,
                         logging_level=logging.ERROR)
            except (ConnectionError, RuntimeError):
                raise RuntimeNotRunning(f"Ray address {where!r} (no Ray cluster answered)") from None
        try:
            store = ray.get_actor(store_actor.ACTOR_NAME, namespace=settings.namespace)
            dispatcher = ray.get_actor(dispatch.ACTOR_NAME, namespace=settings.namespace)
        except ValueError:
            raise RuntimeNotRunning(f"Ray namespace {settings.namespace!r}") from None
        return cls(store, dispatcher)

    def submit(self, workflow: str, input: dict[str, Any] | None = None, *, priority: int = 0,
               idempotency_key: str | None = None, tenant: str = "default") -> TaskRecord:
        """Queue a task; returns its record at once. An idempotency key already used returns that task."""
        req = SubmitRequest(workflow=workflow, input=input or {}, priority=priority,
                            idempotency_key=idempotency_key, tenant=tenant)
        record, _ = _get(self._dispatcher.submit.remote(req))
        return record  # type: ignore[no-any-return]

    def get(self, task_id: str) -> TaskRecord:
        return _get(self._store.get_task.remote(task_id))  # type: ignore[no-any-return]

    def list(self, status: TaskStatus | str | None = None, workflow: str | None = None,
             limit: int = 100, offset: int = 0) -> list[TaskRecord]:
        status = TaskStatus(status) if status else None
        return _get(  # type: ignore[no-any-return]
            self._store.list_tasks.remote(status, workflow, None, limit, offset))

    def events(self, task_id: str, after: int = 0, follow: bool = False,
               poll_s: float = 5.0) -> Iterator[Event]:
        """The task's events after seq ``after``; with ``follow``, keep going until the task ends."""
        while True:
            batch: list[Event] = _get(
                self._store.wait_events.remote(task_id, after, poll_s if follow else 0.0))
            for event in batch:
                after = event.seq
                yield event
                if follow and event.kind in END_EVENT_KINDS:
                    return
            if not batch and (not follow or self.get(task_id).status.ended):
                return

    def wait(self, task_id: str, timeout_s: float | None = None) -> TaskRecord:
        """Block until the task ends (succeeded, failed or cancelled) and return its record."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        after = 0
        while True:
            record = self.get(task_id)
            if record.status.ended:
                return record
            remaining = 5.0 if deadline is None else min(5.0, deadline - time.monotonic())
            if remaining <= 0:
                raise WaitTimeout(task_id, timeout_s or 0, record.status.value)
            batch: list[Event] = _get(self._store.wait_events.remote(task_id, after, remaining))
            if batch:
                after = batch[-1].seq

    def result(self, task_id: str, timeout_s: float | None = None) -> Any:
        """The task's output once it succeeds; TaskFailed if it failed or was cancelled."""
        record = self.wait(task_id, timeout_s)
        if record.status is not TaskStatus.SUCCEEDED:
            raise TaskFailed(task_id, record.status.value, record.error or "")
        return record.output

    def cancel(self, task_id: str) -> TaskRecord:
        """Cancel a queued task now, or a running one at its next step boundary."""
        return _get(self._dispatcher.cancel.remote(task_id))  # type: ignore[no-any-return]

    def retry(self, task_id: str) -> TaskRecord:
        """Run a failed or cancelled task again from its last checkpoint."""
        record: TaskRecord = _get(self._store.retry.remote(task_id))
        _get(self._dispatcher.requeue.remote([task_id]))
        return record

    def signal(self, task_id: str, name: str, payload: Any = None) -> TaskRecord:
        """Send the signal ``name`` to a task; one waiting for it resumes."""
        return _get(self._dispatcher.signal.remote(task_id, name, payload))  # type: ignore[no-any-return]

    def queue_stats(self) -> dict[str, Any]:
        return _get(self._dispatcher.stats.remote())  # type: ignore[no-any-return]


def _get(ref: Any) -> Any:
    """``ray.get``, raising our own error (not Ray's wrapper with a remote traceback) when it is ours."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        raise _ours(e) from None


def _use_local_token_if_any() -> None:
    """Do for an explicit address what ``ray.init`` does for "auto": use ~/.ray/auth_token if present."""
    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )
    except ImportError:  # a Ray without token auth
        return
    logging.getLogger(maybe_enable_token_auth_if_token_available.__module__).setLevel(logging.ERROR)
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


def address_file(settings: Settings) -> Path:
    """Where a runtime records the Ray address it runs on, for clients started in the same directory."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return settings.data_dir / "ray_address"


def _recorded_address(settings: Settings) -> str | None:
    path = settings.data_dir / "ray_address"
    return path.read_text().strip() or None if path.exists() else None



class AsyncClient:
    """The client for async code (the HTTP app, async driver scripts): the same calls, awaited.

    It holds the runtime's workflow catalogue, so a submit is validated here and written straight to
    the Store, which admits it (queue bound, idempotency key) in one call shared by the submits of
    the same event-loop turn; the dispatcher learns of the new task from the Store.
    """

    def __init__(self, store: Any, dispatcher: Any, catalog: Catalog) -> None:
        self._store = store
        self._dispatcher = dispatcher
        self._catalog = catalog
        self._commit = dispatch.submitter(store)

    @classmethod
    def from_named_actors(cls, namespace: str) -> AsyncClient:
        """Find the runtime's actors on the Ray cluster this process is connected to, and load the
        app modules the runtime runs (blocking: call it outside the event loop, or at start-up)."""
        try:
            store = ray.get_actor(store_actor.ACTOR_NAME, namespace=namespace)
            dispatcher = ray.get_actor(dispatch.ACTOR_NAME, namespace=namespace)
        except ValueError:
            raise RuntimeNotRunning(f"Ray namespace {namespace!r}") from None
        return cls(store, dispatcher, load_catalog(_get(dispatcher.app_modules.remote())))

    async def submit(self, req: SubmitRequest) -> tuple[TaskRecord, bool]:
        """Queue a task; returns its record and whether it is new (False: idempotency key reused)."""
        self._catalog.workflow(req.workflow).validate_input(req.input)
        try:
            return await self._commit(req)
        except ray.exceptions.RayTaskError as e:
            raise _ours(e) from None

    async def get(self, task_id: str) -> TaskRecord:
        return await _aget(self._store.get_task.remote(task_id))  # type: ignore[no-any-return]

    async def list_tasks(self, status: TaskStatus | None = None, workflow: str | None = None,
                   tenant: str | None = None, limit: int = 100, offset: int = 0) -> list[TaskRecord]:
        return await _aget(  # type: ignore[no-any-return]
            self._store.list_tasks.remote(status, workflow, tenant, limit, offset))

    async def wait_events(self, task_id: str, after: int, timeout_s: float) -> list[Event]:
        """Events after seq ``after``, waiting up to ``timeout_s`` for the first one."""
        return await _aget(  # type: ignore[no-any-return]
            self._store.wait_events.remote(task_id, after, timeout_s))

    async def cancel(self, task_id: str) -> TaskRecord:
        return await _aget(self._dispatcher.cancel.remote(task_id))  # type: ignore[no-any-return]

    async def retry(self, task_id: str) -> TaskRecord:
        record: TaskRecord = await _aget(self._store.retry.remote(task_id))
        await _aget(self._dispatcher.requeue.remote([task_id]))
        return record

    async def signal(self, task_id: str, name: str, payload: Any) -> TaskRecord:
        return await _aget(self._dispatcher.signal.remote(task_id, name, payload))  # type: ignore[no-any-return]

    async def workflows(self) -> list[dict[str, Any]]:
        return await _aget(self._dispatcher.workflows.remote())  # type: ignore[no-any-return]

    async def ready(self) -> dict[str, Any]:
        """The Store's path and the task queue's stats; raises if either actor is down."""
        return {"store": await _aget(self._store.ping.remote()),
                "queue": await _aget(self._dispatcher.stats.remote())}


async def _aget(ref: Any) -> Any:
    try:
        return await ref
    except ray.exceptions.RayTaskError as e:
        raise _ours(e) from None


def _ours(e: ray.exceptions.RayTaskError) -> BaseException:
    """Our own error, if a remote call raised one; else Ray's wrapper as it came."""
    return e.cause if isinstance(e.cause, RaysquadError) else e
