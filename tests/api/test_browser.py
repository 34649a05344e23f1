"""End to end in a real browser: Debian's headless Chromium, driven by Playwright (which
downloads no browser), against `warren api` served by uvicorn on a real worker and broker."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Dialog, Page, async_playwright, expect

from processor import RetryPolicy, Workflow, WorkflowEvent, WorkflowStep
from tests.api.conftest import WRITE
from tests.conftest import TestEnv, assert_eventually, require_tool

pytestmark = pytest.mark.integration

CHARGES: Counter[str] = Counter()


async def create_invoice(order: str) -> dict[str, str]:
    return {"invoice": f"inv-{order}"}


async def charge_card(order: str) -> dict[str, str]:
    CHARGES[order] += 1
    if CHARGES[order] == 1:
        raise ConnectionError("the card processor timed out")
    return {"charge": f"ch-{order}"}


async def ship(order: str) -> dict[str, str]:
    return {"tracking": f"TRACK-{order}"}


class Shipment(Workflow[dict[str, Any]]):
    """Every kind of step: a retried one, a sleep, an approval to wait for."""

    name = "browser-shipment"

    async def run(self, event: WorkflowEvent[dict[str, Any]], step: WorkflowStep) -> Any:
        order = event.payload["order"]
        invoice = await step.do("create invoice", create_invoice, order)
        charge = await step.do(
            "charge card", charge_card, order, retries=RetryPolicy(limit=3, delay="1 second")
        )
        await step.sleep("cooling-off", "1 second")
        approval = await step.wait_for_event("manager approval", type="approval", timeout="1 day")
        shipment = await step.do("ship", ship, order)
        return {**invoice, **charge, **shipment, "approval": approval.payload}


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_approving_a_waiting_instance_in_the_browser_completes_it(
    env: TestEnv, server: str, tmp_path: Path
) -> None:
    """Saves screenshots in $WARREN_SCREENSHOTS (default: the test's tmp_path); the
    README's docs/dashboard.png is one of them."""
    chromium = require_tool("chromium")
    screenshots = Path(os.environ.get("WARREN_SCREENSHOTS", tmp_path))
    await env.start_worker(Shipment)
    await env.client.create(Shipment, {"order": "o-42", "amount_cents": 1250}, id="order-42")

    async def waiting() -> bool:
        return (await env.client.status("order-42")).status == "waiting"

    await assert_eventually(waiting, what="order-42 to wait for its approval")

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=chromium)
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 900})
            await log_in(page, server)
            await page.goto(f"{server}/ui/instances")
            await page.screenshot(path=screenshots / "instances.png", full_page=True)
            await page.get_by_role("link", name="order-42").click()
            await expect(page.locator("#status")).to_have_text("waiting")
            await expect(page.get_by_text("Waiting for event approval")).to_be_visible()
            await expect(page.get_by_text("2 attempts")).to_be_visible()
            await page.screenshot(path=screenshots / "instance-waiting.png", full_page=True)

            questions: list[str] = []

            async def confirm(dialog: Dialog) -> None:
                questions.append(dialog.message)
                await dialog.accept()

            page.on("dialog", confirm)
            await page.locator("textarea[name=payload]").fill('{"by": "ann"}')
            await page.get_by_role("button", name="Approve").click()

            # The page refreshes itself until the instance completes.
            await expect(page.locator("#status")).to_have_text("complete", timeout=20_000)
            await expect(page.locator("#output")).to_contain_text('"approved": true')
            assert questions == ["Send event 'approval' to order-42?"]
            await page.screenshot(path=screenshots / "instance-complete.png", full_page=True)
        finally:
            await browser.close()

    status = await env.client.status("order-42")
    assert status.output["approval"] == {"by": "ann", "approved": True}
    assert status.output["tracking"] == "TRACK-o-42"


async def log_in(page: Page, server: str) -> None:
    await page.goto(f"{server}/ui/instances")
    await expect(page).to_have_url(f"{server}/ui/login?next=/ui/instances")
    await page.get_by_label("API token").fill(WRITE)
    await page.get_by_role("button", name="Log in").click()
    await expect(page).to_have_url(f"{server}/ui/instances")
