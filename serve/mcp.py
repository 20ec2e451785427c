"""raysquad as an MCP server, at ``/mcp`` (streamable HTTP, stateless), on the ``mcp`` SDK's
low-level server: every workflow is a tool, its input and output schemas the tool's, its docstring
the tool's description.

- **Keys and tenants** as the rest of the API: ``Authorization: Bearer KEY`` names the tenant (401
  without one where the server has keys); a tenant sees and reaches only its own tasks.
- **A call without tasks** submits the task and waits for it up to ``mcp_wait_s``, sending the
  task's ``progress`` events as MCP progress; a task still running then is answered with its id
  to poll (``structuredContent: {"task_id", "status"}``).
- **A call with tasks** (a client that declares the ``io.modelcontextprotocol/tasks`` extension)
  is answered at once with the task (``resultType: "task"``); ``tasks/get``, ``tasks/result`` and
  ``tasks/cancel`` map onto it. A task parked on a signal or an approval is ``input_required``, its
  ``statusMessage`` naming what it waits for and ``inputRequests`` asking for it (an
  elicitation form: an approval's decision, or a signal's payload); the client answers with
  ``tasks/update`` (``inputResponses`` keyed the same), or, over a connection with a back-channel,
  the elicitation ``tasks/result`` sends; the answer is sent as that signal and the task resumes.
- **Bad input** is answered in MCP's terms, never with a 500: an unknown tool or task is an
  ``INVALID_PARAMS`` error; arguments that do not fit the workflow's schema (or that the runtime
  refuses) are a tool result with ``isError``.

No JSON-RPC is written here: the SDK's server parses, dispatches and answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import datetime
import json
import time
from typing import Any

from starlette.types import Receive, Scope, Send

from runtime.core.errors import RaysquadError, TaskNotFound
from runtime.core.models import SubmitRequest, TaskRecord, TaskStatus
from runtime.core.structured import schema_problems
from serve.answers import reply
from serve.auth import key_tenant

TASKS_EXTENSION = "io.modelcontextprotocol/tasks"
TENANT: contextvars.ContextVar[str] = contextvars.ContextVar("raysquad_mcp_tenant")
POLL_MS = 500

STATUS = {TaskStatus.QUEUED: "working", TaskStatus.RUNNING: "working",
          TaskStatus.WAITING: "input_required", TaskStatus.SUCCEEDED: "completed",
          TaskStatus.FAILED: "failed", TaskStatus.CANCELLED: "cancelled"}


def _iso(at: float | None) -> str:
    return datetime.datetime.fromtimestamp(at or time.time(), datetime.UTC).isoformat()


def task_view(record: TaskRecord) -> dict[str, Any]:
    """The task as MCP's ``Task`` (JSON, by alias; ``ttl`` null: kept as long as the Store keeps it)."""
    message = {TaskStatus.WAITING: f"waiting for {record.waiting_for}",
               TaskStatus.FAILED: record.error}.get(record.status)
    view: dict[str, Any] = {"taskId": record.id, "status": STATUS[record.status],
                            "createdAt": _iso(record.created_at),
                            "lastUpdatedAt": _iso(record.updated_at), "ttl": None,
                            "pollInterval": POLL_MS}
    if message:
        view["statusMessage"] = message
    if record.status is TaskStatus.WAITING and record.waiting_for:
        # What it waits for, as an input request keyed by its name (answered with tasks/update).
        asked, schema = question(record)
        view["inputRequests"] = {record.waiting_for: {
            "method": "elicitation/create",
            "params": {"mode": "form", "message": asked, "requestedSchema": schema}}}
    return view


def question(record: TaskRecord) -> tuple[str, dict[str, Any]]:
    """What a waiting task asks for, as an elicitation's message and form schema: an approval's
    decision, or a signal's payload (JSON, as text)."""
    name = record.waiting_for or ""
    if name.startswith("approval:"):
        return (f"task {record.id} waits for a person to approve {name.removeprefix('approval:')}",
                {"type": "object", "required": ["decision"], "properties": {
                    "decision": {"type": "string", "enum": ["approve", "deny"]},
                    "reason": {"type": "string"}}})
    return (f"task {record.id} waits for the signal {name!r}: its payload, as JSON",
            {"type": "object", "required": ["payload"],
             "properties": {"payload": {"type": "string"}}})


def _text(value: Any) -> list[Any]:
    import mcp_types as types

    return [types.TextContent(type="text", text=value if isinstance(value, str)
                              else json.dumps(value, default=str))]


