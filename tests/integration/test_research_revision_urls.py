"""A research task whose draft cites a web page goes through a revision round and still succeeds.

The researcher used to look every cited source up in the corpus and failed on a URL. Here the draft
is rejected in round 1 on purpose: with one corpus document and the page, the question's "fencing",
"tokens", "backpressure" and "rules" are left uncovered (round 1 scores about 0.5 with the simulated
engine, well below the 0.75 threshold), so the researcher revises a draft that cites the page.
"""

from __future__ import annotations

from collections.abc import Callable

from runtime import Runtime, TaskStatus, ToolSettings
from tests.conftest import wait_for
from tests.servers import upstream

PAGE = """<html><head><title>Checkpoints in practice</title></head><body>
<p>Durable workflows survive worker failures because every checkpoint is written before the next
step starts, so a resumed workflow replays its recorded checkpoints.</p>
<p>Unrelated: the cafeteria opens at nine.</p></body></html>"""
QUESTION = "Which checkpoints, fencing tokens and backpressure rules protect durable workflows?"


def test_a_revision_round_keeps_findings_cited_from_a_url(shared_runtime: Callable[..., Runtime]) -> None:
    with upstream() as up:
        up.pages["/checkpoints.html"] = PAGE
        rt = shared_runtime(["agents"], tools=ToolSettings(http_allow_networks=("127.0.0.1/32",),
                                                           http_allow_ports=("1024-65535",)))
        client = rt.client()
        url = up.url("/checkpoints.html")
        task = client.submit("research", {"question": QUESTION, "max_documents": 1, "max_rounds": 3,
                                          "urls": [url]}).id
        wait_for(lambda: client.get(task).status.ended, 180, 0.2, "the research task to end")
        record = client.get(task)
        assert record.status == TaskStatus.SUCCEEDED, record.error

        report = record.output
        assert report["rounds"] >= 2  # round 1 was not approved, so the researcher revised the draft
        assert url in report["sources"]
        assert any(url in f["sources"] for f in report["findings"])
        assert len(report["sources"]) > 2  # the revision added corpus documents beside the page
        # The page keeps the title its scraper read; the revision neither lost it nor fetched again.
        assert f"Checkpoints in practice (`{url}`)" in report["report"]
        assert up.count("/checkpoints.html") == 1
