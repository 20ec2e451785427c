"""Which replica a request goes to: least loaded, or by affinity to its conversation (no Ray)."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

from runtime.core.models import ChatMessage, ChatRequest, Completion, Usage
from runtime.llm.engine import Router, TokenSink
from runtime.llm.routing import Picker, RoutingPolicy, Why, opening_digest, rendezvous_rank

NAMES = ["engine:m:0", "engine:m:1"]
SYSTEM = "You are a careful research assistant. Cite your sources."


def turn(opening: str, n: int, session: str | None = "task-1/agent:writer",
         system: str = SYSTEM) -> ChatRequest:
    """Turn ``n`` of a conversation that opened with ``opening``: its history grows each turn."""
    messages = [ChatMessage(role="system", content=system), ChatMessage(role="user", content=opening)]
    for k in range(1, n):
        messages += [ChatMessage(role="assistant", content=f"answer {k}"),
                     ChatMessage(role="user", content=f"tool result {k}")]
    return ChatRequest(model="m", messages=messages, session=session)


def test_every_turn_of_a_conversation_has_the_same_opening_and_openings_differ() -> None:
    assert len({opening_digest(turn("find papers on X", n)) for n in range(1, 7)}) == 1
    assert opening_digest(turn("find papers on X", 1)) != opening_digest(turn("find papers on Y", 1))
    assert opening_digest(turn("same", 1, system="a")) != opening_digest(turn("same", 1, system="b"))


def test_rendezvous_ranks_the_same_in_every_router_and_moves_few_when_a_replica_goes() -> None:
    digests = [opening_digest(turn(f"question {i}", 1)) for i in range(200)]
    three = ["engine:m:0", "engine:m:1", "engine:m:2"]
    firsts = [three[rendezvous_rank(d, three)[0]] for d in digests]
    assert firsts == [three[rendezvous_rank(d, list(three))[0]] for d in digests]  # deterministic
    assert all(firsts.count(n) > 40 for n in three)  # spread: about a third each
    two = three[:2]
    after = [two[rendezvous_rank(d, two)[0]] for d in digests]
    # Only the conversations that ranked the removed replica first move.
    assert all(a == f for a, f in zip(after, firsts, strict=True) if f != "engine:m:2")


def test_a_conversation_stays_on_the_replica_of_its_last_turn() -> None:
    picker = Picker(RoutingPolicy("affinity", slack=2))
    first, why = picker.pick(turn("find papers on X", 1), NAMES, [0, 0])
    assert why is Why.PREFIX and first == rendezvous_rank(opening_digest(turn("find papers on X", 1)),
                                                          NAMES)[0]
    # Later turns go there even when it is busier, while within the slack.
    for n, loads in [(2, [0, 0]), (3, [2, 0] if first == 0 else [0, 2])]:
        assert picker.pick(turn("find papers on X", n), NAMES, loads) == (first, Why.SESSION)
    assert picker.served_by("m", "task-1/agent:writer") == NAMES[first]


def test_a_replica_past_the_slack_gives_the_turn_to_the_least_loaded_which_then_keeps_it() -> None:
    picker = Picker(RoutingPolicy("affinity", slack=2))
    first, _ = picker.pick(turn("find papers on X", 1), NAMES, [0, 0])
    other = 1 - first
    busy = [0, 0]
    busy[first] = 3  # 3 above the other: past a slack of 2
    assert picker.pick(turn("find papers on X", 2), NAMES, busy) == (other, Why.LEAST_LOADED)
    # Its history is now on the other replica: the next turn follows it there.
    assert picker.pick(turn("find papers on X", 3), NAMES, [0, 0]) == (other, Why.SESSION)


def test_another_router_sends_a_replayed_conversation_where_its_opening_hashes() -> None:
    """A step handled again on another agent replica: that replica's router has never seen the
    conversation, and still picks the replica its first turn went to."""
    first, _ = Picker().pick(turn("find papers on X", 1), NAMES, [0, 0])
    assert Picker().pick(turn("find papers on X", 4), NAMES, [1, 1]) == (first, Why.PREFIX)


def test_first_turns_of_different_conversations_spread_over_the_replicas() -> None:
    picker = Picker(RoutingPolicy("affinity", slack=100))
    picks = [picker.pick(turn(f"question {i}", 1, session=f"t{i}"), NAMES, [0, 0])[0]
             for i in range(100)]
    assert 30 < picks.count(0) < 70


def test_least_loaded_routing_ignores_conversations() -> None:
    picker = Picker(RoutingPolicy("least_loaded"), random.Random(7))
    assert picker.pick(turn("x", 1), NAMES, [3, 1]) == (1, Why.LEAST_LOADED)
    assert picker.pick(turn("x", 2), NAMES, [1, 3]) == (0, Why.LEAST_LOADED)
    ties = {picker.pick(turn("x", 3), NAMES, [2, 2])[0] for _ in range(50)}
    assert ties == {0, 1}  # ties at random
    assert len(picker) == 0  # remembers nothing


def test_the_conversation_map_is_bounded_and_forgets_the_least_recent() -> None:
    picker = Picker(RoutingPolicy("affinity", sessions=3))
    for i in range(4):
        picker.pick(turn("q", 1, session=f"s{i}"), NAMES, [0, 0])
    picker.pick(turn("q", 2, session="s1"), NAMES, [0, 0])  # s1 used again: now the most recent
    picker.pick(turn("q", 1, session="s4"), NAMES, [0, 0])
    assert len(picker) == 3
    assert [picker.served_by("m", f"s{i}") is not None for i in range(5)] == [
        False, True, False, True, True]


def test_a_replica_gone_from_the_list_is_not_picked_for_its_conversations() -> None:
    picker = Picker(RoutingPolicy("affinity"))
    first, _ = picker.pick(turn("q", 1), NAMES, [0, 0])
    remaining = [NAMES[1 - first], "engine:m:2"]
    pick, why = picker.pick(turn("q", 2), remaining, [0, 0])
    assert why is Why.PREFIX and pick == rendezvous_rank(opening_digest(turn("q", 1)), remaining)[0]


# -- the Router with replicas that hold their requests ---------------------------------------------


class HeldReplica:
    """An engine replica whose requests run until the test lets them end."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.served: list[ChatRequest] = []
        self.release = asyncio.Event()

    async def chat(self, request: ChatRequest, stream_to: TokenSink | None = None) -> Completion:
        self.served.append(request)
        await self.release.wait()
        return Completion(model=request.model, text=self.name,
                          usage=Usage(prompt_tokens=1, completion_tokens=1))

    async def abort(self, request_id: str) -> bool:
        return False


