"""Deterministic text helpers the roles share: keywords, passages, claims and draft review.

The LLM behind an agent may be the simulated engine, whose text has no structure to rely on, so
everything a report's content depends on is computed here in plain Python. The LLM's words are only
ever used as prose (a rationale, a note, a summary line), never parsed.
"""

from __future__ import annotations

import re
from typing import Any

STOPWORDS = frozenset("""
    a about above after again all also am an and any are as at be because been before being between
    both but by can could did do does doing done during each either every for from further get gets
    had has have having he her here how i if in into is it its just like make makes many may me might
    more most much must my need no nor not now of off on once one only or other our out over own per
    same should so some such than that the their them then there these they this those through to too
    under until up upon us use used using very via was way ways we were what when where whether which
    while who whom why will with within without would you your
""".split())

_WORD = re.compile(r"[a-z0-9]+(?:['-][a-z0-9]+)*")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")


def words(text: str) -> list[str]:
    """Lower-case words of ``text``, hyphenated words kept whole."""
    return _WORD.findall(text.lower())


def stem(word: str) -> str:
    """A light suffix-stripper, so "failures" matches "failure" and "retries" matches "retry".

    Deliberately crude (no stemming library): it only has to make a question's words meet the same
    words in the corpus, and every rule here is easy to predict in a test.
    """
    w = word.lower().removesuffix("'s")
    if len(w) > 4 and w.endswith("ies"):
        return w[:-3] + "y"
    if len(w) > 3 and w.endswith("s") and not w.endswith(("ss", "us", "is")):
        w = w[:-1]
    for suffix in ("ing", "ed"):
        if len(w) > len(suffix) + 3 and w.endswith(suffix):
            return w[: -len(suffix)]
    return w


def key_phrases(question: str) -> list[str]:
    """Runs of consecutive content words: "How do durable workflows survive?" -> ["durable workflows",
    "survive"]. Phrases keep the question's own wording, which reads better in a plan than lone words."""
    phrases: list[str] = []
    run: list[str] = []
    for w in [*words(question), ""]:
        if w and w not in STOPWORDS and len(w) > 2:
            run.append(w)
        elif run:
            phrases.append(" ".join(run))
            run = []
    return list(dict.fromkeys(phrases))


def subtopics(question: str, limit: int = 6) -> list[str]:
    """What a plan asks about: the question's short key phrases as they are, and the words of a
    long phrase one by one (without a parser, splitting a long run of words anywhere else would as
    often cut a noun phrase in half as not)."""
    topics: list[str] = []
    for phrase in key_phrases(question):
        topics.extend([phrase] if len(phrase.split()) <= 3 else phrase.split())
    return list(dict.fromkeys(topics))[:limit]


def keywords(question: str, limit: int = 8) -> list[str]:
    """The question's content words in order, one per stem, at most ``limit``.

    Falls back to every word of three letters or more when the question is made of stopwords only,
    so a search always has something to look for.
    """
    candidates = [w for w in words(question) if w not in STOPWORDS and len(w) > 2]
    if not candidates:
        candidates = [w for w in words(question) if len(w) > 2]
    seen: dict[str, str] = {}
    for w in candidates:
        seen.setdefault(stem(w), w)
    return list(seen.values())[:limit]


def matched_terms(text: str, terms: list[str]) -> list[str]:
    """The terms (in their given order) whose stem occurs among the stems of ``text``'s words."""
    stems = {stem(w) for w in words(text)}
    return [t for t in terms if stem(t) in stems]


def score_text(text: str, terms: list[str]) -> float:
    """Relevance of ``text`` to ``terms``: one point per distinct term found, plus a little per repeat.

    Distinct terms dominate so that a paragraph covering three aspects of the question beats one that
    repeats a single word many times.
    """
    if not terms:
        return 0.0
    wanted = {stem(t) for t in terms}
    hits = [s for s in (stem(w) for w in words(text)) if s in wanted]
    distinct = len(set(hits))
    return round(distinct + 0.1 * min(len(hits) - distinct, 10), 2)


def paragraphs(text: str) -> list[str]:
    """Blank-line separated paragraphs, each joined onto one line."""
    blocks = re.split(r"\n\s*\n", text.strip())
    return [" ".join(b.split()) for b in blocks if b.strip()]


def sentences(paragraph: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(paragraph) if s.strip()]


def best_sentence(paragraph: str, terms: list[str]) -> str:
    """The sentence of ``paragraph`` that scores highest for ``terms`` (the earliest one on ties)."""
    candidates = sentences(paragraph) or [paragraph]
    return max(candidates, key=lambda s: score_text(s, terms))


