"""raysquad's metrics on Ray's own Prometheus endpoint: a known piece of work runs, the endpoint is
scraped before and after, and each metric moved by what ran, with the right labels."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from runtime import TaskStatus
from tests.conftest import wait_for
from tests.integration.conftest import METRICS_PORT

Series = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape() -> Series:
    text = httpx.get(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=10).text
    out: Series = defaultdict(float)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("ray_raysquad_"):
                labels = frozenset((k, v) for k, v in sample.labels.items()
                                   if k in ("workflow", "status", "kind", "queue", "model", "topic",
                                            "target", "outcome", "key", "tool"))
                out[(sample.name, labels)] += sample.value
    return out


def value(series: Series, name: str, **labels: str) -> float:
    wanted = set(labels.items())
    return sum(v for (n, ls), v in series.items() if n == name and wanted <= ls)


def test_metrics_move_with_the_work_that_ran(make_runtime, side_dir) -> None:
    rt = make_runtime(["tests.apps.basic", "tests.apps.events"], event_poll_s=0.1,
                      simulated={"ttft_s": 0.05, "tpot_s": 0.01})
    client = rt.client()
    before = scrape()

    tasks = [client.submit("five_steps", {"dir": str(side_dir), "steps": 5}) for _ in range(3)]
    agent = client.submit("ask_chief", {"word": "hi"})
    chat = client.submit("chatty", {"text": "hello"})
    client.publish("digest.metrics", {"dir": str(side_dir), "url": "m"})
    for task in [*tasks, agent, chat]:
        assert client.wait(task.id, timeout_s=90).status is TaskStatus.SUCCEEDED
    wait_for(lambda: len(client.list(workflow="digest")) == 1 and
             client.list(workflow="digest")[0].status is TaskStatus.SUCCEEDED,
             timeout_s=60, what="the event's task")

    def moved() -> Any:
        after = scrape()
        deltas = {
            "submitted": value(after, "ray_raysquad_tasks_submitted_total", workflow="five_steps")
            - value(before, "ray_raysquad_tasks_submitted_total", workflow="five_steps"),
            "finished": value(after, "ray_raysquad_tasks_finished_total", workflow="five_steps",
                              status="succeeded")
            - value(before, "ray_raysquad_tasks_finished_total", workflow="five_steps",
                    status="succeeded"),
            "steps": value(after, "ray_raysquad_step_seconds_count", workflow="five_steps",
                           kind="step")
            - value(before, "ray_raysquad_step_seconds_count", workflow="five_steps", kind="step"),
            "agent steps": value(after, "ray_raysquad_step_seconds_count", workflow="ask_chief",
                                 kind="agent")
            - value(before, "ray_raysquad_step_seconds_count", workflow="ask_chief", kind="agent"),
            "task seconds": value(after, "ray_raysquad_task_seconds_count", workflow="five_steps")
            - value(before, "ray_raysquad_task_seconds_count", workflow="five_steps"),
            "tokens": value(after, "ray_raysquad_llm_tokens_total")
            - value(before, "ray_raysquad_llm_tokens_total"),
            "published": value(after, "ray_raysquad_events_published_total",
                               topic="digest.metrics")
            - value(before, "ray_raysquad_events_published_total", topic="digest.metrics"),
            "delivered": value(after, "ray_raysquad_events_delivered_total", target="workflow")
            - value(before, "ray_raysquad_events_delivered_total", target="workflow"),
            "ttft": value(after, "ray_raysquad_llm_ttft_seconds_count")
            - value(before, "ray_raysquad_llm_ttft_seconds_count"),
            "in flight": [k for k in after if k[0] == "ray_raysquad_llm_in_flight"],
            "queue": [k for k in after if k[0] == "ray_raysquad_queue_depth"],
        }
        expected = {"submitted": 3, "finished": 3, "steps": 15, "agent steps": 1,
                    "task seconds": 3, "published": 1, "delivered": 1, "ttft": 1}
        # Each process reports on its own clock: the mailbox's depth may come a report later
        # than the worker's counters, so the wait is for all of them. The series carry no runtime
        # label and the cluster is the package's: an earlier test's runtime (stopped, its last
        # report late on a loaded machine) may add to them, so each moves by at least this test's.
        queues = {dict(labels).get("queue") for _, labels in deltas["queue"]}
        last.update(deltas)
        if all(deltas[k] >= v for k, v in expected.items()) and deltas["tokens"] > 0 \
                and "tasks" in queues and any(q and q.startswith("agent:") for q in queues) \
                and deltas["in flight"]:
            return deltas
        return None

    last: dict[str, Any] = {}
    try:
        wait_for(moved, timeout_s=90, interval_s=2.0,
                 what="the metrics to be exported (Ray reports them every few seconds)")
    except AssertionError as e:
        raise AssertionError(f"{e}; last deltas: {last}") from None
