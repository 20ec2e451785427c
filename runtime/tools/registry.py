"""``@tool``: a typed function becomes a tool with a pydantic argument model and a description.

A tool's arguments come from its signature (or, for a batching tool, from the pydantic model its one
``list[Model]`` parameter holds); its description is its docstring. A parameter annotated
``ToolContext`` is not an argument: the executor passes the tool's context there (settings, caller).
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, get_args, get_origin, get_type_hints

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError, create_model

from runtime.core.config import RetryPolicy, ToolSettings
from runtime.core.errors import ToolArgsInvalid, ToolNotFound
from runtime.core.retry import is_retryable
from runtime.core.structured import schema_problems


@dataclass(frozen=True)
class Batch:
    """Calls that arrive within ``max_wait_s`` of the first go upstream together, ``max_size`` at most."""

    max_size: int
    max_wait_s: float


def _nothing() -> None:
    pass


@dataclass(frozen=True)
class ToolContext:
    """What a tool may ask about its call: the tools' settings and who called. A tool that talks to
    an upstream calls ``reached()`` once the upstream surely has the request (its first response
    byte): the gate's request window then counts from there rather than from the call's end.

    ``over`` is set once the call is over for its caller (its result is in, or the attempt timed out
    or was cancelled). A sync tool runs in a thread that cancelling the await does not stop: a tool
    that may run long checks ``over`` (or waits on it) and stops its work, as ``sql_query`` does."""

    settings: ToolSettings
    tool: str
    task_id: str = ""
    tenant: str = "default"
    reached: Callable[[], None] = _nothing
    #: Enters the gate of another resource key for as long as the context is held (for a call that
    #: moves to another upstream, such as a redirect to another host); None where there are no gates.
    gate: Callable[[str], AbstractAsyncContextManager[object]] | None = None
    over: threading.Event = field(default_factory=threading.Event, compare=False, repr=False)


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)


class SchemaArgs(BaseModel):
    """The arguments of a tool described by a JSON schema (an MCP server's), checked against it:
    kept as given (``model_dump()`` gives them back)."""

    model_config = ConfigDict(extra="allow")


@dataclass(frozen=True)
class Tool:
    fn: Callable[..., Any]
    name: str
    description: str
    args_model: type[BaseModel]
    batch: Batch | None = None
    retry: RetryPolicy | None = None
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    timeout_s: float | None = None
    gate: str | Callable[[BaseModel], str] | None = None
    context_param: str | None = None
    #: An agent's call of it waits for a person's decision (approve, deny, or edit the arguments).
    requires_approval: bool = False
    #: A tool described by a JSON schema (an MCP server's) rather than a signature: its arguments
    #: are checked against the schema and ``fn`` gets them as one dict, ``arguments``.
    input_schema: dict[str, Any] | None = None

    def validate(self, args: dict[str, Any]) -> BaseModel:
        if self.input_schema is not None:
            problems = schema_problems(self.input_schema, args)
            if problems:
                raise ToolArgsInvalid(self.name, problems)
            return SchemaArgs.model_validate(args)
        try:
            return self.args_model.model_validate(args)
        except ValidationError as e:
            problems = [f"{'.'.join(str(p) for p in err['loc']) or '(args)'}: {err['msg']}"
                        for err in e.errors()]
            raise ToolArgsInvalid(self.name, problems) from None

    def parameters(self) -> dict[str, Any]:
        """The JSON schema of its arguments."""
        return self.input_schema or self.args_model.model_json_schema()

    def gate_key(self, args: BaseModel) -> str:
        if self.gate is None:
            return f"tool:{self.name}"
        return self.gate if isinstance(self.gate, str) else self.gate(args)

    def retryable(self, error: BaseException, policy: RetryPolicy) -> bool:
        """Whether another attempt may succeed: as the error says where it says (a Retryable, a
        timed-out attempt among them, yes; NotFound, Conflict, Refused no), else if it is one of
        ``retry_on``; never for a class the policy names as non-retryable."""
        return is_retryable(error, policy, unknown=isinstance(error, self.retry_on))

    async def call(self, args: BaseModel, ctx: ToolContext) -> Any:
        """One call (not a batching tool)."""
        kwargs: dict[str, Any] = ({"arguments": args.model_dump()} if self.input_schema is not None
                  else {name: getattr(args, name) for name in type(args).model_fields})
        if self.context_param:
            kwargs[self.context_param] = ctx
        try:
            return await _invoke(self.fn, kwargs)
        finally:
            ctx.over.set()

    async def call_batch(self, batch: list[BaseModel], ctx: ToolContext) -> list[Any]:
        """One upstream call for many requests; returns one result (or exception) per request."""
        (param,) = [p for p in inspect.signature(self.fn).parameters if p != self.context_param]
        kwargs: dict[str, Any] = {param: batch}
        if self.context_param:
            kwargs[self.context_param] = ctx
        try:
            results = await _invoke(self.fn, kwargs)
        finally:
            ctx.over.set()
        if not isinstance(results, list) or len(results) != len(batch):
            raise TypeError(f"batching tool {self.name!r} must return a list of {len(batch)} results")
        return results

    def schema(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description,
                "parameters": self.parameters(),
                "batch": None if self.batch is None else vars(self.batch)}


async def _invoke(fn: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
    if inspect.iscoroutinefunction(fn):
        return await fn(**kwargs)
    result = await asyncio.to_thread(fn, **kwargs)
    return await result if inspect.isawaitable(result) else result


def tool(fn: Callable[..., Any] | None = None, *, name: str | None = None, batch: Batch | None = None,
         retry: RetryPolicy | None = None, retry_on: tuple[type[BaseException], ...] = (Exception,),
         timeout_s: float | None = None, gate: str | Callable[[BaseModel], str] | None = None,
         requires_approval: bool = False) -> Any:
    """Declare a tool. ``gate`` names the resource key its calls pass (default ``tool:<name>``);
    ``batch`` makes it a batching tool: it then takes one ``list[SomeModel]`` and returns a list.
    ``retry_on`` names the errors worth another attempt among those that do not say so themselves
    (see ``Tool.retryable``); a timed-out attempt always is."""

    def wrap(f: Callable[..., Any]) -> Tool:
        hints = get_type_hints(f)
        params = inspect.signature(f).parameters
        context_param = next((p for p in params if _is_context(hints.get(p))), None)
        arg_params = {p: v for p, v in params.items() if p != context_param}
        tool_name = name or f.__name__
        if batch is not None:
            args_model = _batch_item_model(tool_name, arg_params, hints)
        else:
            fields: dict[str, Any] = {
                p: (hints.get(p, Any), ... if v.default is inspect.Parameter.empty else v.default)
                for p, v in arg_params.items()
            }
            args_model = create_model(f"{tool_name}_args", __base__=_Args, **fields)
        made = Tool(f, tool_name, inspect.getdoc(f) or "", args_model, batch, retry, retry_on,
                    timeout_s, gate, context_param, requires_approval)
        DEFINED[tool_name] = made
        return made

    return wrap(fn) if fn is not None else wrap


#: Every tool this process has defined (its app modules and the built-ins, as they were imported),
#: by name: what ``tools=["name"]`` of a chat offers the model.
DEFINED: dict[str, Tool] = {}


def defined_tool(name: str) -> Tool:
    """The tool of that name defined in this process (ToolNotFound if none)."""
    if name not in DEFINED:
        from runtime.tools import builtin_tools

        builtin_tools()  # the built-ins are imported on first need
    try:
        return DEFINED[name]
    except KeyError:
        raise ToolNotFound(name, tuple(sorted(DEFINED))) from None


def _is_context(annotation: Any) -> bool:
    """``ToolContext``, or ``ToolContext | None``."""
    return annotation is ToolContext or ToolContext in get_args(annotation)


def _batch_item_model(name: str, params: dict[str, inspect.Parameter],
                      hints: dict[str, Any]) -> type[BaseModel]:
    if len(params) != 1:
        raise TypeError(f"batching tool {name} must take one list[Model] parameter, not {list(params)}")
    annotation = hints.get(next(iter(params)))
    (item,) = get_args(annotation) if get_origin(annotation) is list else (None,)
    if not (isinstance(item, type) and issubclass(item, BaseModel)):
        raise TypeError(f"batching tool {name}: annotate its parameter as list[SomePydanticModel]")
    return item


class Registry:
    """The tools a runtime knows, by name."""

    def __init__(self, tools: dict[str, Tool] | None = None) -> None:
        self.tools = dict(tools or {})

    def get(self, name: str) -> Tool:
        try:
            return self.tools[name]
        except KeyError:
            raise ToolNotFound(name, tuple(sorted(self.tools))) from None

    def schemas(self) -> list[dict[str, Any]]:
        """Each tool's schema, once (an MCP tool is also known by its ``wire_name``)."""
        return [self.tools[n].schema() for n in sorted(self.tools) if self.tools[n].name == n]


def dump_result(value: Any) -> Any:
    """A tool's result as JSON-ready data (for dead letters and the HTTP API)."""
    return TypeAdapter(Any).dump_python(value, mode="json")
