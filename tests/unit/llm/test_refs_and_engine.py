"""refs.dumps/loads (no object store needed) and the simulated engine."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pydantic import BaseModel

from runtime.core import refs
from runtime.core.config import SimulatedEngineConfig
from runtime.core.models import ChatMessage, ChatRequest, Completion
from runtime.core.refs import Ref
from runtime.llm.simulated import SimulatedEngine, prompt_text, simulated_text

INSTANT = SimulatedEngineConfig(ttft_s=0, tpot_s=0)


class Report(BaseModel):
    title: str
    body: Any


# -- refs -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [
    None, 42, "text", b"\x00\xff" * 10, [1, "two", {"three": 3.0}], {"nested": {"a": (1, 2)}},
    Report(title="t", body=[1, 2]),
], ids=repr)
def test_plain_values_round_trip_without_refs(value: Any) -> None:
    data, found = refs.dumps(value)

    assert isinstance(data, bytes)
    assert found == []
    assert refs.loads(data) == value


def test_refs_inside_a_value_become_blob_pointers() -> None:
    big = Ref("task-1/fetch", 5_000_000, object_ref=None)
    other = Ref("task-1/parse", 123, object_ref=None)
    value = {"summary": "short", "pages": [big, other], "report": Report(title="r", body=big)}
    store = object()

    data, found = refs.dumps(value)
    back = refs.loads(data, store=store)

    assert found == [big, other]  # each Ref once, however often it appears
    assert len(data) < 1000
    assert back["summary"] == "short"
    page, parsed = back["pages"]
    assert isinstance(page, Ref)
    assert (page.blob_key, page.size, page.persisted, page.object_ref) == (
        "task-1/fetch", 5_000_000, True, None)
    assert page.store is store
    assert (parsed.blob_key, parsed.size) == ("task-1/parse", 123)
    assert isinstance(back["report"].body, Ref)
    assert back["report"].body.blob_key == "task-1/fetch"
    assert page.object_id is None
    assert "blob" in repr(page)


def test_loads_refuses_an_unknown_persistent_id() -> None:
    import io
    import pickle

    class Tagger(pickle.Pickler):
        def persistent_id(self, obj: Any) -> Any:
            return ("other", "k", 1) if obj == "marker" else None

    buf = io.BytesIO()
    Tagger(buf).dump(["marker"])

    with pytest.raises(pickle.UnpicklingError, match="other"):
        refs.loads(buf.getvalue())


def test_ref_without_object_or_store_cannot_be_read() -> None:
    with pytest.raises(LookupError, match="task-1/x"):
        asyncio.run(Ref("task-1/x", 1).get())


# -- simulated engine -------------------------------------------------------------------------------


def request(content: str, max_tokens: int = 128, request_id: str | None = None) -> ChatRequest:
    return ChatRequest(model="sim-small", messages=[ChatMessage(role="user", content=content)],
                       max_tokens=max_tokens, request_id=request_id)


def chat(engine: SimulatedEngine, req: ChatRequest) -> Completion:
    return asyncio.run(engine.chat(req))


def test_same_prompt_same_text_other_prompt_other_text() -> None:
    engine = SimulatedEngine("sim-small", INSTANT)

    a1 = chat(engine, request("what is ray?"))
    a2 = chat(SimulatedEngine("sim-small", INSTANT), request("what is ray?"))
    b = chat(engine, request("what is a queue?"))

    assert a1.text == a2.text
    assert a1.text != b.text
    assert a1.model == "sim-small"
    assert a1.finish_reason == "stop"
    assert a1.text[0].isupper() and a1.text.endswith(".")
    assert 8 <= len(a1.text.split()) <= 40


def test_text_depends_on_the_whole_conversation() -> None:
    engine = SimulatedEngine("sim-small", INSTANT)
    with_system = ChatRequest(model="m", messages=[ChatMessage(role="system", content="be brief"),
                                                   ChatMessage(role="user", content="hi")])

    assert chat(engine, with_system).text != chat(engine, request("hi")).text
    assert prompt_text(with_system) == "system: be brief\nuser: hi"


def test_max_tokens_is_respected() -> None:
    engine = SimulatedEngine("sim-small", INSTANT)
    full = chat(engine, request("tell me everything"))
    assert full.usage.completion_tokens > 3

    short = chat(engine, request("tell me everything", max_tokens=3))

    assert short.finish_reason == "length"
    assert short.usage.completion_tokens == 3
    assert len(short.text.split()) == 3
    assert full.text.split()[:2] == short.text.split()[:2]


def test_usage_counts() -> None:
    engine = SimulatedEngine("sim-small", INSTANT)
    req = request("one two three four")

    completion = chat(engine, req)

    assert completion.usage.prompt_tokens == len("user: one two three four".split())
    assert completion.usage.completion_tokens == len(simulated_text(prompt_text(req), 128))
    assert completion.usage.completion_tokens == len(completion.text.split())


def test_stream_yields_the_same_text_as_chat() -> None:
    engine = SimulatedEngine("sim-small", SimulatedEngineConfig(ttft_s=0, tpot_s=0.0001))
    req = request("stream me")

    async def main() -> list[str]:
        return [t async for t in engine.stream(req)]

    tokens = asyncio.run(main())

    assert len(tokens) > 1
    assert "".join(tokens) == chat(engine, req).text


def test_abort_stops_a_stream_early() -> None:
    engine = SimulatedEngine("sim-small", INSTANT)
    req = request("a long answer please", request_id="r1")
    full = simulated_text(prompt_text(req), req.max_tokens)

    async def main() -> tuple[list[str], bool, bool]:
        stream = engine.stream(req)
        first = await stream.__anext__()
        aborted = await engine.abort("r1")
        rest = [t async for t in stream]
        return [first, *rest], aborted, await engine.abort("r1")

    tokens, aborted, again = asyncio.run(main())

    assert aborted
    assert tokens == full[:1]
    assert not again  # no longer running
    assert engine._running == set() and engine._aborted == set()


def test_abort_of_a_running_chat() -> None:
    engine = SimulatedEngine("sim-small", INSTANT)
    req = request("a long answer please", request_id="r2")

    async def main() -> Completion:
        task = asyncio.create_task(engine.chat(req))
        for _ in range(100):  # yield to the loop until the request is in flight
            if "r2" in engine._running:
                break
            await asyncio.sleep(0)
        assert await engine.abort("r2")
        return await asyncio.wait_for(task, timeout=5)

    completion = asyncio.run(main())

    assert completion.finish_reason == "abort"
    assert completion.usage.completion_tokens < len(simulated_text(prompt_text(req), req.max_tokens))


def test_abort_of_an_unknown_request() -> None:
    engine = SimulatedEngine("sim-small", INSTANT)

    assert asyncio.run(engine.abort("nothing")) is False
    # A later request with that id is unaffected.
    assert chat(engine, request("x", request_id="nothing")).finish_reason == "stop"
