"""The agents package without Ray: its deterministic helpers, its corpus, its catalogue entries, and the
``research`` workflow run in-process against stand-in services (the simulated engine's text)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from agents import ResearchReport
from agents.library import corpus_names, document, rank_documents, read_document, search
from agents.text import (
    build_findings,
    claim_from,
    key_phrases,
    keywords,
    matched_terms,
    review_draft,
    score_text,
    stem,
    subtopics,
    top_passages,
)
from runtime import InvalidInput, RetryPolicy
from runtime.authoring.catalog import load_catalog
from runtime.authoring.workflow import Context, StepDefaults
from runtime.core.config import SimulatedEngineConfig, ToolSettings
from runtime.core.models import AgentMessage, ChatRequest, Completion, Usage
from runtime.llm.simulated import SimulatedEngine, prompt_text, simulated_text
from runtime.replicas.replica import AgentContext
from runtime.tools import ToolContext
from runtime.tools.registry import defined_tool

QUESTION = "How do durable workflows survive worker failures?"
TASK_ID = "task-1"
ROLES = {"planner", "researcher", "scraper", "analyst", "reviewer"}


# --- text helpers -----------------------------------------------------------------------------------

@pytest.mark.parametrize("a, b", [("failures", "failure"), ("retries", "retry"), ("workflows", "workflow"),
                                  ("recorded", "record"), ("queues", "queue")])
def test_stem_makes_inflections_meet(a: str, b: str) -> None:
    assert stem(a) == stem(b)


def test_stem_leaves_short_and_latin_words_alone() -> None:
    assert stem("status") == "status"
    assert stem("bus") == "bus"
    assert stem("thing") == "thing"


def test_keywords_drop_stopwords_keep_order_and_one_form_per_stem() -> None:
    assert keywords(QUESTION) == ["durable", "workflows", "survive", "worker", "failures"]
    assert keywords("Workflow or workflows? The workflow!") == ["workflow"]
    assert keywords("a b c d e f g h i j k", limit=3) == []
    assert len(keywords(" ".join(f"term{i}" for i in range(20)), limit=8)) == 8


def test_keywords_fall_back_to_any_word_when_only_stopwords() -> None:
    assert keywords("What is it that you would do?") == ["what", "that", "you", "would"]


def test_key_phrases_are_runs_of_content_words_and_subtopics_split_long_runs() -> None:
    assert key_phrases("How does rate limiting work for LLM APIs?") == ["rate limiting work", "llm apis"]
    assert subtopics("How does rate limiting work for LLM APIs?") == ["rate limiting work", "llm apis"]
    assert subtopics(QUESTION) == ["durable", "workflows", "survive", "worker", "failures"]


def test_score_text_counts_distinct_terms_before_repeats() -> None:
    terms = ["lease", "worker"]
    broad = "A worker renews its lease."
    narrow = "Lease lease lease lease."
    assert score_text(broad, terms) == 2.0
    assert score_text(narrow, terms) == 1.3
    assert score_text("nothing relevant", terms) == 0.0
    assert score_text("anything", []) == 0.0
    assert matched_terms(broad, ["worker", "queue", "leases"]) == ["worker", "leases"]


def test_top_passages_best_first_without_zero_scores() -> None:
    body = ["Queues hold messages.", "A worker holds a lease on a task.", "Leases expire.", "Unrelated."]
    found = top_passages("doc", body, ["lease", "worker"], limit=5)
    assert [p["index"] for p in found] == [1, 2]
    assert found[0] == {"document": "doc", "index": 1, "text": body[1], "score": 2.0,
                        "matched": ["lease", "worker"]}
    assert top_passages("doc", body, ["lease"], limit=1)[0]["index"] == 1


def test_claim_from_takes_best_sentence_and_extends_a_short_one() -> None:
    para = "Clocks drift. Fencing tokens prevent this. Each lease grant carries a rising number."
    assert claim_from(para, ["fencing"]) == ("Fencing tokens prevent this. "
                                             "Each lease grant carries a rising number.")
    long = ("Fencing tokens prevent a stale worker from writing after its lease expired and it lost "
            "ownership of the task.")
    assert claim_from(f"{long} Next.", ["fencing"]) == long
    assert claim_from("Only fencing.", ["fencing"]) == "Only fencing."


def passage(doc: str, index: int, text: str, terms: list[str]) -> dict[str, Any]:
    return {"document": doc, "index": index, "text": text, "score": score_text(text, terms),
            "matched": matched_terms(text, terms)}


def test_build_findings_covers_new_terms_first_and_caps_each_document() -> None:
    terms = ["lease", "worker", "queue"]
    texts = [
        ("a", "A worker renews its lease so that the coordinator knows that it still works."),
        ("a", "A lease held by a worker expires when the worker stops renewing the lease."),
        ("a", "The worker lease is renewed from a background task while the step is running."),
        ("b", "A queue decouples producers from consumers and absorbs bursts of incoming work."),
    ]
    passages = [passage(doc, i, text, terms) for i, (doc, text) in enumerate(texts)]
    findings = build_findings(passages, terms, limit=3, per_document=2)
    assert [f["sources"] for f in findings] == [["a"], ["b"], ["a"]]
    # The queue claim (a new term) comes before a second claim about leases and workers.
    assert "queue" in findings[1]["claim"]


def test_build_findings_merges_one_claim_found_in_two_documents() -> None:
    text = "A worker holds a lease on each task it claims, and it renews the lease while it works."
    findings = build_findings([passage("a", 0, text, ["lease"]), passage("b", 3, text, ["lease"])], ["lease"])
    assert findings == [{"claim": text, "sources": ["a", "b"]}]


def test_review_approves_full_coverage_with_citations() -> None:
    findings = [{"claim": "Durable workflows replay recorded steps.", "sources": ["x"]},
                {"claim": "A worker that crashes loses nothing; failures requeue its task.",
                 "sources": ["y"]}]
    verdict = review_draft(["durable", "workflow", "worker", "failure"], findings)
    assert verdict["approved"] is True
    assert verdict["missing"] == []
    assert verdict["score"] == pytest.approx(0.7 + 0.2 + 0.1 * 2 / 3, abs=1e-3)


def test_review_names_missing_terms_and_never_approves_uncited_claims() -> None:
    findings = [{"claim": "Leases expire.", "sources": ["x"]}]
    verdict = review_draft(["lease", "fencing"], findings)
    assert verdict["approved"] is False
    assert verdict["missing"] == ["fencing"]
    assert "fencing" in verdict["feedback"]
    uncited = review_draft(["lease"], [{"claim": "Leases expire.", "sources": []}], threshold=0.0)
    assert uncited["approved"] is False
    assert "cite no source" in uncited["feedback"]
    empty = review_draft(["lease"], [])
    assert (empty["approved"], empty["score"], empty["missing"]) == (False, 0.0, ["lease"])


# --- corpus -----------------------------------------------------------------------------------------

def test_corpus_has_six_to_eight_documents_of_three_to_eight_paragraphs() -> None:
    names = corpus_names()
    assert 6 <= len(names) <= 8
    assert names == sorted(names)
    for name in names:
        doc = document(name)
        assert doc.title and 3 <= len(doc.body) <= 8, name
        assert read_document(name).startswith(doc.title + "\n\n")


@pytest.mark.parametrize("name", ["missing", "../research", "corpus/durable-execution", ""])
def test_read_document_accepts_only_corpus_names(name: str) -> None:
    with pytest.raises(KeyError):
        read_document(name)


def test_rank_documents_puts_the_relevant_document_first() -> None:
    ranked = rank_documents(keywords(QUESTION), limit=3)
    assert ranked[0] == "durable-execution"
    assert len(ranked) == 3
    assert rank_documents(["token", "bucket"], limit=8)[0] == "rate-limiting"
    assert rank_documents(["zzzz"], limit=2) == corpus_names()[:2]


def test_search_finds_a_passage_per_matching_document() -> None:
    found = search(["fencing"])
    assert [p["document"] for p in found] == ["leases-and-failure-detection"]


# --- catalogue and the workflow, in-process ----------------------------------------------------------

def test_catalog_finds_the_research_workflow_and_five_roles() -> None:
    catalog = load_catalog(["agents"])
    assert "research" in catalog.workflows
    assert set(catalog.agents) == ROLES
    for role, cls in catalog.agents.items():
        config = cls.pool_config()
        assert config.min_replicas == 1 and 2 <= config.max_replicas <= 4, role
    assert catalog.agent("scraper").pool_config().concurrency == 8


def test_research_input_is_validated() -> None:
    wf = load_catalog(["agents"]).workflow("research")
    assert wf.validate_input({"question": QUESTION}).model_dump() == {
        "question": QUESTION, "max_documents": 6, "max_rounds": 2, "urls": []}
    for bad in ({"question": "hi"}, {"question": QUESTION, "max_documents": 0},
                {"question": QUESTION, "max_rounds": 6}, {"question": QUESTION, "typo": 1},
                {"question": QUESTION, "urls": ["https://example.org/"] * 21}):
        with pytest.raises(InvalidInput):
            wf.validate_input(bad)


def complete(request: ChatRequest) -> Completion:
    """What the simulated engine answers, without its latency."""
    text = "".join(simulated_text(prompt_text(request), request.max_tokens))
    return Completion(model=request.model, text=text, usage=Usage(prompt_tokens=0, completion_tokens=0))


class LocalAgentServices:
    """An ``AgentContext``'s services in-process: the simulated engine (no latency) answers, tools
    run here."""

    def __init__(self) -> None:
        self.engine = SimulatedEngine("sim", SimulatedEngineConfig(ttft_s=0, tpot_s=0))

    async def chat(self, request: ChatRequest, plan: Any = None) -> Completion:
        return await self.engine.chat(request)

    async def call_tool(self, name: str, args: dict[str, Any], call_id: str | None = None) -> Any:
        tool = defined_tool(name)
        return await tool.call(tool.validate(args), ToolContext(ToolSettings(), name, TASK_ID))

    async def call_agent(self, role: str, step_key: str, payload: Any,
                         timeout_s: float | None) -> Any:
        raise AssertionError("the research roles delegate to no one")

    async def publish(self, topic: str, data: Any, key: str | None, event_id: str) -> Any:
        raise AssertionError("the research roles publish nothing")

    def emit(self, kind: str, data: dict[str, Any]) -> None:
        pass


class LocalServices:
    """Runs agent calls in-process; ``live=False`` refuses them, to prove a replay needs none."""

    def __init__(self, live: bool = True) -> None:
        self.catalog = load_catalog(["agents"])
        self.live = live
        self.calls: list[str] = []
        self.events: list[dict[str, Any]] = []

    async def record(self, key: str, value: Any) -> Any:
        return value

    async def call_agent(self, role: str, key: str, payload: Any) -> Any:
        assert self.live, f"replay ran agent step {key}"
        self.calls.append(key)
        msg = AgentMessage(id=key, role=role, task_id=TASK_ID, step_key=key, payload=payload)
        agent = self.catalog.agent(role)()
        return await agent.handle(msg, AgentContext(msg, LocalAgentServices(), "sim", agent))

    async def chat(self, request: ChatRequest, plan: Any = None) -> Completion:
        assert self.live, "replay ran an LLM step"
        return complete(request)

    def emit(self, kind: str, data: dict[str, Any]) -> None:
        self.events.append(data)


def run_research(data: dict[str, Any], services: LocalServices,
                 recorded: dict[str, Any]) -> ResearchReport:
    """Run the workflow once; steps already in ``recorded`` replay, new ones are added to it."""
    wf = services.catalog.workflow("research")
    ctx = Context(TASK_ID, "research", 0, "default", recorded, services,
                  StepDefaults(RetryPolicy(max_attempts=1), "sim-small"))

    async def main() -> ResearchReport:
        return await wf.fn(ctx, wf.validate_input(data))

    return asyncio.run(main())


def test_research_workflow_writes_a_cited_report_and_replays_without_calls() -> None:
    services = LocalServices()
    recorded: dict[str, Any] = {}  # the Context records every step's output here
    out = run_research({"question": QUESTION, "max_documents": 4}, services, recorded)
    assert sum(k.startswith("agent:scraper") for k in services.calls) == 4
    assert services.calls[0] == "agent:planner" and "agent:reviewer" in services.calls
    assert out.findings and all(f.sources for f in out.findings)
    assert out.sources[0] == "durable-execution"
    assert set(out.sources) == {s for f in out.findings for s in f.sources}
    assert 1 <= out.rounds <= 2 and out.approved == (out.score >= 0.75)
    assert out.report.startswith(f"# {QUESTION}\n")
    assert "## Findings" in out.report and "## Sources" in out.report
    assert services.events[-1]["progress"] == 1.0

    again = run_research({"question": QUESTION, "max_documents": 4}, LocalServices(live=False),
                         dict(recorded))
    assert again == out


def test_research_revises_a_draft_the_reviewer_rejects() -> None:
    services = LocalServices()
    # "fencing" appears in one document only, which the analyst never sees with max_documents=1.
    out = run_research({"question": "Which lease rules and fencing tokens protect the queue?",
                        "max_documents": 1, "max_rounds": 3}, services, {})
    assert "agent:researcher" in services.calls
    assert out.rounds >= 2
    assert len(out.sources) >= 2
