"""How many bytes a value holds in memory, roughly: what the queues and the Store's admission count
against their byte bounds."""

from __future__ import annotations

import sys
from typing import Any

import ray
from pydantic import BaseModel


def approx_size(obj: Any, _depth: int = 0) -> int:
    """Bytes an item holds in the queue's memory; an ObjectRef (or a Ref) counts as its id only."""
    if isinstance(obj, (bytes, bytearray, str)):
        return len(obj)
    if isinstance(obj, ray.ObjectRef) or _depth > 20:
        return 28
    if isinstance(obj, ray.actor.ActorHandle):  # pickles to its id, whatever its methods
        return 64
    if isinstance(obj, BaseModel):
        return approx_size(obj.__dict__, _depth + 1)
    if isinstance(obj, dict):
        return sum(approx_size(k, _depth + 1) + approx_size(v, _depth + 1) for k, v in obj.items())
    if isinstance(obj, (list, tuple, set, frozenset)):
        return sum(approx_size(v, _depth + 1) for v in obj)
    if hasattr(obj, "__dict__"):
        return approx_size(vars(obj), _depth + 1)
    return sys.getsizeof(obj)
