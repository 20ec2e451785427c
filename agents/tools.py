"""The research roles' tools: the corpus searched and read through raysquad's tool executors (gated,
retried, recorded like every tool call), so that a role's model chooses what to search for.

``search_corpus`` takes any query, so whatever a model asks, the answer is sound: the documents
whose passages best match the query's words, with those passages. ``read_document`` takes a corpus
document's name (the scraper's, from the plan).
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from agents.library import document, search
from agents.text import keywords
from runtime.tools import tool


@tool
def search_corpus(query: str = Field(min_length=1, max_length=300),
                  limit: int = Field(4, ge=1, le=8)) -> list[dict[str, Any]]:
    """Search the research corpus for the query's words: the best passage of each matching
    document, best first (document, title, text, score, matched terms)."""
    found = search(keywords(query, limit=8), per_document=1)
    found.sort(key=lambda p: (-p["score"], p["document"]))
    return [{**p, "title": document(p["document"]).title} for p in found[:limit]]


@tool
def read_document(name: str = Field(min_length=1, max_length=100)) -> dict[str, Any]:
    """Read one corpus document by name: its title and its paragraphs."""
    doc = document(name)  # KeyError for a name not in the corpus, naming those that are
    return {"name": doc.name, "title": doc.title, "paragraphs": doc.body}
