"""Tools and structured answers for an engine that can hold its answer to a JSON schema but does
not call tools itself: the offered tools and the answer become one schema, the tools are said in a
system message, and the constrained JSON is read back as a tool call or the answer.

The in-process vLLM engine always works so (vLLM's structured outputs); the OpenAI engine does with
``tool_mode="json_schema"`` (the schema goes as ``response_format``), for servers whose own tool
calling does not hold a small model to the tools' schemas.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from runtime.core.errors import AnswerDoesNotFit
from runtime.core.models import ChatRequest, Completion, ToolCall, Usage
from runtime.core.structured import parse_answer


def answer_schema(request: ChatRequest) -> dict[str, Any] | None:
    """The JSON schema the model's answer is held to, or None for free text.

    A tool turn is ``{"name": <tool>, "arguments": {...}}`` (one of the offered tools, each with its
    own arguments' schema); where the model may also answer (``tool_choice="auto"``) the answer is
    ``{"answer": ...}``, text or the ``response_format``'s value. Without tools, a ``response_format``
    is the schema itself."""
    fmt = request.response_format.json_schema if request.response_format is not None else None
    if not request.calls_tools:
        return fmt
    chosen = [t for t in request.tools
              if request.tool_choice in ("auto", "required") or t.name == request.tool_choice]
    options: list[dict[str, Any]] = [
        {"type": "object", "properties": {"name": {"const": t.name}, "arguments": t.parameters},
         "required": ["name", "arguments"], "additionalProperties": False} for t in chosen]
    if request.tool_choice == "auto":
        options.append({"type": "object", "properties": {"answer": fmt or {"type": "string"}},
                        "required": ["answer"], "additionalProperties": False})
    return options[0] if len(options) == 1 else {"anyOf": options}


def prompt_messages(request: ChatRequest) -> list[Any]:
    """The conversation for the chat template: the tools (and how to call them) said in a system
    message, and each earlier tool call written as the JSON the model answered with."""
    messages: list[Any] = []
    if request.calls_tools:
        listed = "\n".join(f"- {t.name}: {t.description or t.name}; arguments: "
                           f"{json.dumps(t.parameters)}" for t in request.tools)
        how = ('To call a tool, answer {"name": <tool>, "arguments": {...}}'
               + (', or answer {"answer": ...} once you can.' if request.tool_choice == "auto"
                  else "."))
        messages.append({"role": "system", "content": f"You can call these tools:\n{listed}\n{how}"})
    for m in request.messages:
        content = m.content or "\n".join(
            json.dumps({"name": c.name, "arguments": c.arguments}) for c in m.tool_calls)
        messages.append({"role": m.role, "content": content})
    return messages


def constrained_completion(request: ChatRequest, model: str, text: str, usage: Usage) -> Completion:
    """A constrained answer (``answer_schema``) as a Completion: a tool call, or the answer (text, or
    the parsed ``response_format`` value)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise AnswerDoesNotFit(model, f"not JSON ({e.msg} at {e.pos})") from None
    if request.calls_tools and isinstance(value, dict) and "name" in value:
        digest = hashlib.sha256(f"{request.request_id}|{text}".encode()).hexdigest()[:16]
        call = ToolCall(id=f"call_{digest}", name=str(value["name"]),
                        arguments=value.get("arguments") or {})
        return Completion(model=model, text="", finish_reason="tool_calls", usage=usage,
                          tool_calls=(call,))
    if request.calls_tools:
        value = value.get("answer") if isinstance(value, dict) else value
    if request.response_format is None:
        return Completion(model=model, text=str(value), usage=usage)
    answer = json.dumps(value)
    return Completion(model=model, text=answer, usage=usage, parsed=parse_answer(request, answer))
