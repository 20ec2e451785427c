"""The event-driven example app (agents/newsroom.py) end to end: documents published on docs.new
wake the cataloguer (no replica until then), which indexes each once; the digest workflow, which
the app schedules, digests them."""

from __future__ import annotations

import asyncio
import time
import uuid

from runtime import TaskStatus
from tests.conftest import wait_for

FAST = {"event_poll_s": 0.1, "event_retry_s": 2.0}


def test_documents_wake_the_cataloguer_and_the_digest_reports_them(make_runtime) -> None:
    rt = make_runtime(["agents.newsroom"], **FAST)
    client = rt.client()
    assert asyncio.run(rt.pools["cataloguer"].stats())["replicas"] == 0  # scaled to zero
    assert [s.id for s in client.schedules()] == ["newsroom-digest"]
    start = time.time()
    run = uuid.uuid4().hex[:6]
    docs = [{"id": f"{run}-{n}", "title": f"Leases and fencing {n}",
             "text": "A lease expires; a fencing token refuses the stale writer."}
            for n in range(3)]
    for doc in docs:
        client.publish("docs.new", doc, id=f"cms-{doc['id']}")
    client.publish("docs.new", docs[0], id=f"cms-{docs[0]['id']}")  # the CMS retried: one event
    # Another tenant files a document with the same id: its own index, its own digest.
    theirs = {**docs[0], "title": "Another tenant's secret"}
    client.publish("docs.new", theirs, id=f"cms-{docs[0]['id']}", tenant="other")

    def handled(event_id: str, tenant: str = "default") -> bool:  # none while not routed yet
        deliveries = client.event_report(event_id, tenant)[1]
        return bool(deliveries) and deliveries[0]["outcome"] == "handled"

    wait_for(lambda: all(handled(f"cms-{d['id']}") for d in docs), timeout_s=90,
             what="the cataloguer to index every doc")
    wait_for(lambda: handled(f"cms-{docs[0]['id']}", "other"), timeout_s=90,
             what="the other tenant's doc to be indexed")
    task = client.submit("newsroom_digest", {"since": start})
    record = client.wait(task.id, timeout_s=60)

    assert record.status is TaskStatus.SUCCEEDED
    digest = record.output
    assert digest["documents"] == 3
    assert sorted(digest["titles"]) == sorted(d["title"] for d in docs)
    assert {"lease", "fencing"} & set(digest["top_keywords"])
    other = client.wait(client.submit("newsroom_digest", {"since": start}, tenant="other").id,
                        timeout_s=60)
    assert other.output["titles"] == ["Another tenant's secret"]
