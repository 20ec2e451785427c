"""raysquad as an MCP server: the ``mcp`` SDK's own client over streamable HTTP against the shared
``raysquad up`` (API keys on), at ``/mcp``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Literal

import httpx2
import mcp_types as types
import pytest
from mcp import Client, MCPError
from mcp.client.extension import ClaimContext, ClientExtension, ResultClaim
from mcp.client.streamable_http import streamable_http_client
from mcp_types import (
    CallToolResult,
    CancelTaskRequest,
    CancelTaskRequestParams,
    GetTaskPayloadRequest,
    GetTaskPayloadRequestParams,
    GetTaskRequest,
    GetTaskRequestParams,
    GetTaskResult,
    InputResponses,
    Request,
    RequestParams,
    Task,
)
from pydantic import TypeAdapter

from tests.e2e.live import Api

TASKS = "io.modelcontextprotocol/tasks"


class TaskCreated(types.Result):
    result_type: Literal["task"] = "task"
    task: Task


async def _poll_to_end(claim: TaskCreated, cc: ClaimContext) -> CallToolResult:
    while (await get_task(cc.session, claim.task.task_id)).status not in (
            "completed", "failed", "cancelled"):
        await asyncio.sleep(0.2)
    return await task_result(cc.session, claim.task.task_id)


class Tasks(ClientExtension):
    """The client's side of the tasks extension: declares it, and finishes a task result by
    polling (``client.call_tool``); ``session.call_tool(..., allow_claimed=True)`` gives the task."""

    identifier = TASKS

    def claims(self) -> list[ResultClaim]:
        return [ResultClaim(result_type="task", model=TaskCreated, resolve=_poll_to_end)]


async def get_task(session: Any, task_id: str) -> GetTaskResult:
    result: GetTaskResult = await session.send_request(
        GetTaskRequest(params=GetTaskRequestParams(task_id=task_id)), GetTaskResult)
    return result


ANY = TypeAdapter(dict[str, Any])


class UpdateTaskParams(RequestParams):
    task_id: str
    input_responses: InputResponses


class UpdateTaskRequest(Request[UpdateTaskParams, Literal["tasks/update"]]):
    """The tasks extension's answer to a task's inputRequests (the SDK ships no type for it)."""

    method: Literal["tasks/update"] = "tasks/update"
    params: UpdateTaskParams


async def raw_task(session: Any, task_id: str) -> dict[str, Any]:
    """tasks/get as the JSON it is (with inputRequests, which GetTaskResult does not keep)."""
    got: dict[str, Any] = await session.send_request(
        GetTaskRequest(params=GetTaskRequestParams(task_id=task_id)), ANY)
    return got


async def task_result(session: Any, task_id: str) -> CallToolResult:
    result: CallToolResult = await session.send_request(
        GetTaskPayloadRequest(params=GetTaskPayloadRequestParams(task_id=task_id)), CallToolResult)
    return result


@asynccontextmanager
async def mcp_client(api: Api, key: str | None = "key-a", **options: Any) -> AsyncIterator[Client]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=120)) as http:
        async with Client(streamable_http_client(f"{api.url}/mcp", http_client=http),
                          **options) as client:
            yield client


def run(body: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(body(), 240))


def test_every_workflow_is_a_tool_and_a_call_returns_its_structured_result(api: Api) -> None:
    workflows = {w["name"]: w for w in api.client("key-a").get("/v1/workflows").json()}

    async def body() -> None:
        async with mcp_client(api) as client:
            tools = {t.name: t for t in (await client.list_tools()).tools}
            assert set(tools) == set(workflows)
            assert tools["echo"].input_schema == workflows["echo"]["input_schema"]
            said = await client.call_tool("echo", {"text": "hello over MCP"})
            assert not said.is_error and said.structured_content == {"result": "hello over MCP"}
            done = await client.call_tool("five_steps", {"dir": str(api.dir), "steps": 2})
            assert done.structured_content == {"done": 2}
            bad = await client.call_tool("echo", {"text": 5})
            assert bad.is_error and "text" in bad.content[0].text  # type: ignore[union-attr]
            with pytest.raises(MCPError, match="no tool"):
                await client.call_tool("no_such_workflow", {})

    run(body)


def test_a_call_with_a_task_is_polled_cancelled_or_answered(api: Api) -> None:
    async def body() -> None:
        async with mcp_client(api, extensions=[Tasks()]) as client:
            # Polled to the end by the extension's claim.
            polled = await client.call_tool("five_steps", {"dir": str(api.dir), "steps": 2})
            assert polled.structured_content == {"done": 2}
            # Cancelled: held at its gate, then cancelled and let go.
            held = await client.session.call_tool(
                "five_steps", {"dir": str(api.dir), "steps": 3, "gate_at": 1}, allow_claimed=True)
            task_id = held.task.task_id
            assert (await get_task(client.session, task_id)).status == "working"
            await client.session.send_request(
                CancelTaskRequest(params=CancelTaskRequestParams(task_id=task_id)), GetTaskResult)
            (api.dir / f"{task_id}.open").touch()
            while (status := (await get_task(client.session, task_id)).status) == "working":
                await asyncio.sleep(0.2)
            assert status == "cancelled"
            # input_required: the task waits for a signal, asks for it in inputRequests, and the
            # answer (tasks/update) resumes it.
            waiting = await client.session.call_tool("approval", {"dir": str(api.dir)},
                                                     allow_claimed=True)
            task_id = waiting.task.task_id
            while (got := await raw_task(client.session, task_id))["status"] != "input_required":
                await asyncio.sleep(0.2)
            assert "approve" in got["statusMessage"]
            asked = got["inputRequests"]["approve"]
            assert asked["method"] == "elicitation/create"
            assert "payload" in asked["params"]["requestedSchema"]["properties"]
            answered = await client.session.send_request(UpdateTaskRequest(params=UpdateTaskParams(
                task_id=task_id, input_responses={"approve": types.ElicitResult(
                    action="accept", content={"payload": '{"ok": true}'})})), ANY)
            assert answered["status"] in ("working", "completed")
            while (await get_task(client.session, task_id)).status != "completed":
                await asyncio.sleep(0.2)
            result = await task_result(client.session, task_id)
            assert result.structured_content == {"approved": True, "decision": {"ok": True}}
            with pytest.raises(MCPError, match="waits for nothing"):  # answered once, not twice
                await client.session.send_request(UpdateTaskRequest(params=UpdateTaskParams(
                    task_id=task_id, input_responses={"approve": types.ElicitResult(
                        action="accept", content={"payload": "again"})})), ANY)

    run(body)


def test_tenants_and_keys(api: Api) -> None:
    async def body() -> None:
        async with mcp_client(api, extensions=[Tasks()]) as client:
            mine = await client.session.call_tool("echo", {"text": "a's"}, allow_claimed=True)
        async with mcp_client(api, key="key-b") as other:
            with pytest.raises(MCPError, match="no task"):
                await get_task(other.session, mine.task.task_id)
        with pytest.raises(BaseException) as refused:
            async with mcp_client(api, key=None) as client:
                await client.list_tools()
        assert "401" in repr(refused.value) or "error response" in repr(refused.value)

    run(body)
    r = api.client().post("/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                          headers={"Accept": "application/json, text/event-stream"})
    assert r.status_code == 401


def test_malformed_json_rpc_is_refused_in_mcp_terms_never_with_a_500(api: Api) -> None:
    client = api.client("key-a")  # its hook fails the test on any 5xx
    headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    for body in ('{"jsonrpc": "2.0", "id": 1, "method": ', '[1, 2, 3]',
                 '{"jsonrpc": "2.0", "id": 1, "method": "no/such/method"}',
                 '{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": 7}}'):
        r = client.post("/mcp", content=body, headers=headers)
        assert r.status_code < 500, (body, r.status_code, r.text[:300])
        if r.status_code == 200:  # a JSON-RPC error, as SSE or JSON
            assert '"error"' in r.text, r.text[:300]


def test_a_tasks_progress_events_are_mcp_progress(api: Api) -> None:
    seen: list[tuple[float, float | None, str | None]] = []

    async def progress(done: float, total: float | None, message: str | None) -> None:
        seen.append((done, total, message))

    async def body() -> None:
        async with mcp_client(api) as client:
            result = await client.call_tool("five_steps", {"dir": str(api.dir), "steps": 3,
                                                           "sleep_s": 0.3},
                                            progress_callback=progress)
            assert result.structured_content == {"done": 3}

    run(body)
    assert [round(done, 2) for done, _, _ in seen][-1] == 1.0, seen
    assert any(message == "step 3" for _, _, message in seen), seen
