"""The research roles: planner, scraper, analyst, researcher, reviewer.

The planner and the researcher are agents that act: their model is offered ``search_corpus``
(``agents.tools``) and chooses what to search for; what its searches find widens the plan's
documents and the revision's passages. The scraper reads through tools (``read_document``, and
``http_fetch`` with ``extract_text`` for a page). Everything structural is then decided with the
deterministic helpers of ``agents.text``, so the workflow gives a sound report whatever the model
says, the simulated engine included. Each reply names the tools its role used (``tools_used``), and
the report lists them. Payloads and replies are plain dicts: they are recorded as step outputs and
must read the same after a restart.
"""

from __future__ import annotations

from typing import Any

from agents.library import corpus_names, document, search
from agents.text import (
    build_findings,
    digest,
    keywords,
    matched_terms,
    paragraphs,
    review_draft,
    score_text,
    subtopics,
    top_passages,
)
from runtime import Agent, AgentContext, AgentMessage, ToolFailed


async def say(ctx: AgentContext, instruction: str, content: str, max_tokens: int) -> str:
    """One short LLM answer; the text is kept as prose only."""
    completion = await ctx.chat(
        [{"role": "system", "content": instruction}, {"role": "user", "content": content}],
        max_tokens=max_tokens,
    )
    return completion.text.strip()


def found_documents(ctx: AgentContext) -> list[str]:
    """The documents the model's ``search_corpus`` calls found, best first, each once."""
    hits = [p for tool, result in ctx.loop.results if tool == "search_corpus" for p in result]
    return list(dict.fromkeys(p["document"] for p in sorted(hits, key=lambda p: -p["score"])))


class Planner(Agent):
    """Question -> search terms, sub-questions and the documents to read. The terms come from the
    question's own words, so the plan is reproducible; the model searches the corpus (its own
    queries) and explains the plan; the documents its searches found are read after the best
    match of the question's words."""

    role = "planner"
    min_replicas = 1
    max_replicas = 2
    concurrency = 4
    instructions = ("You plan research. Search the corpus for what the question asks, then say in "
                    "one sentence why these terms matter.")
    tools = ["search_corpus"]
    max_turns = 4

    async def handle(self, msg: AgentMessage, ctx: AgentContext) -> dict[str, Any]:
        question = msg.payload["question"]
        terms = keywords(question, limit=msg.payload.get("max_terms", 8))
        sub_questions = [f'What do the sources say about "{p}"?' for p in subtopics(question)]
        sub_questions.append(f"How do these answers combine to answer: {question}")
        rationale = await ctx.run_loop(f"Question: {question}\nTerms: {', '.join(terms)}",
                                       max_tokens=64)
        return {"question": question, "terms": terms, "sub_questions": sub_questions,
                "rationale": str(rationale).strip(), "documents": found_documents(ctx),
                "tools_used": ctx.loop.tools_used}


class Scraper(Agent):
    """Reads one corpus document and returns its passages relevant to the terms. Fanned out one
    message per document and mostly waiting on the LLM, hence the high per-replica concurrency."""

    role = "scraper"
    min_replicas = 1
    max_replicas = 4
    concurrency = 8

    async def handle(self, msg: AgentMessage, ctx: AgentContext) -> dict[str, Any]:
        terms = msg.payload["terms"]
        if "url" in msg.payload:  # a web page: the http_fetch and extract_text tools read it
            name, title, body = await read_url(ctx, msg.payload["url"])
            used = ["http_fetch", "extract_text"]
        else:
            doc = await ctx.tool("read_document", name=msg.payload["document"])
            name, title, body = doc["name"], doc["title"], doc["paragraphs"]
            used = ["read_document"]
        passages = top_passages(name, body, terms, limit=msg.payload.get("max_passages", 3))
        gist = ""
        if passages:
            gist = await say(ctx, "Summarise this passage in one sentence.", passages[0]["text"], 48)
        return {"document": name, "title": title, "passages": passages, "gist": gist,
                "tools_used": used}


