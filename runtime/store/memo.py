"""The LLM memo (schema 15), on either database: a model call's answer kept under its tenant and
the hash of its request (``runtime.llm.calls.memo_key``), so that the same temperature-0 call of
the same tenant is answered from here, across runs and restarts, without reaching an engine.
Written once for both backends (mixed in, like store/tasks.py).

An entry is never changed while it lasts: the first answer of a key wins (at temperature 0 a later
one is the same answer, or should be). With ``llm_cache_ttl_s`` (``RAYSQUAD_LLM_CACHE_TTL_S``) an
entry older than that answers nothing (the call reaches an engine) and the next answer replaces it;
without, it lasts for good. Entries are not pruned: a tenant's memo grows with the distinct requests
it asked with the memo on (an expired one is replaced in place, under its key).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

from runtime.core.models import Completion
from runtime.store.outbox import PortableSQL

#: The memo's table, in a backend's type for times (``real``). Its primary key is the lookup.
MIGRATION = """
CREATE TABLE llm_memo (
    tenant TEXT NOT NULL,
    key TEXT NOT NULL,
    model TEXT NOT NULL,
    completion TEXT NOT NULL,
    created_at {real} NOT NULL,
    PRIMARY KEY (tenant, key)
){without_rowid}
"""


class Memo(PortableSQL):
    """Model calls' answers by (tenant, request hash)."""

    def _read(self) -> AbstractContextManager[Any]:
        """A connection to read from (a backend may read outside a transaction: SQLite does)."""
        return self._tx()

    def memo_get(self, tenant: str, key: str, now: float,
                 max_age_s: float | None = None) -> Completion | None:
        """The answer kept for ``tenant``'s request ``key``, if any younger than ``max_age_s``."""
        with self._read() as c:
            row = c.execute(self._q(
                "SELECT completion FROM llm_memo WHERE tenant = ? AND key = ? AND created_at >= ?"),
                (tenant, key, _kept_since(now, max_age_s))).fetchone()
        return None if row is None else Completion.model_validate_json(row["completion"])

    def memo_put(self, tenant: str, key: str, completion: Completion, now: float,
                 max_age_s: float | None = None) -> bool:
        """Keep ``completion`` as the answer to ``tenant``'s request ``key``, unless one younger
        than ``max_age_s`` is kept already (then nothing changes: safe to send again). True if it
        was kept now."""
        with self._tx() as c:
            return bool(c.execute(self._q(
                "INSERT INTO llm_memo (tenant, key, model, completion, created_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (tenant, key) DO UPDATE SET "
                "model = excluded.model, completion = excluded.completion, "
                "created_at = excluded.created_at WHERE llm_memo.created_at < ?"),
                (tenant, key, completion.model, completion.model_dump_json(exclude={"cached"}),
                 now, _kept_since(now, max_age_s))).rowcount)


def _kept_since(now: float, max_age_s: float | None) -> float:
    """The oldest ``created_at`` an entry may have and still answer (any, without a limit)."""
    return float("-inf") if max_age_s is None else now - max_age_s
