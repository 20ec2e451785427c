"""Error answers in the API's one shape (``{"error": {"type", "message", ...}}``): as a FastAPI
response, or sent straight on an ASGI connection by the middlewares that answer before the app runs
(the body guard, the loopback guard)."""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse
from starlette.types import Send


def error_body(status: int, kind: str, message: str, **more: Any) -> JSONResponse:
    return JSONResponse({"error": {"type": kind, "message": message, **more}}, status_code=status)


async def reply(send: Send, status: int, kind: str, message: str) -> None:
    """Answer ``status`` with an error body on a raw ASGI connection."""
    response = error_body(status, kind, message)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(response.body)).encode())]})
    await send({"type": "http.response.body", "body": response.body})
