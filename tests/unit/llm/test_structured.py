"""Tool calls and structured answers below the agent loop: what a chat offers (``tools=``,
``response_format=``) made into the request, a value made to fit a schema, the simulated engine's
policy and scripts, and the OpenAI engine's wire form of tools and tool calls."""

from __future__ import annotations

import asyncio
import json
from typing import Any, Literal

import httpx
import pytest
from pydantic import BaseModel, Field, ValidationError

from runtime.authoring.workflow import chat_request
from runtime.core.config import OpenAIEngineConfig, SimulatedEngineConfig
from runtime.core.errors import AnswerDoesNotFit, ConfigError, ToolNotFound
from runtime.core.models import ChatMessage, ChatRequest, ToolCall, ToolSpec
from runtime.core.structured import (
    as_response_format,
    call_problems,
    example_value,
    schema_problems,
    tool_specs,
)
from runtime.llm.openai import OpenAIEngine
from runtime.llm.simulated import SimulatedEngine
from runtime.tools import tool
from runtime.tools.registry import defined_tool


class Address(BaseModel):
    city: str = Field(min_length=2, max_length=12)
    zip: str | None = None


class Ticket(BaseModel):
    category: Literal["billing", "shipping", "other"]
    urgency: int = Field(ge=1, le=5)
    score: float = Field(gt=0, lt=1)
    tags: list[str] = Field(min_length=2, max_length=3)
    address: Address
    urgent: bool


@tool
def lookup_order(order_id: str, include_items: bool = False) -> dict[str, Any]:
    """Look an order up by its id."""
    return {"order_id": order_id}


@tool(name="look_up_fact")
def look_up_fact(query: str) -> str:
    """Look something up."""
    return query


FAST = SimulatedEngineConfig(ttft_s=0, tpot_s=0)


def request(*messages: ChatMessage | dict[str, Any], **kw: Any) -> ChatRequest:
    return ChatRequest(model="m", messages=[m if isinstance(m, ChatMessage)
                                            else ChatMessage.model_validate(m) for m in messages],
                       **kw)


def user(text: str) -> ChatMessage:
    return ChatMessage(role="user", content=text)


# -- a value that fits -----------------------------------------------------------------------------

@pytest.mark.parametrize("seed", ["a", "b", "where is my parcel?", ""])
def test_a_made_value_fits_its_schema_and_is_the_same_for_the_same_seed(seed: str) -> None:
    schema = Ticket.model_json_schema()
    value = example_value(schema, seed, "my parcel is late")
    assert schema_problems(schema, value) == []
    assert Ticket.model_validate(value)
    assert example_value(schema, seed, "my parcel is late") == value


def test_strings_come_from_the_conversation_within_their_bounds() -> None:
    value = example_value({"type": "object", "properties": {"q": {"type": "string", "maxLength": 9},
                                                            "p": {"type": "string", "minLength": 30}}},
                          "s", "what is the weather in Paris")
    assert value["q"] == "what is t" and value["p"].startswith("what is the weather in Paris")
    assert len(value["p"]) == 30


def test_schema_problems_name_the_path_and_the_rule() -> None:
    problems = schema_problems(Ticket.model_json_schema(), {"category": "food", "urgency": 9})
    assert any(p.startswith("category:") for p in problems)
    assert any(p.startswith("urgency:") for p in problems)
    assert any("'address' is a required property" in p for p in problems)


# -- what a chat offers ----------------------------------------------------------------------------

def test_tools_are_offered_by_name_by_function_or_as_openai_specs() -> None:
    openai_form = {"type": "function", "function": {"name": "weather", "description": "d",
                                                    "parameters": {"type": "object", "properties": {
                                                        "city": {"type": "string"}},
                                                        "required": ["city"]}, "strict": True}}
    specs = tool_specs(["look_up_fact", lookup_order, openai_form, openai_form["function"]],
                       defined_tool)
    assert [s.name for s in specs] == ["look_up_fact", "lookup_order", "weather", "weather"]
    assert specs[1].description == "Look an order up by its id."
    assert specs[1].parameters["required"] == ["order_id"]
    assert specs[2] == specs[3]


