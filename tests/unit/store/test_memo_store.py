"""The LLM memo's Store operations and a model call's replay, on SQLite and PostgreSQL alike: an
entry is kept per tenant and key, the first one wins, it survives reopening the Store; a replayed
model call's tokens are its task's."""

from __future__ import annotations

from runtime.core.models import Completion, DeadLetter, TaskStatus, ToolCall, Usage
from tests.unit.stores import T0, AnyStore, Backend, lease, running


def answer(text: str, model: str = "m1") -> Completion:
    return Completion(model=model, text=text, usage=Usage(prompt_tokens=5, completion_tokens=3),
                      tool_calls=(ToolCall(id="c1", name="look", arguments={"q": ["x", 1]}),),
                      parsed={"ok": True}, finish_reason="tool_calls")


def test_the_memo_keeps_an_answer_per_tenant_and_key_and_the_first_wins(store: AnyStore) -> None:
    assert store.memo_get("acme", "k1", T0) is None

    assert store.memo_put("acme", "k1", answer("first"), T0)
    assert not store.memo_put("acme", "k1", answer("second"), T0 + 1)  # kept: nothing changes

    assert store.memo_get("acme", "k1", T0 + 10**9) == answer("first")  # without a limit, for good
    assert store.memo_get("globex", "k1", T0) is None  # another tenant's key holds nothing of acme's
    assert store.memo_put("globex", "k1", answer("theirs"), T0 + 2)
    kept = store.memo_get("globex", "k1", T0 + 2)
    assert kept is not None and kept.text == "theirs"
    assert store.memo_get("acme", "k2", T0) is None


def test_an_entry_older_than_max_age_answers_nothing_and_the_next_answer_replaces_it(
        store: AnyStore) -> None:
    assert store.memo_put("acme", "k1", answer("first"), T0, max_age_s=60)
    assert store.memo_get("acme", "k1", T0 + 60, max_age_s=60) == answer("first")
    assert not store.memo_put("acme", "k1", answer("second"), T0 + 30, max_age_s=60)  # it lasts

    assert store.memo_get("acme", "k1", T0 + 61, max_age_s=60) is None
    assert store.memo_put("acme", "k1", answer("fresh"), T0 + 61, max_age_s=60)
    kept = store.memo_get("acme", "k1", T0 + 100, max_age_s=60)
    assert kept is not None and kept.text == "fresh"
    assert store.memo_get("acme", "k1", T0 + 122, max_age_s=60) is None


def test_a_memo_entry_is_never_marked_cached_and_survives_reopening(backend: Backend) -> None:
    first = backend.open()
    first.memo_put("acme", "k1", answer("kept").model_copy(update={"cached": True}), T0)
    first.close()

    kept = backend.open().memo_get("acme", "k1", T0)
    assert kept == answer("kept") and not kept.cached


def test_memo_puts_share_a_transaction_with_other_writes(store: AnyStore) -> None:
    running(store, "t1")
    results = store.apply([
        ("record_step", {"lease": lease(store, "t1", "w1"), "key": "llm:m1", "output": b"x",
                         "blobs": {}}),
        ("memo_put", {"tenant": "acme", "key": "k1", "completion": answer("a")}),
        ("memo_put", {"tenant": "acme", "key": "k1", "completion": answer("b")}),
    ], T0 + 1)

    assert results == [False, True, False]
    kept = store.memo_get("acme", "k1", T0 + 1)
    assert kept is not None and kept.text == "a"


def model_letter(letter_id: str, task_id: str, step_key: str) -> DeadLetter:
    return DeadLetter(id=letter_id, tool="llm:m1", args={"request": {}, "models": ["m1"]},
                      error="down", error_type="EngineUnavailable", attempts=3, task_id=task_id,
                      step_key=step_key, tenant="acme", created_at=T0)


def test_a_replayed_model_calls_tokens_are_its_tasks(store: AnyStore) -> None:
    running(store, "t1")
    store.add_usage(lease(store, "t1", "w1"), "m1", 10, 4, T0 + 1)
    store.finish(lease(store, "t1", "w1"), TaskStatus.FAILED, None, "model call failed", T0 + 2)
    store.add_dead_letter(model_letter("d1", "t1", "llm:m1"))

    done = store.replayed("d1", True, {"text": "hi"}, "", 1, T0 + 3, step_output=b"answer",
                          usage=("m2", 7, 2))

    assert done.status == "replayed"
    task = store.get_task("t1")
    assert task.status is TaskStatus.QUEUED
    assert task.usage == {"m1": Usage(prompt_tokens=10, completion_tokens=4),
                          "m2": Usage(prompt_tokens=7, completion_tokens=2)}
    # a replay that failed spends nothing on the task
    store.add_dead_letter(model_letter("d2", "t1", "llm:m1#2"))
    store.replayed("d2", False, None, "still down", 1, T0 + 4, usage=("m2", 100, 100))
    assert store.get_task("t1").usage == task.usage
    # a letter whose task is gone is replayed all the same
    store.add_dead_letter(model_letter("d3", "gone", "llm:m1"))
    assert store.replayed("d3", True, {}, "", 1, T0 + 5, usage=("m2", 1, 1)).status == "replayed"
