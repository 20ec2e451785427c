"""The status page in a real browser: headless Chromium (the system's, driven by Playwright) on the
shared server. A submitted task appears in the list; its page shows its steps on the timeline; an
event arrives without a reload; the cancel button cancels. A screenshot is saved with the test."""

from __future__ import annotations

import shutil
from pathlib import Path

from playwright.sync_api import Browser, Page, Playwright, expect, sync_playwright

from tests.conftest import wait_for
from tests.e2e.live import Api
from tests.e2e.test_http import stream_events

TIMEOUT_MS = 60_000
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
