"""LLM text streams into the task's events while it is generated, before the task ends."""

from __future__ import annotations

from runtime import TaskStatus


def test_generated_text_arrives_as_token_events_before_the_end(make_runtime) -> None:
    client = make_runtime(simulated={"ttft_s": 0.05, "tpot_s": 0.03}).client()
    task = client.submit("chatty", {"text": "explain leases in one paragraph"})
    done = client.wait(task.id, timeout_s=60)
    assert done.status is TaskStatus.SUCCEEDED
    events = list(client.events(task.id))
    tokens = [e for e in events if e.kind == "tokens"]
    end = next(e for e in events if e.kind == "succeeded")
    assert len(tokens) >= 3, "the text came in one piece, not streamed"
    assert all(e.seq < end.seq for e in tokens)
    assert [e.data["n"] for e in tokens] == list(range(1, len(tokens) + 1))
    assert "".join(e.data["text"] for e in tokens) == done.output
    assert all(e.data["step"] == "llm:sim-small" for e in tokens)
