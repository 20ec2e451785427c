"""The ``research`` workflow: plan, read the corpus in parallel, draft, review and revise, report.

Every call that can differ between runs (agents, the LLM, reading the corpus) is a recorded step, and
the code between steps only reshapes recorded values, so a task that resumes after a crash replays
its finished steps and continues with the first unfinished one.
"""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from agents.library import rank_documents
from agents.text import digest
from runtime import Context, workflow


class ResearchInput(BaseModel):
    """What to research, and how much effort to spend on it."""

    model_config = ConfigDict(extra="forbid")

    question: str = Field(min_length=3, max_length=1000)
    max_documents: int = Field(6, ge=1, le=20, description="corpus documents read in parallel")
    max_rounds: int = Field(2, ge=1, le=5, description="review rounds before the draft is final")
    urls: list[str] = Field(
        default_factory=list, max_length=20,
        description="web pages to read besides the corpus (fetched with the http_fetch tool; "
                    "private addresses only where RAYSQUAD_TOOLS__HTTP_ALLOW_NETWORKS allows)")


class Finding(BaseModel):
    claim: str
    sources: list[str] = Field(description="corpus documents (by name) and pages (by URL) it comes from")


class ResearchReport(BaseModel):
    question: str
    plan: list[str] = Field(description="the sub-questions the planner set")
    findings: list[Finding]
    report: str = Field(description="the report, in Markdown")
    rounds: int = Field(description="review rounds run")
    approved: bool = Field(description="whether the last review approved the findings")
    score: float = Field(description="the last review's score, 0 to 1")
    sources: list[str] = Field(description="documents cited, in order of first citation")
    tools: dict[str, dict[str, int]] = Field(
        default_factory=dict, description="each role's tool calls: role -> tool -> calls")


@workflow
async def research(ctx: Context, inp: ResearchInput) -> ResearchReport:
    plan = await ctx.agent("planner").run({"question": inp.question})
    terms = plan["terms"]
    ctx.emit(progress=0.1, message=f"plan: {len(plan['sub_questions'])} sub-questions, "
                                   f"terms {', '.join(terms)}")

    ranked = await ctx.step("select_documents", rank_documents, terms, inp.max_documents)
    # The best match of the question's words, then what the planner's own searches found, then
    # the next best matches.
    docs = list(dict.fromkeys([*ranked[:1], *plan.get("documents", []), *ranked[1:]])
                )[:inp.max_documents]
    scraped = await asyncio.gather(
        *(ctx.agent("scraper").run({"document": name, "terms": terms}) for name in docs),
        *(ctx.agent("scraper").run({"url": url, "terms": terms}) for url in inp.urls))
    passages = [p for s in scraped for p in s["passages"]]
    titles = {s["document"]: s["title"] for s in scraped}
    ctx.emit(progress=0.4, message=f"read {len(docs)} documents and {len(inp.urls)} pages, "
                                   f"{len(passages)} relevant passages")

    draft = await ctx.agent("analyst").run(
        {"question": inp.question, "terms": terms, "passages": passages})
    ctx.emit(progress=0.55, message=f"draft: {len(draft['findings'])} findings")

    draft, review, rounds, revisions = await review_loop(ctx, inp, terms, draft)
    titles.update(draft.get("titles", {}))
    tools = tools_by_role({"planner": [plan], "scraper": scraped, "researcher": revisions})

    summary = await ctx.llm.chat(
        [{"role": "system", "content": "Answer the question in one sentence using only the findings."},
         {"role": "user", "content": f"Question: {inp.question}\nFindings:\n{digest(draft['findings'])}"}],
        max_tokens=60)
    sources = cited_sources(draft["findings"])
    report = render_report(inp.question, plan, draft["findings"], summary.text.strip(), review, rounds,
                           {"documents": len(docs) + len(inp.urls), "passages": len(passages),
                            "titles": titles, "tools": tools})
    ctx.emit(progress=1.0, message=f"report: {len(draft['findings'])} findings from {len(sources)} sources")
    return ResearchReport(
        question=inp.question, plan=plan["sub_questions"],
        findings=[Finding(**f) for f in draft["findings"]], report=report, rounds=rounds,
        approved=review["approved"], score=review["score"], sources=sources, tools=tools,
    )


async def review_loop(ctx: Context, inp: ResearchInput, terms: list[str], draft: dict[str, Any]
                      ) -> tuple[dict[str, Any], dict[str, Any], int, list[dict[str, Any]]]:
    """Reflect: review the draft, and while it is not approved and rounds remain, have the researcher
    revise it with the feedback. Bounded by ``max_rounds``, since a reviewer may never be satisfied.
    Returns the last draft and review, the rounds run and the researcher's revisions."""
    rounds = 0
    revisions: list[dict[str, Any]] = []
    while True:
        rounds += 1
        review = await ctx.agent("reviewer").run(
            {"question": inp.question, "terms": terms, "findings": draft["findings"]})
        verdict = "approved" if review["approved"] else "not approved"
        ctx.emit(progress=round(0.55 + 0.35 * rounds / inp.max_rounds, 3),
                 message=f"review {rounds}: score {review['score']:.2f}, {verdict}")
        if review["approved"] or rounds >= inp.max_rounds:
            return draft, review, rounds, revisions
        draft = await ctx.agent("researcher").run(
            {"question": inp.question, "terms": terms, "findings": draft["findings"],
             "feedback": review["feedback"], "missing": review["missing"]})
        revisions.append(draft)


def tools_by_role(replies: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, int]]:
    """Each role's tool calls, counted by tool, from its replies' ``tools_used``."""
    counted: dict[str, dict[str, int]] = {}
    for role, said in replies.items():
        for reply in said:
            for name in reply.get("tools_used", []):
                counted.setdefault(role, {})
                counted[role][name] = counted[role].get(name, 0) + 1
    return counted


def cited_sources(findings: list[dict[str, Any]]) -> list[str]:
    """Every cited document once, in order of first citation (the numbering the report uses)."""
    return list(dict.fromkeys(s for f in findings for s in f["sources"]))


def render_report(question: str, plan: dict[str, Any], findings: list[dict[str, Any]], summary: str,
                  review: dict[str, Any], rounds: int, reading: dict[str, Any]) -> str:
    """The Markdown report. Built from recorded values only, so it is the same on every replay."""
    sources = cited_sources(findings)
    number = {name: i for i, name in enumerate(sources, 1)}
    lines = [f"# {question}", "", f"> {summary}", "", "## Findings", ""]
    if not findings:
        lines.append("No passage in the corpus matched the question's terms.")
    for i, f in enumerate(findings, 1):
        refs = ", ".join(str(number[s]) for s in f["sources"])
        lines.append(f"{i}. {f['claim']} [{refs}]")
    verdict = "approved" if review["approved"] else "not approved"
    lines += [
        "", "## How this was researched", "",
        f"- **Search terms:** {', '.join(plan['terms']) or '(none)'}",
        "- **Sub-questions:**", *(f"  - {q}" for q in plan["sub_questions"]),
        f"- **Reading:** {reading['documents']} documents, {reading['passages']} relevant passages",
        "- **Tools:** " + ("; ".join(
            f"{role}: " + ", ".join(f"{name} ×{n}" for name, n in used.items())
            for role, used in reading["tools"].items()) or "(none)"),
        f"- **Review:** {verdict} after {rounds} round(s), score {review['score']:.2f}. "
        f"{review['feedback']}",
        "", "## Sources", "",
    ]
    titles = reading["titles"]
    lines += [f"{number[name]}. {titles.get(name, name)} (`{name}`)" for name in sources]
    return "\n".join(lines) + "\n"
