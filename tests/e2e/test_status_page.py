"""The status page in a real browser: headless Chromium (the system's, driven by Playwright) on the
shared server. A submitted task appears in the list; its page shows its steps on the timeline; an
event arrives without a reload; the cancel button cancels. An ended task's page, opened by its link,
is drawn from its recorded history alone; the list filters by status and finds a task by id.
Screenshots are saved with the tests; with RAYSQUAD_DOCS_SCREENSHOTS=1, the README's are copied to
docs/img/ too."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import httpx
from playwright.sync_api import Browser, Page, Playwright, expect, sync_playwright

from tests.conftest import wait_for
from tests.e2e.live import Api
from tests.e2e.test_http import stream_events

TIMEOUT_MS = 60_000
DOCS_IMG = Path(__file__).resolve().parents[2] / "docs" / "img"
expect.set_options(timeout=TIMEOUT_MS)


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    assert path, "the browser test needs Chromium: scripts/ensure_chromium.sh installs it"
    return path


def signed_in(p: Playwright, api: Api) -> tuple[Browser, Page]:
    """Headless Chromium on the status page, signed in with key-a (the server has API keys: the
    page asks for one)."""
    browser = p.chromium.launch(executable_path=chromium(), headless=True,
                                args=["--no-sandbox", "--disable-gpu"])
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(api.url)
    page.fill("#key", "key-a")
    page.click("#key-form button")
    return browser, page


def test_the_status_page_follows_a_task_and_cancels_it(api: Api, tmp_path: Path) -> None:
    client = api.client("key-a")

    def held(gate_at: int) -> str:
        task_id: str = client.post("/v1/tasks", json={"workflow": "five_steps", "input": {
            "dir": str(api.dir), "steps": 3, "gate_at": gate_at}}).json()["id"]
        wait_for(lambda: (api.dir / f"{task_id}.at_gate").exists(), timeout_s=90,
                 what=f"the task to reach its gate at step {gate_at}")
        return task_id

    followed, cancelled = held(2), held(1)
    with sync_playwright() as p:
        browser, page = signed_in(p, api)
        row = page.locator(f'#tasks tr[data-id="{followed}"]')
        expect(row).to_contain_text("five_steps")

        row.locator("a").click()
        expect(page.locator("#task-title")).to_contain_text(followed)
        expect(page.locator('#timeline .bar[data-key="s1"]')).to_be_visible()
        expect(page.locator("#events li.event-step")).to_have_count(1)
        (api.dir / f"{followed}.open").touch()  # steps 2 and 3 run: their events arrive, no reload
        expect(page.locator('#timeline .bar[data-key="s3"]')).to_be_visible()
        expect(page.locator("#events li.event-step")).to_have_count(3)
        expect(page.locator("#task-meta")).to_contain_text("status succeeded")
        page.screenshot(path=str(tmp_path / "status-page.png"), full_page=True)

        page.goto(f"{api.url}/#task/{cancelled}")
        expect(page.locator("#task-title")).to_contain_text(cancelled)
        page.click("#cancel")
        wait_for(lambda: client.get(f"/v1/tasks/{cancelled}").json()["cancel_requested"],
                 timeout_s=30, what="the cancel to be asked for")
        (api.dir / f"{cancelled}.open").touch()  # it stops at its next step boundary
        expect(page.locator("#task-meta")).to_contain_text("status cancelled")
        browser.close()

    assert client.get(f"/v1/tasks/{cancelled}").json()["status"] == "cancelled"
    assert (tmp_path / "status-page.png").stat().st_size > 10_000


def test_the_status_page_shows_an_agents_turns_and_approves_its_call(api: Api, tmp_path: Path
                                                                      ) -> None:
    """A declared agent (simulated engine) calls a tool that waits for a person: the page shows the
    call and its arguments; the arguments are edited and approved there; the timeline shows the
    agent's turns, its calls under its step, the approval and the answer."""
    client = api.client("key-a")
    task_id: str = client.post("/v1/tasks", json={"workflow": "refund_order", "input": {
        "request": "Please refund order 42."}}).json()["id"]
    wait_for(lambda: (client.get(f"/v1/tasks/{task_id}").json()["waiting_for"] or ""
                      ).startswith("approval:"), timeout_s=120, what="the refund to wait for a person")
    with sync_playwright() as p:
        browser, page = signed_in(p, api)
        page.goto(f"{api.url}/#task/{task_id}")
        expect(page.locator("#approval")).to_be_visible()
        expect(page.locator("#approval-what")).to_contain_text("refund")
        expect(page.locator("#timeline .mark-approval")).to_have_count(1)
        page.fill("#approval-arguments", "not json")
        page.click("#approve")  # refused on the page, before anything is sent
        expect(page.locator("#approval-error")).to_contain_text("not JSON")
        page.fill("#approval-arguments", '{"order_id": "42", "amount": 12.5}')
        page.click("#approve")
        expect(page.locator("#task-meta")).to_contain_text("status succeeded")
        expect(page.locator("#approval")).to_be_hidden()
        expect(page.locator("#timeline .mark-calls")).to_contain_text("refund")
        expect(page.locator("#timeline .mark-answer")).to_have_count(1)
        expect(page.locator("#timeline .row.call .kind-tool")).to_have_count(1)
        expect(page.locator("#timeline .row.call .kind-llm")).to_have_count(2)
        page.screenshot(path=str(tmp_path / "approval.png"), full_page=True)
        browser.close()

    task = client.get(f"/v1/tasks/{task_id}").json()
    assert task["status"] == "succeeded" and task["output"]  # (edited arguments: test_acting)
    events = [e.data for e in stream_events(client, task_id)]  # the task has ended: the stream ends
    assert [e["kind"] for e in events].count("approval.requested") == 1
    assert [e["key"] for e in events if e["kind"] == "step" and "/tool:refund" in e["key"]] != []


