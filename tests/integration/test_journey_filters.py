"""Why a subscriber got no delivery, against `relay run`: its current filter, evaluated on the
stored record with the call view, in `GET /records/{account}/{rid}`, `relay inspect` (through
the admin API and from the state file alone) and the dashboard's journey view."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import orjson
import pytest
import yaml

from tests.helpers import KEY_A, ago
from tests.integration.test_dashboard import CHROMIUM, CHROMIUM_ARGS, need_chromium
from tests.opsrelay import TOKEN, OpsRelay, ops_relay, subscriber

pytestmark = pytest.mark.slow

MISSED_ONLY = {"call.missed": True}
FILTERED = "filtered out by the subscriber's filter"


def browser_ready() -> bool:
    """Chromium and playwright are there (in CI their absence fails the test); without them
    locally, only the browser part is left out."""
    try:
        need_chromium()
    except pytest.skip.Exception:
        return False
    return True


async def inspect(relay: OpsRelay, config: str, rid: int) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "relay", "inspect", "--config", config,
        "--account", "alpha", "--rid", str(rid),
        env=relay.env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()
    doc: dict[str, Any] = orjson.loads(out)
    return doc


async def test_a_filtered_out_subscriber_is_explained_everywhere(sim, receiver_factory, tmp_path):
    crm, crm_url = await receiver_factory()
    missed, missed_url = await receiver_factory()
    subs = [
        subscriber("crm", crm_url),
        subscriber("missed", missed_url, filter=MISSED_ONLY),
        subscriber("bravo_only", missed_url, accounts=["bravo"]),
    ]
    relay = await ops_relay(tmp_path, sim.url, subs, two_accounts=True).start()
    answered = sim.add_record(KEY_A, started_at=ago(40), direction="INCOMING",
                              disposition="ANSWERED")  # fmt: skip
    busy = sim.add_record(KEY_A, started_at=ago(30), direction="INCOMING", disposition="BUSY")
    await crm.wait_count(2, timeout=60)
    await missed.wait_count(1, timeout=60)

    async def journey(rid: int) -> dict[str, Any]:
        status, doc = await relay.call("GET", f"/records/alpha/{rid}")
        assert status == 200, doc
        return doc

    doc = await journey(answered["rid"])
    assert [d["subscriber"] for d in doc["deliveries"]] == ["crm"]
    assert (
        doc["missing"]["missed"].startswith(FILTERED)
        and "current filter" in doc["missing"]["missed"]
    )
    assert doc["missing"]["bravo_only"] == "subscriber is not subscribed to account alpha"
    passed = await journey(busy["rid"])
    assert {d["subscriber"] for d in passed["deliveries"]} == {"crm", "missed"}
    assert list(passed["missing"]) == ["bravo_only"]

    # relay inspect: through the admin API, and from the state file alone (no admin section).
    via_api = await inspect(relay, str(relay.config), answered["rid"])
    assert via_api["missing"] == doc["missing"]
    offline = tmp_path / "no-admin.yaml"
    offline.write_text(yaml.safe_dump({k: v for k, v in relay.doc.items() if k != "admin"}))
    from_file = await inspect(relay, str(offline), answered["rid"])
    assert (
        from_file["missing"] == doc["missing"] and from_file["deliveries"][0]["subscriber"] == "crm"
    )

    # The dashboard's journey view says the same.
    if browser_ready():
        await _dashboard_shows(relay, answered["rid"])

    # The filter changed to pass everything: the journey says what the filter says *now*.
    relay.doc["subscribers"][1]["filter"] = {"call.missed": False}
    relay.write()
    status, result = await relay.call("POST", "/reload", {})
    assert status == 200 and result["changed"] == ["subscriber missed"], result
    now = await journey(answered["rid"])
    assert "its current filter passes the record" in now["missing"]["missed"]
    assert (await journey(busy["rid"]))["missing"] == passed["missing"]  # delivered stays
    await relay.stop()


async def _dashboard_shows(relay: OpsRelay, rid: int) -> None:
    from playwright.async_api import async_playwright, expect

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            await page.goto(relay.base + "/")
            await page.fill("#token", TOKEN)
            await page.click("#sign-in")
            await expect(page.locator("[data-testid=subscriber]")).to_have_count(3, timeout=60_000)
            await page.fill("#search-input", f"alpha/{rid}")
            await page.press("#search-input", "Enter")
            box = page.locator("#journey")
            await expect(box).to_contain_text(f"missed: {FILTERED}", timeout=60_000)
            await expect(box).to_contain_text("bravo_only: subscriber is not subscribed")
            assert errors == []
        finally:
            await browser.close()
