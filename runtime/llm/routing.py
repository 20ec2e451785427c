"""Which replica of a model a chat request goes to: the least loaded, or by affinity.

An agent's conversation grows turn by turn (its instructions, then each turn's answer and tool
results), and every turn sends all of it again. A replica whose engine caches prefixes (vLLM's
prefix caching) prefills only what it has not seen, so the turn is cheapest on the replica that
served the turn before. ``affinity`` routing (``RAYSQUAD_ENGINE_ROUTING``) therefore sends a
request:

1. of a conversation it has routed before (``ChatRequest.session``: an agent step's task id and
   step key, a workflow's task id) to the replica that served its last turn, while that replica's
   load is at most ``slack`` requests above the least-loaded replica's;
2. otherwise (a first turn, a conversation this router has not seen or has forgotten, a replica
   past the bound) to the replica that rendezvous hashing of the conversation's *opening* ranks
   first (its system messages, the tools offered and its first other message: what every turn
   of it starts with), again within the bound. Every router computes the same ranking, so a
   conversation handled again on another agent replica (a replayed handling) finds the replica
   that served it before, without the routers sharing a map; and conversations with different
   openings spread over the replicas;
3. otherwise to the least-loaded replica (ties broken by the same ranking).

Loads are the requests this router has in flight on each replica. The conversation map is an LRU
of at most ``sessions`` entries. ``least_loaded`` routing is step 3 alone, ties broken at random.
"""

from __future__ import annotations

import hashlib
import random
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from runtime.core.models import ChatRequest

Routing = Literal["affinity", "least_loaded"]


class Why(StrEnum):
    """Why a replica was picked (the ``how`` label of ``raysquad_llm_routed``)."""

    SESSION = "session"  # the replica of the conversation's last turn
    PREFIX = "prefix"  # the replica its opening hashes to
    LEAST_LOADED = "least_loaded"


@dataclass(frozen=True)
class RoutingPolicy:
    """How a router picks among a model's replicas (Settings: ``engine_routing``,
    ``engine_affinity_slack``, ``engine_affinity_sessions``)."""

    routing: Routing = "affinity"
    slack: int = 4
    sessions: int = 10_000


def opening_digest(request: ChatRequest) -> bytes:
    """What every turn of the request's conversation starts with, hashed: the names of the tools
    offered, the leading system messages and the first message after them."""
    h = hashlib.blake2b(digest_size=16)
    for tool in request.tools:
        h.update(b"tool\0" + tool.name.encode() + b"\0")
    for message in request.messages:
        h.update(message.role.encode() + b"\0" + message.content.encode() + b"\0")
        if message.role != "system":
            break
    return h.digest()


def rendezvous_rank(digest: bytes, names: Sequence[str]) -> list[int]:
    """The replicas' indexes, best first, by rendezvous (highest random weight) hashing: each
    replica's score is a hash of the digest and its name, so a replica added or gone moves only
    the conversations that ranked it first."""
    def score(i: int) -> bytes:
        return hashlib.blake2b(digest + names[i].encode(), digest_size=8).digest()

    return sorted(range(len(names)), key=score, reverse=True)


class Picker:
    """Picks a replica for each request and remembers which replica served each conversation."""

    def __init__(self, policy: RoutingPolicy = RoutingPolicy(),
                 rand: random.Random | None = None) -> None:
        self.policy = policy
        self._rand = rand or random.Random()
        self._last: OrderedDict[tuple[str, str], str] = OrderedDict()  # (model, session) -> name

    def pick(self, request: ChatRequest, names: Sequence[str], loads: Sequence[int]) -> tuple[int, Why]:
        """The index of the replica ``request`` goes to among ``names`` (unique, stable across
        processes) whose loads are ``loads``, and why; the conversation is remembered as served
        there."""
        least = min(loads)
        if self.policy.routing == "least_loaded" or len(names) == 1:
            return self._rand.choice([i for i, n in enumerate(loads) if n == least]), Why.LEAST_LOADED
        within = [n - least <= self.policy.slack for n in loads]
        key = (request.model, request.session) if request.session else None
        pick, why = None, Why.LEAST_LOADED
        if key is not None and (last := self._last.get(key)) in names:
            i = names.index(last)
            if within[i]:
                pick, why = i, Why.SESSION
        ranked = rendezvous_rank(opening_digest(request), names) if pick is None else []
        if pick is None and within[ranked[0]]:
            pick, why = ranked[0], Why.PREFIX
        if pick is None:
            pick = next(i for i in ranked if loads[i] == least)
        if key is not None:
            self._remember(key, names[pick])
        return pick, why

    def _remember(self, key: tuple[str, str], name: str) -> None:
        self._last[key] = name
        self._last.move_to_end(key)
        while len(self._last) > self.policy.sessions:
            self._last.popitem(last=False)

    def served_by(self, model: str, session: str) -> str | None:
        """The replica that served the conversation's last turn, if remembered."""
        return self._last.get((model, session))

    def __len__(self) -> int:
        return len(self._last)