def test_a_bad_tool_or_format_is_a_config_error_before_anything_runs() -> None:
    with pytest.raises(ToolNotFound, match="nope"):
        tool_specs(["nope"], defined_tool)
    with pytest.raises(ConfigError, match="cannot offer 42"):
        tool_specs([42])
    with pytest.raises(ConfigError, match="bad tool spec 'x y'"):
        tool_specs([{"name": "x y"}])
    with pytest.raises(ConfigError, match="not a valid JSON schema"):
        tool_specs([{"name": "t", "parameters": {"type": "nonsense"}}])
    with pytest.raises(ConfigError, match="not a valid JSON schema"):
        as_response_format({"type": 3})
    with pytest.raises(ConfigError, match="tool_choice 'other' is none of"):
        chat_request("m", "hi", max_tokens=8, temperature=0, tools=["look_up_fact"], tool_choice="other",
                     response_format=None, priority=0, tenant="t")
    with pytest.raises(ValidationError, match='"required" needs tools'):
        request(user("hi"), tool_choice="required")
    with pytest.raises(ValidationError, match="offered twice"):
        request(user("hi"), tools=[ToolSpec(name="a"), ToolSpec(name="a")])


def test_response_formats_from_a_model_a_schema_or_openais_form() -> None:
    from_model = as_response_format(Ticket)
    assert from_model is not None and from_model.name == "Ticket"
    assert from_model.json_schema == Ticket.model_json_schema()
    bare = as_response_format({"type": "object", "properties": {"a": {"type": "integer"}}})
    assert bare is not None and bare.name == "answer"
    wrapped = as_response_format({"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "integer"}}})
    assert wrapped is not None and (wrapped.name, wrapped.json_schema) == ("x", {"type": "integer"})


def test_a_tool_call_is_checked_against_the_offered_tools() -> None:
    r = request(user("hi"), tools=tool_specs([lookup_order]))
    assert call_problems(r, ToolCall(id="1", name="lookup_order", arguments={"order_id": "7"})) == []
    assert call_problems(r, ToolCall(id="1", name="lookup_order", arguments={})) == [
        "(value): 'order_id' is a required property"]
    assert "no tool 'drop_tables' was offered" in call_problems(
        r, ToolCall(id="1", name="drop_tables", arguments={}))[0]


# -- the simulated engine's policy -----------------------------------------------------------------

def chat(r: ChatRequest, config: SimulatedEngineConfig = FAST) -> Any:
    return asyncio.run(SimulatedEngine("m", config).chat(r))


def test_offered_tools_are_called_in_turn_then_it_answers() -> None:
    tools = tool_specs(["look_up_fact", lookup_order], defined_tool)
    conversation: list[ChatMessage] = [user("where is order 17?")]
    called = []
    for _ in range(3):
        completion = chat(request(*conversation, tools=tools))
        if not completion.tool_calls:
            break
        (call,) = completion.tool_calls
        assert completion.finish_reason == "tool_calls" and completion.text == ""
        assert call_problems(request(user("x"), tools=tools), call) == []
        called.append(call.name)
        conversation += [ChatMessage(role="assistant", tool_calls=(call,)),
                         ChatMessage(role="tool", tool_call_id=call.id, content="ok")]
    assert called == ["look_up_fact", "lookup_order"]
    assert completion.finish_reason == "stop" and completion.text and not completion.tool_calls
    first = chat(request(user("where is order 17?"), tools=tools)).tool_calls[0]
    assert first.arguments == {"query": "where is order 17?"}  # made from the user's words


def test_tool_choice_required_named_and_none() -> None:
    tools = tool_specs(["look_up_fact", lookup_order], defined_tool)
    answered = [user("q"), ChatMessage(role="tool", name="look_up_fact", content="1"),
                ChatMessage(role="tool", name="lookup_order", content="2")]
    assert chat(request(*answered, tools=tools)).tool_calls == ()
    assert chat(request(*answered, tools=tools, tool_choice="required")).tool_calls[0].name == "look_up_fact"
    assert chat(request(*answered, tools=tools, tool_choice="lookup_order")).tool_calls[0].name \
        == "lookup_order"
    assert chat(request(user("q"), tools=tools, tool_choice="none")).tool_calls == ()


def test_a_response_format_answer_is_json_that_fits_and_is_parsed() -> None:
    completion = chat(request(user("my parcel is late"), response_format=as_response_format(Ticket),
                              max_tokens=4))  # a constrained answer is whole whatever max_tokens
    assert Ticket.model_validate(completion.parsed)
    assert json.loads(completion.text) == completion.parsed
    assert completion.finish_reason == "stop" and completion.usage.completion_tokens > 4


def test_a_script_decides_the_replies() -> None:
    config = SimulatedEngineConfig(ttft_s=0, tpot_s=0, script="tests.apps.scripts:lookup_then_answer")
    tools = tool_specs(["look_up_fact"], defined_tool)
    first = chat(request(user("order 9"), tools=tools), config)
    assert first.tool_calls == (ToolCall(id="call-1", name="look_up_fact", arguments={"query": "order 9"}),)
    second = chat(request(user("order 9"), ChatMessage(role="assistant", tool_calls=first.tool_calls),
                          ChatMessage(role="tool", tool_call_id="call-1", content="shipped"),
                          tools=tools), config)
    assert second.text == "found: shipped" and second.finish_reason == "stop"
    bad = SimulatedEngineConfig(script="tests.apps.scripts:always_a_number")
    with pytest.raises(ConfigError, match="returned int"):
        chat(request(user("x")), bad)
    with pytest.raises(ConfigError, match="cannot be loaded"):
        SimulatedEngine("m", SimulatedEngineConfig(script="tests.apps.scripts:missing"))
    with pytest.raises(ValidationError):
        SimulatedEngineConfig(script="not a path")


# -- the OpenAI engine's wire form -----------------------------------------------------------------

def sse(*chunks: dict[str, Any]) -> bytes:
    base = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m"}
    return b"".join(f"data: {json.dumps({**base, **c})}\n\n".encode() for c in chunks) \
        + b"data: [DONE]\n\n"


def delta(d: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": d, "finish_reason": finish}]}


def openai_chat(r: ChatRequest, body: bytes, **config: Any) -> tuple[Any, dict[str, Any]]:
    sent: dict[str, Any] = {}

    def answer(req: httpx.Request) -> httpx.Response:
        sent.update(json.loads(req.content))
        return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})

    async def run() -> Any:
        async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as http:
            return await OpenAIEngine("m", OpenAIEngineConfig(
                base_url="http://upstream/v1", **config), http).chat(r)

    return asyncio.run(run()), sent


def test_the_openai_engine_sends_tools_and_reads_streamed_tool_calls() -> None:
    tools = tool_specs([lookup_order])
    r = request(user("order 7?"), ChatMessage(role="assistant", tool_calls=(
        ToolCall(id="a", name="lookup_order", arguments={"order_id": "6"}),)),
        ChatMessage(role="tool", tool_call_id="a", content="none"), tools=tools,
        tool_choice="lookup_order")
    body = sse(delta({"role": "assistant", "tool_calls": [
                   {"index": 0, "id": "call_x", "type": "function",
                    "function": {"name": "lookup_order", "arguments": ""}}]}),
               delta({"tool_calls": [{"index": 0, "function": {"arguments": '{"order_'}}]}),
               delta({"tool_calls": [{"index": 0, "function": {"arguments": 'id": "7"}'}}]},
                     "tool_calls"),
               {"choices": [], "usage": {"prompt_tokens": 20, "completion_tokens": 9,
                                         "total_tokens": 29}})
    completion, sent = openai_chat(r, body)
    assert completion.tool_calls == (ToolCall(id="call_x", name="lookup_order",
                                              arguments={"order_id": "7"}),)
    assert completion.finish_reason == "tool_calls" and completion.usage.total_tokens == 29
    assert sent["tools"] == [{"type": "function", "function": tools[0].model_dump()}]
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "lookup_order"}}
    assert sent["messages"][1]["tool_calls"][0]["function"] == {
        "name": "lookup_order", "arguments": '{"order_id": "6"}'}
    assert sent["messages"][2] == {"role": "tool", "content": "none", "tool_call_id": "a"}


