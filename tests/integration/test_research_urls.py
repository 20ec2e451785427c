"""The research workflow reads web pages through http_fetch and extract_text when given URLs."""

from __future__ import annotations

from collections.abc import Callable

from runtime import Runtime, TaskStatus, ToolSettings
from tests.conftest import wait_for
from tests.servers import upstream

PAGE = """<html><head><title>Checkpoints in practice</title><script>track()</script></head><body>
<nav>Home | About</nav>
<p>Durable workflows survive worker failures because every checkpoint is written before the next
step starts, so a resumed workflow replays its recorded checkpoints.</p>
<p>Unrelated: the cafeteria opens at nine.</p></body></html>"""


def test_scrapers_read_configured_urls_with_the_fetch_and_extract_tools(
        shared_runtime: Callable[..., Runtime]) -> None:
    with upstream() as up:
        up.pages["/durable.html"] = PAGE
        rt = shared_runtime(["agents"], tools=ToolSettings(http_allow_networks=("127.0.0.1/32",),
                                                           http_allow_ports=("1024-65535",)))
        client = rt.client()
        url, private = up.url("/durable.html"), "http://10.1.2.3/never-reached"
        task = client.submit("research", {
            "question": "How do durable workflows survive worker failures with checkpoints?",
            "max_documents": 2, "urls": [url, private]}).id
        wait_for(lambda: client.get(task).status.ended, 180, 0.2, "the research task to end")
        record = client.get(task)
        assert record.status == TaskStatus.SUCCEEDED, record.error

        report = record.output
        assert up.count("/durable.html") == 1
        assert url in report["sources"]
        cited = [f for f in report["findings"] if url in f["sources"]]
        assert cited and all("cafeteria" not in f["claim"] for f in cited)
        assert "Checkpoints in practice" in report["report"]  # the page's title, from extract_text
        assert private not in report["sources"]  # refused by the guard, and the research goes on
