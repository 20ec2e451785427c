"""Large values by reference: a Ref points at a value in the Ray object store and at its durable copy.

A step output larger than ``Settings.inline_limit_bytes`` is put into the object store once and handed
around as a Ref: passing a Ref to an agent sends the reference, never the bytes. When the step is
recorded, the Store writes the value once to a blob it owns; after a restart the object is gone and the
Ref reads the blob instead.
"""

from __future__ import annotations

import io
import pickle
from typing import Any

import ray
from ray.exceptions import ObjectLostError


class Ref:
    """A reference to a large value: ``await ref.get()`` reads it; pass the Ref itself to move it."""

    def __init__(self, blob_key: str, size: int, object_ref: ray.ObjectRef | None = None,
                 store: Any = None, persisted: bool = False) -> None:
        self.blob_key = blob_key
        self.size = size
        self.object_ref = object_ref
        self.store = store
        self.persisted = persisted

    @classmethod
    def put(cls, value: Any, blob_key: str, size: int, store: Any) -> Ref:
        """Put ``value`` into the object store (owned by the calling process)."""
        return cls(blob_key, size, ray.put(value), store)

    @property
    def object_id(self) -> str | None:
        return self.object_ref.hex() if self.object_ref is not None else None

    async def get(self) -> Any:
        """The value: from the object store while it is there, else from the Store's blob."""
        if self.object_ref is not None:
            try:
                return await self.object_ref
            except ObjectLostError:
                self.object_ref = None
        if self.store is None:
            raise LookupError(f"value {self.blob_key!r} is not in the object store and has no Store")
        data = await self.store.read_blob(self.blob_key)
        return pickle.loads(data)

    def __repr__(self) -> str:
        where = "object store" if self.object_ref is not None else "blob"
        return f"Ref({self.blob_key!r}, {self.size} bytes, {where})"


class _StorePickler(pickle.Pickler):
    def __init__(self, file: io.BytesIO) -> None:
        super().__init__(file, protocol=5)
        self.refs: list[Ref] = []

    def persistent_id(self, obj: Any) -> Any:
        if isinstance(obj, Ref):
            if all(r is not obj for r in self.refs):
                self.refs.append(obj)
            return ("ref", obj.blob_key, obj.size)
        return None


class _StoreUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BytesIO, store: Any) -> None:
        super().__init__(file)
        self.store = store

    def persistent_load(self, pid: Any) -> Any:
        tag, blob_key, size = pid
        if tag != "ref":
            raise pickle.UnpicklingError(f"unknown persistent id {tag!r}")
        return Ref(blob_key, size, None, self.store, persisted=True)


def dumps(value: Any) -> tuple[bytes, list[Ref]]:
    """Serialize for the Store; Refs inside become their blob keys and are returned for persisting."""
    buf = io.BytesIO()
    pickler = _StorePickler(buf)
    pickler.dump(value)
    return buf.getvalue(), pickler.refs


async def record(store: Any, lease: Any, key: str, value: Any, inline_limit: int,
                 elapsed_s: float | None = None) -> tuple[Any, bool]:
    """Record ``value`` as step ``key`` of the lease's task (fenced by it): a value over
    ``inline_limit`` bytes goes by reference (a Ref whose object the Store keeps as a blob). Returns
    what the caller should see (maybe a Ref) and whether a cancel was requested."""
    data, found = dumps(value)
    if len(data) > inline_limit:
        value = Ref.put(value, f"{lease.task_id}/{key}", len(data), store)
        data, found = dumps(value)
    to_persist = [(r.blob_key, [r.object_ref]) for r in found
                  if r.object_ref is not None and not r.persisted]
    cancel = await store.record_step(lease, key, data, to_persist, elapsed_s)
    for r in found:
        r.persisted = True
        r.store = r.store or store
    return value, bool(cancel)


def loads(data: bytes, store: Any = None) -> Any:
    """Deserialize what ``dumps`` wrote; Refs come back pointing at their blobs."""
    return _StoreUnpickler(io.BytesIO(data), store).load()