async def read_url(ctx: AgentContext, url: str) -> tuple[str, str, list[str]]:
    """A page's title and paragraphs, through the gated, retried built-in tools. A page that cannot be
    read is reported in its title and contributes nothing: one dead link does not fail the research."""
    try:
        page = await ctx.tool("http_fetch", url=url)
    except ToolFailed as e:
        return url, f"{url} (unreadable: {e.error_type or e.message})", []
    if page.status >= 400:
        return url, f"{url} (HTTP {page.status})", []
    text = await ctx.tool("extract_text", html=page.text)
    return url, text.title or url, paragraphs(text.text)


class Analyst(Agent):
    """Passages from every scraper -> a first draft of cited findings."""

    role = "analyst"
    min_replicas = 1
    max_replicas = 2
    concurrency = 4

    async def handle(self, msg: AgentMessage, ctx: AgentContext) -> dict[str, Any]:
        p = msg.payload
        findings = build_findings(p["passages"], p["terms"], limit=p.get("max_findings", 6))
        notes = await say(ctx, "You are an analyst. Note what these findings imply for the question.",
                          f"Question: {p['question']}\n{digest(findings)}", 96)
        return {"findings": findings, "notes": notes}


class Researcher(Agent):
    """Revises a draft after review: searches the whole corpus for the terms the reviewer found
    missing and adds a cited finding for each one it can support. Findings that cite web pages are
    kept as they are; the reply's ``titles`` cover the cited corpus documents only."""

    role = "researcher"
    min_replicas = 1
    max_replicas = 2
    concurrency = 4
    instructions = ("You revise research after a review. Search the corpus for what the reviewer "
                    "found missing, then say how the feedback was addressed.")
    tools = ["search_corpus"]
    max_turns = 4

    async def handle(self, msg: AgentMessage, ctx: AgentContext) -> dict[str, Any]:
        p = msg.payload
        findings = [dict(f, sources=list(f["sources"])) for f in p["findings"]]
        cited = {s for f in findings for s in f["sources"]}
        missing = p.get("missing", [])
        notes = await ctx.run_loop(f"Feedback: {p.get('feedback', '')}\nMissing: "
                                   f"{', '.join(missing)}\n{digest(findings)}", max_tokens=96)
        # What the model's searches found, then the corpus searched for each term, as candidates.
        searched = [q for tool, result in ctx.loop.results if tool == "search_corpus"
                    for q in result]
        for term in missing:
            passages = [{**q, "score": score_text(q["text"], [term]),
                         "matched": matched_terms(q["text"], [term])}
                        for q in searched if score_text(q["text"], [term]) > 0]
            passages += search([term], per_document=1)
            # Uncited documents first: a new source broadens the draft more than a second passage
            # from one it already relies on.
            passages.sort(key=lambda q: (q["document"] in cited, -q["score"], q["document"]))
            extra = build_findings(passages[:1], [term], limit=1)
            if extra and extra[0]["claim"] not in {f["claim"] for f in findings}:
                findings.append(extra[0])
                cited.update(extra[0]["sources"])
        # Only corpus documents are titled here. A page (a URL source) entered the draft through the
        # scraper that read it, whose reply carried its title, and the workflow keeps that title.
        corpus = set(corpus_names())
        titles = {s: document(s).title for f in findings for s in f["sources"] if s in corpus}
        return {"findings": findings, "notes": str(notes).strip(), "titles": titles,
                "tools_used": ctx.loop.tools_used}


class Reviewer(Agent):
    """Scores a draft against the question; the verdict is deterministic, the LLM adds a comment."""

    role = "reviewer"
    min_replicas = 1
    max_replicas = 2
    concurrency = 4

    async def handle(self, msg: AgentMessage, ctx: AgentContext) -> dict[str, Any]:
        p = msg.payload
        verdict = review_draft(p["terms"], p["findings"], threshold=p.get("threshold", 0.75))
        comment = await say(ctx, "You review research drafts. Give one sentence of critique.",
                            f"Question: {p['question']}\n{digest(p['findings'])}", 48)
        return {**verdict, "comment": comment}