def ended(client: httpx.Client, task_id: str) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        task: dict[str, Any] = client.get(f"/v1/tasks/{task_id}").json()
        return task if task["status"] in ("succeeded", "failed", "cancelled") else None

    task: dict[str, Any] = wait_for(done, timeout_s=120, what=f"task {task_id} to end")
    return task


def test_an_ended_tasks_page_is_drawn_from_its_history_and_the_list_filters_and_finds(
        api: Api, tmp_path: Path) -> None:
    """The issue's must-show. A multi-step task runs to its end (and another fails); its page,
    opened at its link, draws one bar per recorded step, its events and its result from
    GET /v1/tasks/<id>/history, and opens no event stream. The list filters by status (the select,
    or a count) and finds the task by its id."""
    client = api.client("key-a")

    def submitted(workflow: str, data: dict[str, Any]) -> str:
        task_id: str = client.post("/v1/tasks", json={"workflow": workflow, "input": data}).json()["id"]
        return task_id

    done = submitted("five_steps", {"dir": str(api.dir), "steps": 5, "sleep_s": 0.05})
    failed = submitted("flaky", {"dir": str(api.dir), "fail_times": 9, "attempts": 2})
    assert ended(client, done)["status"] == "succeeded"
    assert ended(client, failed)["status"] == "failed"
    history = client.get(f"/v1/tasks/{done}/history").json()
    steps = [e["key"] for e in history["items"] if e["kind"] == "step"]
    assert steps == ["s1", "s2", "s3", "s4", "s5"] and history["next_after"] is None

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), headless=True,
                                    args=["--no-sandbox", "--disable-gpu"])
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        # The key as the key form keeps it, so that the task's link is the first page opened.
        context.add_init_script("localStorage.setItem('raysquad-key', 'key-a')")
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        asked: list[str] = []
        page.on("request", lambda request: asked.append(request.url))
        page.goto(f"{api.url}/#task/{done}")  # the task's link, opened as the first page

        expect(page.locator("#task-title")).to_contain_text(f"five_steps {done}")
        expect(page.locator("#timeline .bar[data-key]")).to_have_count(len(steps))
        for key in steps:
            expect(page.locator(f'#timeline .bar[data-key="{key}"]')).to_be_visible()
        expect(page.locator("#events li")).to_have_count(len(history["items"]))
        expect(page.locator("#events li.event-step")).to_have_count(len(steps))
        expect(page.locator("#events li.event-succeeded")).to_have_count(1)
        expect(page.locator("#result")).to_contain_text('"done": 5')
        expect(page.locator("#input")).to_contain_text('"steps": 5')
        expect(page.locator("#task-meta")).to_contain_text("status succeeded")
        expect(page.locator("#task-meta")).to_contain_text("duration")
        expect(page.locator("#timeline .row.task .seg-running")).to_have_count(1)
        expect(page.locator("#cancel")).to_be_disabled()
        page.screenshot(path=str(tmp_path / "status-task.png"), full_page=True)
        assert any(f"/v1/tasks/{done}/history" in url for url in asked), asked
        assert not any(f"/v1/tasks/{done}/events" in url for url in asked), asked  # no stream

        page.goto(f"{api.url}/#task/{failed}")  # a failure: its retry and its error are drawn
        expect(page.locator("#timeline .mark-retry")).to_have_count(1)
        expect(page.locator("#timeline .mark-failed")).to_contain_text("ConnectionError")
        expect(page.locator("#result")).to_contain_text("upstream down")
        expect(page.locator("#retry")).to_be_enabled()
        page.screenshot(path=str(tmp_path / "status-failed.png"), full_page=True)

        page.goto(f"{api.url}/#")
        rows = page.locator("#tasks tbody tr")
        expect(page.locator(f'#tasks tr[data-id="{done}"]')).to_contain_text("succeeded")
        expect(page.locator(f'#tasks tr[data-id="{failed}"] td.error')).to_contain_text("upstream")
        page.select_option("#filter-status", "succeeded")
        expect(page.locator(f'#tasks tr[data-id="{failed}"]')).to_have_count(0)
        expect(page.locator(f'#tasks tr[data-id="{done}"]')).to_be_visible()
        expect(page.locator("#tasks tbody tr:not(.status-succeeded)")).to_have_count(0)
        assert rows.count() >= 1
        page.click('#counts .count[data-status="failed"]')  # a count is a filter too
        expect(page.locator("#filter-status")).to_have_value("failed")
        expect(page.locator(f'#tasks tr[data-id="{failed}"]')).to_be_visible()
        expect(page.locator(f'#tasks tr[data-id="{done}"]')).to_have_count(0)
        expect(page.locator("#tasks tbody tr:not(.status-failed)")).to_have_count(0)
        page.click('#counts .count[data-status="failed"]')  # again: every status
        expect(page.locator("#filter-status")).to_have_value("")
        expect(page.locator(f'#tasks tr[data-id="{done}"]')).to_be_visible()
        expect(page.locator('#counts .count[data-status="succeeded"] .n')).not_to_have_text("0")
        expect(page.locator("#sparkline svg polyline")).to_have_count(1)
        expect(page.locator("#filter-workflow option", has_text="five_steps")).to_have_count(1)
        page.screenshot(path=str(tmp_path / "status-list.png"), full_page=True)

        page.fill("#find-id", "no-such-task")
        page.press("#find-id", "Enter")
        expect(page.locator("#find-error")).to_have_text("no task no-such-task")
        page.fill("#find-id", done)
        page.press("#find-id", "Enter")
        expect(page).to_have_url(f"{api.url}/#task/{done}")
        expect(page.locator("#task-title")).to_contain_text(f"five_steps {done}")
        browser.close()

    for name in ("status-list.png", "status-task.png"):
        shot = tmp_path / name
        assert shot.stat().st_size > 20_000, name
        if os.environ.get("RAYSQUAD_DOCS_SCREENSHOTS") == "1":  # the README's pictures, taken anew
            shutil.copyfile(shot, DOCS_IMG / name)