def test_the_openai_engine_parses_a_response_format_answer_or_says_it_does_not_fit() -> None:
    fmt = as_response_format(Address)
    r = request(user("where?"), response_format=fmt)
    completion, sent = openai_chat(r, sse(delta({"content": '{"city": '}),
                                          delta({"content": '"Lyon"}'}, "stop")))
    assert completion.parsed == {"city": "Lyon"}
    assert sent["response_format"]["json_schema"]["schema"] == Address.model_json_schema()
    with pytest.raises(AnswerDoesNotFit, match="city"):
        openai_chat(r, sse(delta({"content": '{"city": "L"}'}, "stop")))
    with pytest.raises(AnswerDoesNotFit, match="not JSON"):
        openai_chat(r, sse(delta({"content": "Lyon, France"}, "stop")))


def test_the_openai_engine_in_json_schema_mode_sends_one_schema_and_reads_a_tool_call() -> None:
    """tool_mode="json_schema": no ``tools`` on the wire; the tools and the answer as one schema in
    ``response_format``; an earlier call and its result said as text; the JSON read back."""
    tools = tool_specs([lookup_order])
    r = request(user("order 7?"), ChatMessage(role="assistant", tool_calls=(
        ToolCall(id="a", name="lookup_order", arguments={"order_id": "6"}),)),
        ChatMessage(role="tool", tool_call_id="a", name="lookup_order", content="none"),
        tools=tools, request_id="t/llm")
    shown: list[str] = []
    body = sse(delta({"content": '{"name": "lookup_order", '}),
               delta({"content": '"arguments": {"order_id": "7"}}'}, "stop"))
    completion, sent = openai_chat(r, body, tool_mode="json_schema")
    assert "tools" not in sent and "tool_choice" not in sent
    schema = sent["response_format"]["json_schema"]["schema"]
    assert schema_problems(schema, {"name": "lookup_order", "arguments": {"order_id": "7"}}) == []
    assert schema_problems(schema, {"answer": "shipped"}) == []  # "auto": it may answer instead
    assert [m["role"] for m in sent["messages"]] == ["system", "user", "assistant", "user"]
    assert "lookup_order" in sent["messages"][0]["content"]
    assert completion.finish_reason == "tool_calls" and not shown
    assert completion.tool_calls[0].name == "lookup_order"
    assert completion.tool_calls[0].arguments == {"order_id": "7"}
    answered, _ = openai_chat(r, sse(delta({"content": '{"answer": "it shipped"}'}, "stop")),
                              tool_mode="json_schema")
    assert answered.text == "it shipped" and not answered.tool_calls


