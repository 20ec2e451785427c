"""Bad input gets a 4xx with a message that says what was wrong; never a 500 for a client's mistake."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from runtime.core.errors import (
    Conflict,
    InputTooLarge,
    InvalidCursor,
    InvalidEventData,
    InvalidInput,
    InvalidName,
    InvalidSchedule,
    InvalidTopic,
    NotFound,
    PriorityNotAllowed,
    QueueFull,
    RaysquadError,
    Refused,
    Retryable,
    ToolArgsInvalid,
    WebhookRejected,
)
from runtime.core.retry import retry_after_s
from serve.answers import error_body, reply
from serve.auth import key_tenant

# An error gets the status of the most specific class listed here that it is (its MRO decides, not
# the order): the bases give the general answer, a subclass listed here its own. Others get 500.
_STATUS: list[tuple[type[RaysquadError], int]] = [
    (NotFound, 404), (Conflict, 409), (Refused, 400), (Retryable, 503),
    (InvalidInput, 422), (ToolArgsInvalid, 422), (QueueFull, 429),
    (PriorityNotAllowed, 422), (InputTooLarge, 413), (InvalidCursor, 422),
    (InvalidTopic, 422), (InvalidEventData, 422), (WebhookRejected, 401), (InvalidSchedule, 422),
    (InvalidName, 422),
]


def status_of(exc: RaysquadError) -> int:
    """The HTTP status that answers ``exc``."""
    codes = dict(_STATUS)
    return next((codes[cls] for cls in type(exc).__mro__ if cls in codes), 500)


def answer(exc: RaysquadError) -> tuple[int, dict[str, Any]]:
    """The HTTP status and the ``error`` object that answer ``exc`` (a request's, or one item's of a
    batch)."""
    detail: dict[str, Any] = {"type": type(exc).__name__, "message": str(exc)}
    if isinstance(exc, InvalidInput):
        detail["problems"] = exc.details or problem_objects("input", exc.problems)
    elif isinstance(exc, ToolArgsInvalid):
        detail["problems"] = problem_objects("arguments", exc.problems)
    return status_of(exc), detail


def problem_objects(root: str, problems: list[str]) -> list[dict[str, Any]]:
    """Problems said as lines (``"a.b: what"``) in the one shape every 422 carries: ``{loc, msg,
    type}``, as FastAPI gives a body's, with ``loc`` under ``root``."""
    shaped = []
    for line in problems:
        where, sep, what = line.partition(": ")
        loc = [p for p in where.split(".") if p and not p.startswith("(")] if sep else []
        shaped.append({"loc": [root, *loc], "msg": what if sep else line, "type": "value_error"})
    return shaped


def install(app: FastAPI) -> None:
    """Map our errors and FastAPI's validation errors to clear JSON responses."""

    @app.exception_handler(RaysquadError)
    async def ours(request: Request, exc: RaysquadError) -> JSONResponse:
        status, detail = answer(exc)
        response = JSONResponse({"error": detail}, status_code=status)
        after = retry_after_s(exc) if isinstance(exc, Retryable) else None
        if after is not None:
            response.headers["Retry-After"] = str(max(1, round(after)))
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            detail = next(e for e in errors if e.get("type") == "json_invalid")
            what = detail.get("ctx", {}).get("error", "")
            at = detail["loc"][-1] if isinstance(detail["loc"][-1], int) else None
            if at is None:
                return error_body(400, "MalformedJSON",
                                  f"the request body is not valid JSON: {what}".strip())
            line, column = line_and_column(await request.body(), at)
            return error_body(400, "MalformedJSON", f"the request body is not valid JSON: {what} "
                                                    f"at line {line}, column {column}",
                              line=line, column=column)
        problems = [{"loc": [str(p) for p in e["loc"]], "msg": e["msg"], "type": e["type"]}
                    for e in errors]
        text = "; ".join(f"{'.'.join(p['loc'])}: {p['msg']}" for p in problems)
        return error_body(422, "ValidationError", text, problems=problems)

    @app.exception_handler(StarletteHTTPException)
    async def http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        response = error_body(exc.status_code, "HTTPError", str(exc.detail))
        for k, v in (exc.headers or {}).items():
            response.headers[k] = v
        if exc.status_code == 405:
            response.headers["Allow"] = ", ".join(allowed_methods(request))
        return response