def top_passages(document: str, body: list[str], terms: list[str], limit: int = 3) -> list[dict[str, Any]]:
    """The ``limit`` paragraphs of ``body`` most relevant to ``terms``, best first; none score zero."""
    scored: list[dict[str, Any]] = [
        {"document": document, "index": i, "text": p, "score": score_text(p, terms),
         "matched": matched_terms(p, terms)}
        for i, p in enumerate(body)
    ]
    ranked = sorted((p for p in scored if p["score"] > 0), key=lambda p: (-p["score"], p["index"]))
    return ranked[:limit]


def rank_passages(passages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Best first, with a total order (document name, then position) so that ties never reorder."""
    return sorted(passages, key=lambda p: (-p["score"], p["document"], p["index"]))


def claim_from(paragraph: str, terms: list[str], min_chars: int = 100) -> str:
    """The paragraph's best sentence for ``terms``, with the next one appended when it is short:
    a short sentence ("Fencing tokens prevent this.") usually leans on its neighbour for sense."""
    parts = sentences(paragraph) or [paragraph]
    best = best_sentence(paragraph, terms)
    i = parts.index(best) if best in parts else len(parts) - 1
    return best if len(best) >= min_chars or i + 1 >= len(parts) else f"{best} {parts[i + 1]}"


def build_findings(passages: list[dict[str, Any]], terms: list[str], limit: int = 6,
                   per_document: int = 2) -> list[dict[str, Any]]:
    """Turn passages into at most ``limit`` findings, each a claim cited by its document(s).

    Chosen greedily: the next finding is the claim that covers the most terms not yet covered (the
    best-scoring passage on ties), so a draft answers every part of the question before it repeats
    one. At most ``per_document`` findings come from one document, so one source cannot crowd out
    the rest; the same claim found in two documents is one finding citing both.
    """
    claims: dict[str, dict[str, Any]] = {}
    for p in rank_passages(passages):
        text = claim_from(p["text"], terms)
        entry = claims.setdefault(" ".join(words(text)), {"claim": text, "sources": []})
        if p["document"] not in entry["sources"]:
            entry["sources"].append(p["document"])
    pool = list(claims.values())
    findings: list[dict[str, Any]] = []
    covered: set[str] = set()
    taken: dict[str, int] = {}
    while len(findings) < limit:
        open_ = [c for c in pool if taken.get(c["sources"][0], 0) < per_document]
        if not open_:
            break
        pick = max(open_, key=lambda c: len(set(matched_terms(c["claim"], terms)) - covered))
        pool.remove(pick)
        findings.append(pick)
        covered.update(matched_terms(pick["claim"], terms))
        taken[pick["sources"][0]] = taken.get(pick["sources"][0], 0) + 1
    return findings


def digest(findings: list[dict[str, Any]]) -> str:
    """Findings as numbered lines with their sources: how a prompt shows a draft to the LLM."""
    return "\n".join(f"{i}. {f['claim']} [{', '.join(f['sources'])}]" for i, f in enumerate(findings, 1))


def review_draft(terms: list[str], findings: list[dict[str, Any]],
                 threshold: float = 0.75) -> dict[str, Any]:
    """Score a draft: coverage of the question's terms by its claims, citations, breadth of sources.

    Returns ``score`` in [0, 1], ``approved``, ``missing`` (terms no claim covers, the feedback an
    agent can act on) and a one-paragraph ``feedback``. A draft with an uncited claim is never
    approved, however well it covers the question.
    """
    if not findings:
        return {"score": 0.0, "approved": False, "missing": list(terms),
                "feedback": "The draft has no findings; search for passages on: " + ", ".join(terms) + "."}
    claims = " ".join(f["claim"] for f in findings)
    covered = matched_terms(claims, terms)
    missing = [t for t in terms if t not in covered]
    coverage = len(covered) / len(terms) if terms else 1.0
    cited = sum(1 for f in findings if f.get("sources")) / len(findings)
    distinct = len({s for f in findings for s in f.get("sources", [])})
    score = round(0.7 * coverage + 0.2 * cited + 0.1 * min(1.0, distinct / 3), 3)
    approved = score >= threshold and cited == 1.0
    parts = [f"Covers {len(covered)} of {len(terms)} search terms from {distinct} source(s)."]
    if missing:
        parts.append("Not yet covered: " + ", ".join(missing) + ".")
    if cited < 1.0:
        parts.append(f"{len(findings) - round(cited * len(findings))} finding(s) cite no source.")
    parts.append("Approved." if approved else f"Score {score:.2f} is below {threshold:.2f}; revise.")
    return {"score": score, "approved": approved, "missing": missing, "feedback": " ".join(parts)}