# -- the constraint of vLLM's engine and of tool_mode="json_schema" (llm/constrained.py) ---------

def test_the_vllm_constraint_is_a_tool_call_or_an_answer_and_parses_back() -> None:
    from runtime.core.models import Usage
    from runtime.llm.constrained import answer_schema, constrained_completion, prompt_messages

    tools = tool_specs(["look_up_fact", lookup_order], defined_tool)
    auto = request(user("order 7?"), tools=tools, request_id="t/llm:m")
    schema = answer_schema(auto)
    assert schema is not None and len(schema["anyOf"]) == 3  # two tools, or an answer
    call = {"name": "lookup_order", "arguments": {"order_id": "7"}}
    assert schema_problems(schema, call) == [] and schema_problems(schema, {"answer": "hi"}) == []
    assert schema_problems(schema, {"name": "lookup_order", "arguments": {}}) != []
    usage = Usage(prompt_tokens=1, completion_tokens=1)
    done = constrained_completion(auto, "m", json.dumps(call), usage)
    assert done.finish_reason == "tool_calls" and done.tool_calls[0].arguments == {"order_id": "7"}
    assert constrained_completion(auto, "m", '{"answer": "it shipped"}', usage).text == "it shipped"
    named = answer_schema(request(user("x"), tools=tools, tool_choice="look_up_fact"))
    assert named is not None and named["properties"]["name"] == {"const": "look_up_fact"}
    assert answer_schema(request(user("x"), tools=tools, tool_choice="none")) is None
    fmt = as_response_format(Address)
    assert answer_schema(request(user("x"), response_format=fmt)) == Address.model_json_schema()
    structured = constrained_completion(request(user("x"), response_format=fmt), "m",
                                        '{"city": "Lyon"}', usage)
    assert structured.parsed == {"city": "Lyon"}
    said = prompt_messages(request(user("q"), ChatMessage(role="assistant", tool_calls=(
        ToolCall(id="1", name="look_up_fact", arguments={"query": "q"}),)), tools=tools))
    assert said[0]["role"] == "system" and "lookup_order" in said[0]["content"]
    assert json.loads(said[2]["content"]) == {"name": "look_up_fact", "arguments": {"query": "q"}}
