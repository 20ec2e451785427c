"""Every RaysquadError survives a pickle round trip (it crosses Ray actor boundaries; ray#50211)."""

from __future__ import annotations

import inspect
import pickle
import types
import typing
from typing import Any

import pytest

from runtime.core import errors
from runtime.core.errors import RaysquadError

ERROR_CLASSES = sorted(
    (c for _, c in inspect.getmembers(errors, inspect.isclass)
     if issubclass(c, RaysquadError) and c.__module__ == errors.__name__),
    key=lambda c: c.__name__,
)


def _sample(annotation: Any, name: str) -> Any:
    """A representative value for a parameter, chosen by its type (distinct per name)."""
    origin = typing.get_origin(annotation)
    if origin is types.UnionType:  # X | None: a value of X
        return _sample(next(a for a in typing.get_args(annotation) if a is not type(None)), name)
    if annotation is str:
        return f"{name}-value"
    if annotation is bool:
        return True
    if annotation is int:
        return 7
    if annotation is float:
        return 2.5
    if origin is tuple:
        return (f"{name}-a", f"{name}-b")
    if origin is list:
        return [f"{name}-1", f"{name}-2"]
    if origin is dict:
        return {f"{name}-key": [1, "two"]}
    raise AssertionError(f"no sample value for {name}: {annotation!r}; extend _sample")


def own_init(cls: type) -> Any:
    """The ``__init__`` a raysquad class defines or inherits from another, or None (Exception's)."""
    for klass in cls.__mro__:
        if klass is Exception:
            return None
        if "__init__" in vars(klass):
            return vars(klass)["__init__"]
    return None


def build_args(cls: type, with_defaults: bool) -> tuple[Any, ...]:
    """Positional arguments for ``cls``: required ones only, or every one it accepts."""
    init = own_init(cls)
    if init is None:
        return (f"{cls.__name__} happened",)
    hints = typing.get_type_hints(init)
    args = []
    for param in list(inspect.signature(init).parameters.values())[1:]:
        if param.default is not inspect.Parameter.empty and not with_defaults:
            break
        args.append(_sample(hints[param.name], param.name))
    return tuple(args)


def test_discovery_finds_the_hierarchy() -> None:
    names = {c.__name__ for c in ERROR_CLASSES}
    assert {"RaysquadError", "QueueFull", "StepError", "TaskFailed"} <= names
    assert len(ERROR_CLASSES) >= 15


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__name__)
def test_init_takes_positional_arguments_only(cls: type) -> None:
    # A keyword-only parameter is what breaks unpickling (ray-project/ray#50211).
    init = own_init(cls)
    kinds = [p.kind for p in inspect.signature(init).parameters.values()] if init else []
    assert inspect.Parameter.KEYWORD_ONLY not in kinds


@pytest.mark.parametrize("with_defaults", [False, True], ids=["required", "all"])
@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__name__)
def test_pickle_round_trip(cls: type[RaysquadError], with_defaults: bool) -> None:
    args = build_args(cls, with_defaults)
    original = cls(*args)

    copy = pickle.loads(pickle.dumps(original))

    assert type(copy) is cls
    assert copy.args == original.args
    assert str(copy) == str(original)
    assert vars(copy) == vars(original)
    assert isinstance(copy, RaysquadError)
    # The message names what went wrong, not the bare args tuple.
    assert str(original) and str(original) != str(original.args)


def test_messages_carry_their_details() -> None:
    assert "'tasks' is full (3 items)" in str(errors.QueueFull("tasks", 3))
    err = errors.StepError("fetch#2", "boom", "ValueError", 3)
    assert str(err) == "step 'fetch#2' failed after 3 attempt(s): ValueError: boom"
    assert str(errors.WorkflowNotFound("x")) == "unknown workflow 'x' (loaded: none)"
    assert str(errors.InvalidInput("w", ["a: bad", "b: worse"])).endswith("a: bad; b: worse")
