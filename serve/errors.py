"""Bad input gets a 4xx with a message that says what was wrong; never a 500 for a client's mistake."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from runtime.errors import (
    AgentNotFound,
    InvalidInput,
    InvalidTransition,
    QueueFull,
    RaysquadError,
    RuntimeNotRunning,
    TaskNotFound,
    WorkflowNotFound,
)

_STATUS: list[tuple[type[RaysquadError], int]] = [
    (TaskNotFound, 404), (WorkflowNotFound, 404), (AgentNotFound, 404), (InvalidInput, 422),
    (QueueFull, 429), (InvalidTransition, 409), (RuntimeNotRunning, 503),
]


def error_body(status: int, kind: str, message: str, **more: Any) -> JSONResponse:
    return JSONResponse({"error": {"type": kind, "message": message, **more}}, status_code=status)


def install(app: FastAPI) -> None:
    """Map our errors and FastAPI's validation errors to clear JSON responses."""

    @app.exception_handler(RaysquadError)
    async def ours(request: Request, exc: RaysquadError) -> JSONResponse:
        status = next((code for cls, code in _STATUS if isinstance(exc, cls)), 500)
        response = error_body(status, type(exc).__name__, str(exc),
                              **({"problems": exc.problems} if isinstance(exc, InvalidInput) else {}))
        if isinstance(exc, QueueFull):
            response.headers["Retry-After"] = str(max(1, round(exc.retry_after_s)))
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            detail = next(e for e in errors if e.get("type") == "json_invalid")
            where = detail.get("ctx", {}).get("error", "")
            return error_body(400, "MalformedJSON", f"the request body is not valid JSON: {where}".strip())
        problems = [{"loc": [str(p) for p in e["loc"]], "msg": e["msg"], "type": e["type"]}
                    for e in errors]
        text = "; ".join(f"{'.'.join(p['loc'])}: {p['msg']}" for p in problems)
        return error_body(422, "ValidationError", text, problems=problems)

    @app.exception_handler(StarletteHTTPException)
    async def http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        response = error_body(exc.status_code, "HTTPError", str(exc.detail))
        for k, v in (exc.headers or {}).items():
            response.headers[k] = v
        return response


class BodyGuard:
    """Pure ASGI middleware: 415 for a body that is not JSON, 413 for one over the limit.

    The limit is ``app.state.settings.max_body_bytes``. Checks Content-Length up front and counts
    streamed bytes too, so a chunked upload cannot slip by.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.max_bytes = 1 << 20

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        settings = getattr(scope["app"].state, "settings", None)
        if settings is not None:
            self.max_bytes = settings.max_body_bytes
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await self._reply(send, 413, f"request body is {length} bytes; the limit is {self.max_bytes}")
            return
        ctype = headers.get("content-type", "").split(";")[0].strip().lower()
        has_body = (length is not None and length != "0") or "transfer-encoding" in headers
        if has_body and not (ctype == "application/json" or ctype.endswith("+json")):
            await self._reply(send, 415, f"send JSON with Content-Type: application/json, not "
                                         f"{ctype or 'no content type'!r}")
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge()
            return message

        try:
            await self.app(scope, counted, send)
        except _TooLarge:
            await self._reply(send, 413, f"request body exceeds the limit of {self.max_bytes} bytes")

    @staticmethod
    async def _reply(send: Send, status: int, message: str) -> None:
        response = error_body(status, "PayloadTooLarge" if status == 413 else "UnsupportedMediaType",
                              message)
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(response.body)).encode())]})
        await send({"type": "http.response.body", "body": response.body})


class _TooLarge(Exception):
    pass