def line_and_column(body: bytes, at: int) -> tuple[int, int]:
    """The line and column (from 1) of the character at offset ``at`` of a JSON body."""
    text = body.decode("utf-8", errors="replace")[:at]
    return text.count("\n") + 1, at - (text.rfind("\n") + 1) + 1


def allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at this path (Starlette names only the first route's)."""
    methods: set[str] = set()
    for route in request.app.routes:
        match, _ = route.matches(request.scope)
        if match is not Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    return sorted(methods)


BATCH_ROUTE = ("POST", "/v1/tasks:batch")


def body_limit(settings: Any, method: str, path: str, authorization: str | None) -> int:
    """The most bytes a request's body may have: ``max_body_bytes``, and ``max_batch_body_bytes``
    for the batch route alone, once its caller's API key is known (a caller without a key never
    gets the larger limit, whatever the path)."""
    if settings is None:
        return 1 << 20
    if (method, path) == BATCH_ROUTE and (
            not settings.api_keys or key_tenant(settings.api_keys, authorization) is not None):
        return int(settings.max_batch_body_bytes)  # a batch holds many tasks' inputs
    return int(settings.max_body_bytes)


class BodyGuard:
    """Pure ASGI middleware in front of every POST: the body must be JSON, strictly, and not too big.

    415 for another content type; 413 over ``body_limit`` (by Content-Length up front, before a
    byte is read, and by counting a streamed body while it is read: at most the limit is ever
    held); 400 for what Python's json module accepts but JSON does not (NaN, Infinity); 422 for a
    string that is not valid Unicode (a lone surrogate), which could be stored but never read back,
    and for nesting past ``max_json_depth``. The checks walk the parsed body once, in O(size) time
    and O(depth) memory.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        settings = getattr(scope["app"].state, "settings", None)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        limit = body_limit(settings, scope["method"], scope["path"], headers.get("authorization"))
        length = headers.get("content-length")
        if length is not None and length.isdecimal() and int(length) > limit:
            await reply(send, 413, "PayloadTooLarge",
                         f"request body is {length} bytes; the limit is {limit}")
            return
        ctype = headers.get("content-type", "").split(";")[0].strip().lower()
        has_body = (length is not None and length != "0") or "transfer-encoding" in headers
        if has_body and not (ctype == "application/json" or ctype.endswith("+json")):
            await reply(send, 415, "UnsupportedMediaType",
                         f"send JSON with Content-Type: application/json, not "
                         f"{ctype or 'no content type'!r}")
            return
        body = bytearray()
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > limit:
                await reply(send, 413, "PayloadTooLarge",
                             f"request body exceeds the limit of {limit} bytes")
                return
        if body:
            depth = settings.max_json_depth if settings is not None else 64
            problem = strict_json_problem(bytes(body), depth)
            if problem is not None:
                await reply(send, *problem)
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        await self.app(scope, replay, send)


class _OutOfRange(float):
    """A JSON number too large for a double (``1e999``), kept as text so the walk can name it."""

    text: str


def _parse_float(text: str) -> float:
    value = float(text)
    if math.isfinite(value):
        return value
    marker = _OutOfRange(0.0)
    marker.text = text
    return marker


def strict_json_problem(body: bytes, max_depth: int = 64) -> tuple[int, str, str] | None:
    """What makes a body that json.loads accepts unacceptable as JSON, if anything: NaN and
    Infinity (not JSON), numbers no double holds, nesting deeper than ``max_depth``, lone surrogates
    (valid JSON escapes that no UTF-8 store can hold).

    The body is parsed once. Only its containers are then visited in Python (``_deeper_than``);
    the full walk over every value (``_walk``, which names the path of a problem) runs only when
    the parse met an out-of-range number, the text may hold a lone surrogate, or the nesting is
    too deep: a wide array of plain values costs one pass in C."""
    out_of_range = False

    def reject(constant: str) -> Any:
        raise ValueError(f"{constant} is not a JSON value")

    def parse_float(text: str) -> float:
        nonlocal out_of_range
        value = _parse_float(text)
        out_of_range = out_of_range or isinstance(value, _OutOfRange)
        return value

    try:
        value = json.loads(body, parse_constant=reject, parse_float=parse_float)
    except RecursionError:
        return 422, "ValidationError", f"body: nested too deeply (the limit is {max_depth} levels)"
    except ValueError as e:
        if "is not a JSON value" in str(e):
            return 400, "MalformedJSON", f"the request body is not valid JSON: {e}"
        return None  # ordinary syntax errors get FastAPI's own 400 with its position
    if out_of_range or _may_hold_lone_surrogate(body) or _deeper_than(value, max_depth):
        return _walk(value, max_depth)
    return None


# A \uD800-\uDBFF escape not followed by a \uDC00-\uDFFF one, or one of those not preceded by
# the first kind: json.loads keeps either as a lone surrogate. (It may also match an escaped
# backslash before "uD800": that only costs the full walk, which decides.)
_LONE_SURROGATE_ESCAPE = re.compile(
    rb"\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F][0-9a-fA-F]{2})"
    rb"|(?<!\\u[dD][89abAB][0-9a-fA-F]{2})\\u[dD][c-fC-F][0-9a-fA-F]{2}")


def _may_hold_lone_surrogate(body: bytes) -> bool:
    """Whether json.loads may have made a lone surrogate of ``body``: from an escape, or from raw
    bytes that are not UTF-8 (it decodes with ``surrogatepass``, and detects UTF-16 and -32)."""
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return _LONE_SURROGATE_ESCAPE.search(body) is not None


_CONTAINER_TYPES = frozenset({dict, list})


def _deeper_than(value: Any, max_depth: int) -> bool:
    """Whether arrays and objects nest deeper than ``max_depth``. Only containers are visited: a
    container's children are typed in C (``isdisjoint(map(type, ...))``), and one holding no
    container is not looped over in Python at all. O(size) time, O(depth) memory."""
    stack: list[Iterator[Any]] = [iter((value,))]
    while stack:
        for item in stack[-1]:
            if type(item) not in _CONTAINER_TYPES:
                continue
            if len(stack) > max_depth:
                return True
            children = item.values() if type(item) is dict else item
            if not _CONTAINER_TYPES.isdisjoint(map(type, children)):
                stack.append(iter(children))
                break
        else:
            stack.pop()
    return False


def _walk(value: Any, max_depth: int) -> tuple[int, str, str] | None:
    """Depth-first over the parsed body, without recursion (the depth is what is being checked):
    a stack of one iterator per open container and the key being visited at each level, so the
    memory is the depth's, and a path is built only to name the value in an error."""
    keys: list[Any] = []
    stack: list[Iterator[tuple[Any, Any]]] = []
    item: Any = value
    while True:
        if isinstance(item, _CONTAINERS):
            if len(stack) >= max_depth:
                return (422, "ValidationError",
                        f"{_where(keys[:3])}...: nested deeper than {max_depth} levels")
            stack.append(iter(item.items()) if isinstance(item, dict) else enumerate(item))
            keys.append(None)
        elif isinstance(item, _CHECKED) and (problem := _scalar_problem(item)) is not None:
            return 422, "ValidationError", f"{_where(keys)}: {problem}"
        while stack:
            entry = next(stack[-1], None)
            if entry is not None:
                keys[-1], item = entry
                if isinstance(keys[-1], str) and _scalar_problem(keys[-1]) is not None:
                    return (422, "ValidationError",
                            f"{_where(keys)}: key is not valid Unicode (lone surrogate)")
                break
            stack.pop()
            keys.pop()
        else:
            return None


_CONTAINERS = (dict, list)
_CHECKED = (str, _OutOfRange)


def _where(keys: list[Any]) -> str:
    return ".".join(["body", *map(str, keys)])


def _scalar_problem(item: Any) -> str | None:
    if isinstance(item, _OutOfRange):
        return f"number {item.text[:40]} is out of range (beyond a double)"
    try:
        item.encode("utf-8")
    except UnicodeEncodeError:
        return "string is not valid Unicode (lone surrogate)"
    return None
