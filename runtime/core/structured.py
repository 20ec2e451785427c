"""Tools offered to a model and answers that must fit a schema.

What a caller passes as ``tools=`` (names of registered tools, ``@tool`` functions, OpenAI-style
function specs) and ``response_format=`` (a pydantic model or a JSON schema) becomes the request's
``ToolSpec`` and ``ResponseFormat`` here; a tool call's arguments and a structured answer are checked
against their JSON schemas (``jsonschema``); and ``example_value`` makes a value that fits a schema,
deterministically from a seed (what the simulated engine answers with).
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Callable, Iterable
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from pydantic import BaseModel, ValidationError

from runtime.core.errors import AnswerDoesNotFit, ConfigError
from runtime.core.models import ChatRequest, ResponseFormat, ToolCall, ToolSpec

Lookup = Callable[[str], Any]  # a registered tool's name -> the tool (ToolNotFound if none)


# -- what the caller offers -------------------------------------------------------------------------

def tool_specs(tools: Iterable[Any], lookup: Lookup | None = None) -> tuple[ToolSpec, ...]:
    """``tools=`` as the request's specs: each a ``ToolSpec``, a registered tool's name (found with
    ``lookup``), a ``@tool`` (anything with ``name``, ``description`` and ``args_model``), or an
    OpenAI function spec (``{"type": "function", "function": {...}}`` or its inner object)."""
    return tuple(as_tool_spec(t, lookup) for t in tools)


def wire_name(name: str) -> str:
    """A tool's name as a model sees it: an MCP server's tool ``files.read_file`` is
    ``files__read_file`` (models and OpenAI's API take no dot); the runtime knows it by both."""
    return name.replace(".", "__", 1)


def as_tool_spec(tool: Any, lookup: Lookup | None = None) -> ToolSpec:
    if isinstance(tool, ToolSpec):
        return tool
    if isinstance(tool, str):
        if lookup is None:
            raise ConfigError(f"tool {tool!r} is named, but no registered tools are known here")
        tool = lookup(tool)
    if isinstance(tool, dict):
        inner = tool.get("function", tool) if tool.get("type", "function") == "function" else None
        if not isinstance(inner, dict):
            raise ConfigError(f"a tool spec must be a function: {tool!r}")
        try:
            spec = ToolSpec.model_validate({k: v for k, v in inner.items() if k != "strict"})
        except ValidationError as e:
            raise ConfigError(f"bad tool spec {inner.get('name')!r}: {e.errors()[0]['msg']}") from None
        check_schema(spec.parameters, f"tool {spec.name!r}")
        return spec
    args_model = getattr(tool, "args_model", None)
    if isinstance(getattr(tool, "name", None), str) and isinstance(args_model, type) \
            and issubclass(args_model, BaseModel):
        return ToolSpec(name=wire_name(tool.name), description=getattr(tool, "description", "") or "",
                        parameters=getattr(tool, "input_schema", None)
                        or args_model.model_json_schema())
    raise ConfigError(f"cannot offer {tool!r} as a tool: give a registered tool's name, a @tool "
                      "function or an OpenAI function spec")


def as_response_format(fmt: Any) -> ResponseFormat | None:
    """``response_format=`` as the request's: a pydantic model class, a JSON schema, OpenAI's
    ``{"type": "json_schema", "json_schema": {"name", "schema"}}``, or a ``ResponseFormat``."""
    if fmt is None or isinstance(fmt, ResponseFormat):
        return fmt
    if isinstance(fmt, type) and issubclass(fmt, BaseModel):
        name = re.sub(r"[^A-Za-z0-9_-]", "_", fmt.__name__)[:64] or "answer"
        return ResponseFormat(name=name, json_schema=fmt.model_json_schema())
    if isinstance(fmt, dict):
        if fmt.get("type") == "json_schema" and isinstance(fmt.get("json_schema"), dict):
            inner = fmt["json_schema"]
            fmt = ResponseFormat(name=inner.get("name", "answer"), json_schema=inner.get("schema", {}))
        else:
            fmt = ResponseFormat(json_schema=fmt)
        check_schema(fmt.json_schema, "response_format")
        return fmt
    raise ConfigError(f"response_format must be a pydantic model or a JSON schema, not {fmt!r}")


def check_schema(schema: dict[str, Any], what: str) -> None:
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as e:
        raise ConfigError(f"{what}: not a valid JSON schema: {e.message}") from None


# -- what the model answers -------------------------------------------------------------------------

def schema_problems(schema: dict[str, Any], value: Any) -> list[str]:
    """Where ``value`` does not fit ``schema``, one line per problem (empty when it fits)."""
    return [f"{'/'.join(str(p) for p in e.absolute_path) or '(value)'}: {e.message}"
            for e in _validator(json.dumps(schema, sort_keys=True)).iter_errors(value)]


@functools.lru_cache(maxsize=512)
def _validator(schema: str) -> Draft202012Validator:
    """A schema's validator, made once (making one costs far more than a check: a tool's
    arguments are checked on every call)."""
    return Draft202012Validator(json.loads(schema))


def call_problems(request: ChatRequest, call: ToolCall) -> list[str]:
    """Why a tool call of the model cannot run as asked: a tool not offered, or arguments that do
    not fit its schema (what goes back to the model as the tool's error)."""
    spec = request.tool(call.name)
    if spec is None:
        return [f"no tool {call.name!r} was offered (offered: {[t.name for t in request.tools]})"]
    return schema_problems(spec.parameters, call.arguments)


def parse_answer(request: ChatRequest, text: str) -> Any:
    """The answer as a value that fits ``request.response_format`` (AnswerDoesNotFit if not)."""
    assert request.response_format is not None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise AnswerDoesNotFit(request.model, f"not JSON ({e.msg} at {e.pos})") from None
    problems = schema_problems(request.response_format.json_schema, value)
    if problems:
        raise AnswerDoesNotFit(request.model, "; ".join(problems[:5]))
    return value


def parse_arguments(text: str) -> dict[str, Any]:
    """A tool call's arguments as the model wrote them (JSON text); not an object: ``{}``, with the
    text kept under ``"_unparsed"`` so the schema check names the problem."""
    try:
        value = json.loads(text or "{}")
    except json.JSONDecodeError:
        return {"_unparsed": text}
    return value if isinstance(value, dict) else {"_unparsed": text}


# -- a value that fits ------------------------------------------------------------------------------

def example_value(schema: dict[str, Any], seed: str, text: str = "") -> Any:
    """A value that fits ``schema``, the same for the same seed: every property of an object, the
    first choice of an ``anyOf``, numbers within their bounds, strings from ``text`` (cut to
    ``maxLength``) unless an ``enum`` or ``const`` decides. Patterns and formats are not followed."""
    return _Maker(schema, seed, text).make(schema, "")


class _Maker:
    def __init__(self, root: dict[str, Any], seed: str, text: str) -> None:
        self.root = root
        self.seed = seed
        self.text = " ".join(text.split()) or "value"

    def pick(self, path: str, n: int) -> int:
        digest = hashlib.sha256(f"{self.seed}|{path}".encode()).digest()
        return int.from_bytes(digest[:4], "big") % max(n, 1)

    def resolve(self, schema: dict[str, Any]) -> dict[str, Any]:
        ref = schema.get("$ref")
        while isinstance(ref, str) and ref.startswith("#/"):
            node: Any = self.root
            for part in ref[2:].split("/"):
                node = node[part.replace("~1", "/").replace("~0", "~")]
            schema = {**node, **{k: v for k, v in schema.items() if k != "$ref"}}
            ref = node.get("$ref")
        return schema

    def make(self, schema: Any, path: str) -> Any:
        if not isinstance(schema, dict):
            return None
        schema = self.resolve(schema)
        if "const" in schema:
            return schema["const"]
        if schema.get("enum"):
            return schema["enum"][self.pick(path, len(schema["enum"]))]
        for key in ("anyOf", "oneOf"):
            if schema.get(key):
                options = [o for o in schema[key] if self.resolve(o).get("type") != "null"]
                return self.make((options or schema[key])[0], path)
        if schema.get("allOf"):
            merged: dict[str, Any] = {}
            for part in schema["allOf"]:
                merged.update(self.resolve(part))
            return self.make({**{k: v for k, v in schema.items() if k != "allOf"}, **merged}, path)
        kind = schema.get("type")
        if isinstance(kind, list):
            kind = next((k for k in kind if k != "null"), "null")
        if kind is None:
            kind = "object" if "properties" in schema else "string"
        return getattr(self, f"_{kind}", self._string)(schema, path)

    def _object(self, schema: dict[str, Any], path: str) -> dict[str, Any]:
        return {name: self.make(sub, f"{path}/{name}")
                for name, sub in (schema.get("properties") or {}).items()}

    def _array(self, schema: dict[str, Any], path: str) -> list[Any]:
        low = int(schema.get("minItems", 1))
        high = int(schema.get("maxItems", max(low, 2)))
        count = min(max(low, 1 + self.pick(path, 2)), high)
        return [self.make(schema.get("items", {}), f"{path}/{i}") for i in range(count)]

    def _string(self, schema: dict[str, Any], path: str) -> str:
        value = self.text[: int(schema.get("maxLength", 200))]
        low = int(schema.get("minLength", 0))
        return value + "x" * max(low - len(value), 0)

    def _integer(self, schema: dict[str, Any], path: str) -> int:
        low, high = _bounds(schema, 0, 100)
        low, high = int(-(-low // 1)), int(high // 1)
        return low + self.pick(path, high - low + 1) if high >= low else low

    def _number(self, schema: dict[str, Any], path: str) -> float:
        low, high = _bounds(schema, 0.0, 100.0)
        return round(low + (high - low) * self.pick(path, 1001) / 1000, 3)

    def _boolean(self, schema: dict[str, Any], path: str) -> bool:
        return bool(self.pick(path, 2))

    def _null(self, schema: dict[str, Any], path: str) -> None:
        return None


def _bounds(schema: dict[str, Any], low: float, high: float) -> tuple[float, float]:
    lo = schema.get("minimum", schema.get("exclusiveMinimum", low))
    hi = schema.get("maximum", schema.get("exclusiveMaximum", max(high, lo)))
    if "exclusiveMinimum" in schema and "minimum" not in schema:
        lo += 1 if schema.get("type") == "integer" else 1e-3
    if "exclusiveMaximum" in schema and "maximum" not in schema:
        hi -= 1 if schema.get("type") == "integer" else 1e-3
    return float(lo), float(hi)