def tool_result(record: TaskRecord) -> Any:
    """An ended task as a ``CallToolResult``: its output (structured: an object as it is, any
    other value as ``{"result": value}``), or its error with ``isError``."""
    import mcp_types as types

    if record.status is TaskStatus.SUCCEEDED:
        out = record.output
        return types.CallToolResult(content=_text(out), structured_content=out
                                    if isinstance(out, dict) else {"result": out})
    if record.status.ended:
        return types.CallToolResult(content=_text(f"task {record.id} {record.status.value}: "
                                                  f"{record.error or ''}".strip()), is_error=True)
    return types.CallToolResult(
        content=_text(f"task {record.id} is {record.status.value}: poll it (tasks/get, or "
                      f"GET /v1/tasks/{record.id})"),
        structured_content={"task_id": record.id, "status": record.status.value})


def _error(message: str) -> Any:
    import mcp_types as types

    return types.CallToolResult(content=_text(message), is_error=True)


def _update_params() -> type[Any]:
    from mcp_types import InputResponses, RequestParams

    class UpdateTaskParams(RequestParams):
        """``tasks/update``: the client's answers to a task's ``inputRequests``."""

        task_id: str
        input_responses: InputResponses | None = None

    return UpdateTaskParams


class McpServer:
    """The SDK server's handlers over the runtime's client (``app.state.client``)."""

    def __init__(self, state: Any) -> None:
        from mcp.server.lowlevel import Server
        from mcp_types import (
            CancelTaskRequestParams,
            GetTaskPayloadRequestParams,
            GetTaskRequestParams,
        )

        UpdateTaskParams = _update_params()  # noqa: N806 - a class
        self._state = state
        self._known: dict[str, dict[str, Any]] | None = None  # the catalogue's workflows
        self.server = Server("raysquad", on_list_tools=self.list_tools,
                             on_call_tool=self.call_tool)
        self.server.add_request_handler("tasks/get", GetTaskRequestParams, self.tasks_get)
        self.server.add_request_handler("tasks/result", GetTaskPayloadRequestParams,
                                        self.tasks_result)
        self.server.add_request_handler("tasks/cancel", CancelTaskRequestParams, self.tasks_cancel)
        self.server.add_request_handler("tasks/update", UpdateTaskParams, self.tasks_update)
        self.server.extensions[TASKS_EXTENSION] = {}

    @property
    def _client(self) -> Any:
        return self._state.client

    async def _workflows(self) -> dict[str, dict[str, Any]]:
        """The runtime's workflows, asked once: its catalogue does not change while it runs (the
        SDK lists the tools again for each call, and every call looks its tool up)."""
        if self._known is None:
            self._known = {w["name"]: w for w in await self._client.workflows()}
        return self._known

    async def list_tools(self, ctx: Any, params: Any) -> Any:
        import mcp_types as types

        return types.ListToolsResult(tools=[
            types.Tool(name=w["name"], description=w["description"] or w["name"],
                       input_schema=w["input_schema"])
            for w in (await self._workflows()).values()])

    async def call_tool(self, ctx: Any, params: Any) -> Any:
        from mcp import MCPError
        from mcp_types import INVALID_PARAMS

        workflow = (await self._workflows()).get(params.name)
        if workflow is None:
            raise MCPError(INVALID_PARAMS, f"no tool {params.name[:100]!r}: the tools are the "
                                           "runtime's workflows (tools/list)")
        arguments = params.arguments or {}
        problems = schema_problems(workflow["input_schema"], arguments)
        if problems:
            return _error(f"arguments of {params.name}: " + "; ".join(problems[:5]))
        try:
            record, _ = await self._client.submit_request(SubmitRequest(
                workflow=params.name, input=arguments, tenant=TENANT.get()))
        except RaysquadError as e:
            return _error(str(e))
        caps = ctx.session.client_capabilities
        if caps is not None and caps.extensions and TASKS_EXTENSION in caps.extensions:
            return {"resultType": "task", "task": task_view(record)}
        return tool_result(await self._follow(ctx, record))

    async def _follow(self, ctx: Any, record: TaskRecord) -> TaskRecord:
        """Wait for the task up to ``mcp_wait_s``, its progress events sent as MCP progress (those
        logged before it ended included)."""
        deadline = time.monotonic() + self._state.settings.mcp_wait_s
        after = 0
        while True:
            settled = record.status.ended or record.status is TaskStatus.WAITING
            left = deadline - time.monotonic()
            wait_s = 0.0 if settled or left <= 0 else min(left, 5.0)
            for event in await self._client.wait_events(record.id, after, wait_s):
                after = event.seq
                progress = event.data.get("progress") if event.kind == "progress" else None
                if isinstance(progress, int | float):
                    with contextlib.suppress(Exception):  # a client that sent no token: nothing
                        await ctx.session.report_progress(float(progress), 1.0,
                                                          event.data.get("message"))
            if settled or left <= 0:
                return record
            record = await self._client.get(record.id)

    async def _task(self, task_id: str) -> TaskRecord:
        from mcp import MCPError
        from mcp_types import INVALID_PARAMS

        try:
            record: TaskRecord = await self._client.get(task_id)
            if record.tenant == TENANT.get():  # another tenant's task does not exist
                return record
        except TaskNotFound:
            pass
        raise MCPError(INVALID_PARAMS, f"no task {task_id[:100]!r}")

    async def tasks_get(self, ctx: Any, params: Any) -> dict[str, Any]:
        return task_view(await self._task(params.task_id))

    async def tasks_result(self, ctx: Any, params: Any) -> Any:
        """The task's result once it ended (waiting for it, as the spec's ``tasks/result`` does, up
        to ``mcp_wait_s``). A task that is ``input_required`` first asks the client, with an
        elicitation, for what it waits for: the answer is sent as that signal (an approval's as
        the decision) and the task resumes."""
        record = await self._task(params.task_id)
        if record.status is TaskStatus.WAITING and record.waiting_for:
            record = await self._ask(ctx, record)
        return tool_result(await self._follow(ctx, record))

    async def _ask(self, ctx: Any, record: TaskRecord) -> TaskRecord:
        """Elicit the answer the task waits for from the client (over the request's back-channel,
        where the connection has one), and send it."""
        from mcp import MCPError

        message, schema = question(record)
        try:
            answer = await ctx.session.elicit_form(message, schema, ctx.request_id)
        except MCPError:  # no back-channel (stateless, 2026-07-28): tasks/update answers instead
            return record
        return await self._answer(record, answer)

    async def _answer(self, record: TaskRecord, answer: Any) -> TaskRecord:
        """Send an elicitation's answer as what the task waits for (a declined one: nothing)."""
        from mcp import MCPError
        from mcp_types import INVALID_PARAMS

        name = record.waiting_for or ""
        content = dict(answer.content or {}) if answer.action == "accept" else None
        if content is None:
            return record  # declined or cancelled: the task goes on waiting
        problems = schema_problems(question(record)[1], content)
        if problems:
            raise MCPError(INVALID_PARAMS, f"the answer for {name!r}: " + "; ".join(problems[:3]))
        if name.startswith("approval:"):
            return await self._client.decide(record.id, name.removeprefix("approval:"),
                                             content["decision"], content.get("reason"))
        text = str(content["payload"])
        try:
            payload = json.loads(text)
        except json.JSONDecodeError:
            payload = text
        return await self._client.signal(record.id, name, payload)

    async def tasks_update(self, ctx: Any, params: Any) -> dict[str, Any]:
        """The tasks extension's answer to a task's ``inputRequests``: the response keyed by what
        the task waits for is sent as that signal (or approval decision)."""
        from mcp import MCPError
        from mcp_types import INVALID_PARAMS, ElicitResult

        record = await self._task(params.task_id)
        name = record.waiting_for
        responses = params.input_responses or {}
        if record.status is not TaskStatus.WAITING or name not in responses:
            waits = name if record.status is TaskStatus.WAITING else "nothing"
            raise MCPError(INVALID_PARAMS, f"task {record.id} waits for {waits}, not for "
                                           f"{sorted(responses)[:5]}")
        answer = responses[name]
        if not isinstance(answer, ElicitResult):
            raise MCPError(INVALID_PARAMS, f"the answer for {name!r} must be an elicitation result")
        return task_view(await self._answer(record, answer))

    async def tasks_cancel(self, ctx: Any, params: Any) -> dict[str, Any]:
        record = await self._task(params.task_id)
        if not record.status.ended:
            record = await self._client.cancel(record.id)
        return task_view(record)


