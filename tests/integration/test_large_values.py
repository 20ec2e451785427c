"""A 12 MB value handed between agents goes by reference, and outlives a restart of the runtime."""

from __future__ import annotations

import asyncio
import hashlib
import random
from pathlib import Path

from runtime import TaskStatus
from tests.conftest import wait_for

SIZE_MB = 12  # over the 1 MiB inline limit many times: what matters is that it is not copied


def test_large_value_moves_by_reference_and_survives_restart(make_runtime, side_dir: Path,
                                                             tmp_path: Path) -> None:
    rt = make_runtime()
    client = rt.client()
    task = client.submit("big_handoff", {"dir": str(side_dir), "size_mb": SIZE_MB})
    wait_for(lambda: any(e.kind == "step" and e.data["key"] == "agent:consumer"
                         for e in client.events(task.id)),
             timeout_s=90, what="the consumer to have read the value")

    # The workflow got a Ref back from the producer, not 12 MB of bytes.
    assert (side_dir / f"{task.id}.producer_ref.Ref").exists()
    # Neither mailbox ever held the bytes: what passed through the queues was a reference.
    for role in ("producer", "consumer"):
        stats = asyncio.run(rt.mailboxes[role].stats())
        assert stats["total_put"] >= 1
        assert stats["max_item_bytes"] < 64 * 1024, (role, stats)
    # The Store wrote the value once, as a blob, when the producer's step was recorded.
    step_events = [e for e in client.events(task.id) if e.kind == "step"]
    producer_step = next(e for e in step_events if e.data["key"] == "agent:producer")
    assert producer_step.data["bytes"] < 1024 and len(producer_step.data["blobs"]) == 1
    blob = asyncio.run(rt.store.read_blob(producer_step.data["blobs"][0]))  # a file, or a row
    assert len(blob) > SIZE_MB * 1024 * 1024
    assert not any(e.data["blobs"] for e in step_events if e.data["key"] != "agent:producer")

    # Stop the whole runtime (every actor, and so every object they owned), start it again.
    rt.stop(shutdown_ray=False)
    rt2 = make_runtime()
    client2 = rt2.client()
    (side_dir / f"{task.id}.open").touch()
    done = client2.wait(task.id, timeout_s=90)
    assert done.status is TaskStatus.SUCCEEDED, done.error

    expected = hashlib.sha256(random.Random(7).randbytes(SIZE_MB * 1024 * 1024)).hexdigest()
    out = done.output
    assert out["sha256"] == expected
    # The consumer got the very object the producer put: a reference, not a copy.
    assert out["consumer_saw"]["type"] == "Ref"
    assert out["consumer_saw"]["object_id"] == (side_dir / f"{task.id}.producer_oid").read_text()
    assert out["verified"] is True  # read back from the blob after the restart
    assert done.runs == 2
