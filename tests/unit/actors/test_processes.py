"""What `raysquad ps` says of each actor, from its name alone; a titled class keeps its behaviour."""

from __future__ import annotations

import pytest

from runtime.actors.processes import describe, describe_serve, titled


@pytest.mark.parametrize(("name", "expected"), [
    ("store", ("store", None, None)),
    ("control", ("control", None, None)),
    ("worker:w-3f2a", ("worker", None, "w-3f2a")),
    ("agent:researcher-2-ab12cd", ("agent", "researcher", "researcher-2-ab12cd")),
    ("agent:fact-checker-10-00ff00", ("agent", "fact-checker", "fact-checker-10-00ff00")),
    ("engine:smollm2:1", ("engine", "smollm2", "1")),
    ("engine:org/model:v2:0", ("engine", "org/model:v2", "0")),
    ("tools:0", ("tools", None, "0")),
    ("something-else", None),
])
def test_an_actor_is_described_by_its_name(name: str, expected: tuple[str, ...] | None) -> None:
    assert describe(name, "raysquad") == expected


def test_serve_actors_of_this_app_only() -> None:
    assert describe_serve("SERVE_CONTROLLER_ACTOR", "rs") == ("serve", "controller", None)
    assert describe_serve("SERVE_PROXY_ACTOR-abc", "rs") == ("serve", "proxy", None)
    assert describe_serve("SERVE_REPLICA::rs#Ingress#x1y2", "rs") == ("serve", "Ingress", "x1y2")
    assert describe_serve("SERVE_REPLICA::other#Ingress#x1y2", "rs") is None


class Replica:
    def __init__(self, role: str) -> None:
        self.role = role

    def hello(self) -> str:
        return f"hello from {self.role}"


def test_a_titled_class_is_named_for_its_role_and_made_once() -> None:
    cls = titled(Replica, "Replica(researcher)")
    assert cls.__name__ == cls.__qualname__ == "Replica(researcher)"
    assert cls("researcher").hello() == "hello from researcher" and issubclass(cls, Replica)
    assert titled(Replica, "Replica(researcher)") is cls