class McpEndpoint:
    """The ASGI app mounted at ``/mcp``: the caller's key checked (its tenant set for the
    handlers), then the SDK's session manager (started on the first request, in the replica's
    event loop; stateless, so any replica answers any request)."""

    def __init__(self, state: Any) -> None:
        self._state = state
        self._manager: Any = None
        self._starting: asyncio.Lock | None = None
        self._runner: asyncio.Task[None] | None = None

    async def _started(self) -> Any:
        if self._manager is not None:
            return self._manager
        self._starting = self._starting or asyncio.Lock()
        async with self._starting:
            if self._manager is None:
                from mcp.server.streamable_http_manager import StreamableHTTPSessionManager

                manager = StreamableHTTPSessionManager(app=McpServer(self._state).server,
                                                       stateless=True)
                ready = asyncio.Event()

                async def run() -> None:
                    async with manager.run():
                        ready.set()
                        await asyncio.Event().wait()  # for the replica's lifetime

                self._runner = asyncio.get_running_loop().create_task(run())
                await ready.wait()
                self._manager = manager
        return self._manager

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        keys = self._state.settings.api_keys
        tenant = "default"
        if keys:
            headers = dict(scope.get("headers") or [])
            found = key_tenant(keys, headers.get(b"authorization", b"").decode("latin-1"))
            if found is None:
                await reply(send, 401, "Unauthorized", "missing or unknown API key: send "
                                                       "Authorization: Bearer <key>")
                return
            tenant = found
        token = TENANT.set(tenant)
        try:
            await (await self._started()).handle_request(scope, receive, send)
        finally:
            TENANT.reset(token)
