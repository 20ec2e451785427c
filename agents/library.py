"""The small text corpus shipped with the package (``agents/corpus/*.txt``) and search over it.

Each document is plain text: a title on its first line, then paragraphs separated by blank lines.
A document's name is its file name without ``.txt``. The corpus is read-only and tiny, so it is read
once per process and cached.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from agents.text import paragraphs, score_text, top_passages

CORPUS_DIR = Path(__file__).parent / "corpus"


@dataclass(frozen=True)
class Document:
    name: str
    title: str
    body: list[str]


def corpus_names() -> list[str]:
    """Names of the corpus's documents, sorted, so that every caller sees the same order."""
    return sorted(p.stem for p in CORPUS_DIR.glob("*.txt"))


@cache
def document(name: str) -> Document:
    """One document, parsed. Only names in the corpus are accepted: a name arrives in an agent's
    payload, and must never become a path outside the corpus folder."""
    if name not in corpus_names():
        raise KeyError(f"no document {name!r} in the corpus (have: {', '.join(corpus_names())})")
    blocks = paragraphs((CORPUS_DIR / f"{name}.txt").read_text(encoding="utf-8"))
    return Document(name, blocks[0], blocks[1:])


def read_document(name: str) -> str:
    """The document's full text: title, blank line, paragraphs."""
    doc = document(name)
    return "\n\n".join([doc.title, *doc.body])


def search(terms: list[str], per_document: int = 1) -> list[dict[str, Any]]:
    """The best ``per_document`` passages for ``terms`` from every document that matches them."""
    found: list[dict[str, Any]] = []
    for name in corpus_names():
        found.extend(top_passages(name, document(name).body, terms, per_document))
    return found


def rank_documents(terms: list[str], limit: int) -> list[str]:
    """Up to ``limit`` document names, most relevant to ``terms`` first (name order on ties).

    A document's relevance is its best paragraph's score plus a tenth of the rest, so one strongly
    relevant paragraph counts for more than many weak mentions. Documents that match nothing are
    left out, unless nothing matches at all: then the first ``limit`` names, so a search still reads.
    """
    scores: dict[str, float] = {}
    for name in corpus_names():
        ranked = sorted((score_text(p, terms) for p in document(name).body), reverse=True)
        if ranked and ranked[0] > 0:
            scores[name] = ranked[0] + 0.1 * sum(ranked[1:])
    if not scores:
        return corpus_names()[:limit]
    return sorted(scores, key=lambda n: (-scores[n], n))[:limit]
