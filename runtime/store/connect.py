"""How a process reaches the runtime's Store: the Store actor, or its own PostgreSQL pool."""

from __future__ import annotations

from runtime.core.config import Settings
from runtime.store.actor import StoreHandle
from runtime.store.service import StoreService


def store_for(settings: Settings) -> StoreService:
    """How this process reaches the runtime's Store: with PostgreSQL (and ``postgres_direct``)
    through its own connection pool (store/direct.py); otherwise through the Store actor."""
    if settings.store == "postgres" and settings.postgres_direct:
        from runtime.store.direct import DirectStore

        return DirectStore.shared(settings)
    return StoreHandle.find(settings.namespace)
