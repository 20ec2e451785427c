"""LLM text streams into the task's events while it is generated, before the task ends."""

from __future__ import annotations

from runtime import TaskStatus


def test_generated_text_arrives_as_token_events_before_the_end(shared_runtime) -> None:
    client = shared_runtime(simulated={"ttft_s": 0.05, "tpot_s": 0.03}).client()
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


def test_cancel_aborts_the_in_flight_llm_request(shared_runtime) -> None:
    from tests.conftest import wait_for

    client = shared_runtime(simulated={"ttft_s": 0.05, "tpot_s": 0.2}).client()
    task = client.submit("chatty", {"text": "a long answer please"})
    wait_for(lambda: any(e.kind == "tokens" for e in client.events(task.id)), what="tokens to flow")
    client.cancel(task.id)
    done = client.wait(task.id, timeout_s=30)
    assert done.status is TaskStatus.CANCELLED
    events = list(client.events(task.id))
    assert not any(e.kind == "step" for e in events)  # the cut-off completion was never recorded
    streamed = "".join(e.data["text"] for e in events if e.kind == "tokens").split()
    cancelled_at = next(e.at for e in events if e.kind == "cancel_requested")
    assert done.finished_at - cancelled_at < 2.0  # well before the 40 tokens' 8 s would have run
    assert len(streamed) < 20
