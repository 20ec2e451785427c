"""The status page in a real browser: headless Chromium (the system's, driven by Playwright) on the
shared server. A submitted task appears in the list; its page shows its steps on the timeline; an
event arrives without a reload; the cancel button cancels. A screenshot is saved with the test."""

from __future__ import annotations

import shutil
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

from tests.conftest import wait_for
from tests.e2e.live import Api

TIMEOUT_MS = 60_000
expect.set_options(timeout=TIMEOUT_MS)


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    assert path, "the browser test needs Chromium: scripts/ensure_chromium.sh installs it"
    return path


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
        browser = p.chromium.launch(executable_path=chromium(), headless=True,
                                    args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(api.url)
        page.fill("#key", "key-a")  # the server has API keys: the page asks for one
        page.click("#key-form button")
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
