"""raysquad's example agents and the ``research`` workflow, written against ``runtime``'s public API.

The runtime finds workflows and agent roles among this module's own attributes, so each one is
imported here: ``Runtime.start(apps=["agents"])`` then runs ``research`` with its five roles.
"""

from agents.research import Finding, ResearchInput, ResearchReport, research
from agents.roles import Analyst, Planner, Researcher, Reviewer, Scraper
from agents.tools import read_document, search_corpus

__all__ = [
    "Analyst", "Finding", "Planner", "ResearchInput", "ResearchReport", "Researcher", "Reviewer",
    "Scraper", "read_document", "research", "search_corpus",
]