async def until(condition: Any, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


def test_the_router_counts_its_requests_in_flight_as_loads() -> None:
    async def body() -> None:
        replicas = [HeldReplica(n) for n in NAMES]
        router = Router({"m": replicas}, policy=RoutingPolicy("affinity", slack=2))
        first = rendezvous_rank(opening_digest(turn("conversation A", 1)), NAMES)[0]
        other = replicas[1 - first]
        # Conversation A's turns pile up on its replica until it is 3 above the other...
        held = [asyncio.create_task(router.chat(turn("conversation A", n))) for n in (1, 2, 3)]
        await until(lambda: len(replicas[first].served) == 3)
        assert not other.served
        # ... so its next turn goes to the other, least-loaded replica.
        spill = asyncio.create_task(router.chat(turn("conversation A", 4)))
        await until(lambda: len(other.served) == 1)
        for r in replicas:
            r.release.set()
        texts = [c.text for c in await asyncio.gather(*held, spill)]
        assert texts == [NAMES[first]] * 3 + [other.name]
        # Loads are back to 0 and the conversation is now the other replica's.
        assert (await router.chat(turn("conversation A", 5))).text == other.name

    asyncio.run(body())


def test_the_router_with_least_loaded_routing_alternates_between_idle_replicas() -> None:
    async def body() -> None:
        replicas = [HeldReplica(n) for n in NAMES]
        router = Router({"m": replicas}, policy=RoutingPolicy("least_loaded"))
        held = [asyncio.create_task(router.chat(turn("conversation A", n))) for n in range(1, 5)]
        await until(lambda: sum(len(r.served) for r in replicas) == 4)
        assert [len(r.served) for r in replicas] == [2, 2]  # the same conversation, split
        for r in replicas:
            r.release.set()
        await asyncio.gather(*held)

    asyncio.run(body())


def test_routing_is_configured_by_the_environment(monkeypatch: Any, tmp_path: Any) -> None:
    from runtime.core.config import Settings

    assert Router.for_settings(Settings(data_dir=tmp_path), {}).picker.policy == RoutingPolicy()
    monkeypatch.setenv("RAYSQUAD_ENGINE_ROUTING", "least_loaded")
    monkeypatch.setenv("RAYSQUAD_ENGINE_AFFINITY_SLACK", "7")
    policy = Router.for_settings(Settings(data_dir=tmp_path), {}).picker.policy
    assert (policy.routing, policy.slack) == ("least_loaded", 7)
