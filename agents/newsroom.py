"""The event-driven example: a newsroom that indexes documents as they arrive and writes a digest
every few minutes, written against ``runtime``'s public API.

- A content system POSTs each new document to the webhook ``/v1/webhooks/cms`` (configured with
  ``RAYSQUAD_WEBHOOKS='{"cms": {"topic": "docs.new", "secrets": ["whsec_..."]}}'``), or anything
  publishes it on ``docs.new`` (``raysquad publish docs.new --data '{"id": ..., "title": ...,
  "text": ...}'``).
- The ``cataloguer`` role subscribes to ``docs.new``. It has no replica while idle (scale to zero):
  the first document starts one. It extracts the document's keywords and files an entry in the
  newsroom's index, at most once per document id of a tenant (a redelivery files nothing new).
- The ``newsroom_digest`` workflow runs on a schedule (every 5 minutes, declared on it) and
  writes a digest of the documents indexed since the last digest: the most frequent keywords and
  the titles. Each tenant has its own index and digests: the declared schedule digests the
  ``default`` tenant's documents, and a tenant that submits ``newsroom_digest`` gets its own.

The index and the digests are JSON-lines files under ``RAYSQUAD_DATA_DIR/newsroom`` (one machine;
on a cluster, point it at storage every node shares).

    raysquad up --app agents.newsroom
    raysquad publish docs.new --data '{"id": "d1", "title": "Leases", "text": "..."}'
    raysquad schedules
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from pathlib import Path

from pydantic import BaseModel, Field

from agents.text import keywords
from runtime import Agent, AgentContext, AgentMessage, Context, on_schedule, workflow


class Doc(BaseModel):
    """A document as the content system sends it."""

    id: str = Field(min_length=1, max_length=200)
    title: str = Field(max_length=500)
    text: str = ""


def newsroom_dir() -> Path:
    """``RAYSQUAD_NEWSROOM_DIR``, else ``newsroom`` under ``RAYSQUAD_DATA_DIR`` (absolute: every
    process of the runtime must find the same files), else ``~/.raysquad/newsroom``."""
    data_dir = os.environ.get("RAYSQUAD_DATA_DIR")
    root = Path(os.environ.get("RAYSQUAD_NEWSROOM_DIR")
                or (Path(data_dir).resolve() / "newsroom" if data_dir
                    else Path.home() / ".raysquad" / "newsroom"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def index_entries(tenant: str) -> list[dict[str, object]]:
    """``tenant``'s index, one entry per document id (the first filed wins)."""
    path = newsroom_dir() / "index.jsonl"
    entries: dict[str, dict[str, object]] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            entry = json.loads(line)
            if entry.get("tenant", "default") == tenant:
                entries.setdefault(str(entry["id"]), entry)
    return sorted(entries.values(), key=lambda e: float(str(e["indexed_at"])))


class Cataloguer(Agent):
    """Indexes each new document: its keywords, filed once per document id."""

    role = "cataloguer"
    subscribes = ["docs.new"]
    min_replicas = 0  # no replica until a document arrives
    max_replicas = 2

    async def handle(self, msg: AgentMessage, ctx: AgentContext) -> None:
        doc = Doc.model_validate(msg.payload)
        if msg.redelivered and any(e["id"] == doc.id for e in index_entries(msg.tenant)):
            return  # filed by an earlier delivery of this event
        entry = {"id": doc.id, "tenant": msg.tenant, "title": doc.title,
                 "keywords": keywords(f"{doc.title}. {doc.text}", limit=6),
                 "indexed_at": time.time(), "event": msg.event.id if msg.event else None}
        with open(newsroom_dir() / "index.jsonl", "a") as f:
            f.write(json.dumps(entry) + "\n")


class DigestIn(BaseModel):
    max_docs: int = Field(20, ge=1, le=1000)
    since: float | None = Field(None, description="digest what was indexed after this time "
                                                  "(default: since the last digest)")


class Digest(BaseModel):
    documents: int
    titles: list[str]
    top_keywords: list[str]
    since: float


def _last_digest_at(tenant: str) -> float:
    path = newsroom_dir() / "digests.jsonl"
    if not path.exists():
        return 0.0
    ends = [float(d["until"]) for d in map(json.loads, path.read_text().splitlines())
            if d.get("tenant", "default") == tenant]
    return ends[-1] if ends else 0.0


@workflow(triggers=[on_schedule("*/5 * * * *", id="newsroom-digest", catch_up="once")])
async def newsroom_digest(ctx: Context, inp: DigestIn) -> Digest:
    """The documents of this task's tenant indexed since its last digest: their titles and most
    frequent keywords."""

    def gather() -> dict[str, object]:
        since = _last_digest_at(ctx.tenant) if inp.since is None else inp.since
        fresh = [e for e in index_entries(ctx.tenant) if float(str(e["indexed_at"])) > since]
        return {"since": since, "until": time.time(), "entries": fresh[-inp.max_docs:]}

    window = await ctx.step("gather", gather)  # checkpointed: a resumed run digests the same docs
    entries = window["entries"]
    counts = Counter(k for e in entries for k in e["keywords"])
    digest = Digest(documents=len(entries), titles=[str(e["title"]) for e in entries],
                    top_keywords=[k for k, _ in counts.most_common(8)], since=window["since"])

    def file() -> None:
        with open(newsroom_dir() / "digests.jsonl", "a") as f:
            f.write(json.dumps({"until": window["until"], "tenant": ctx.tenant,
                                **digest.model_dump()}) + "\n")

    await ctx.step("file", file)
    return digest
