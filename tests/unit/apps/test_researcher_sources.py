"""The researcher revises drafts whose findings cite web pages, not only corpus documents (no Ray).

A URL source is a page a scraper read: its title arrived in the scraper's reply and the workflow keeps
it, so the researcher must carry such a finding through a revision without looking it up in the corpus.
"""

from __future__ import annotations

import asyncio
from typing import Any

from agents.library import document
from agents.roles import Researcher
from runtime.core.models import AgentMessage
from runtime.replicas.replica import AgentContext
from tests.unit.apps.test_agents_logic import LocalAgentServices

URL = "http://127.0.0.1:9/page"
PAGE_FINDING = {"claim": "Durable workflows replay their recorded checkpoints after a crash.",
                "sources": [URL]}


def revise(payload: dict[str, Any]) -> dict[str, Any]:
    msg = AgentMessage(id="agent:researcher", role="researcher", task_id="task-1",
                       step_key="agent:researcher", payload=payload)
    agent = Researcher()
    return asyncio.run(agent.handle(msg, AgentContext(msg, LocalAgentServices(), "sim", agent)))


def test_researcher_keeps_a_finding_sourced_from_a_url() -> None:
    out = revise({"question": "Which lease rules and fencing tokens protect the queue?",
                  "terms": ["lease", "fencing"], "findings": [PAGE_FINDING],
                  "feedback": "Not yet covered: fencing.", "missing": ["fencing"]})
    assert out["findings"][0] == PAGE_FINDING
    # The missing term is still searched for in the corpus, and the document found is titled.
    added = out["findings"][1:]
    assert added and added[0]["sources"] == ["leases-and-failure-detection"]
    assert out["titles"] == {"leases-and-failure-detection":
                             document("leases-and-failure-detection").title}
    # The page is not titled here: the workflow has its title from the scraper that read it.
    assert URL not in out["titles"]


def test_researcher_titles_corpus_sources_beside_a_url_one() -> None:
    both = {"claim": "A worker renews its lease while it runs a task.",
            "sources": [URL, "durable-execution"]}
    out = revise({"question": "How do leases work?", "terms": ["lease"],
                  "findings": [both], "feedback": "", "missing": []})
    assert out["findings"] == [both]
    assert out["titles"] == {"durable-execution": document("durable-execution").title}
