"""The operator dashboard against `relay run`: sessions and CSRF over plain HTTP, then the
page itself in headless Chromium (sign in, both subscribers, replay a dead letter, delivered)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import aiohttp
import pytest

from relay.sim.receiver import Reply
from tests.helpers import KEY_A, ago, wait_until_async
from tests.opsrelay import TOKEN, OpsRelay, ops_relay, subscriber

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def need_chromium() -> None:
    """Skip without Chromium, except in CI, where its absence is a failure."""
    missing = not Path(CHROMIUM).exists() or shutil.which(CHROMIUM) is None
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        missing = True
    if missing:
        reason = f"headless browser test needs {CHROMIUM} (apt-get install chromium) and playwright"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)


async def dead_letter_relay(sim, receiver_factory, tmp_path) -> tuple[OpsRelay, object, object]:
    crm, crm_url = await receiver_factory()
    flaky, flaky_url = await receiver_factory()
    flaky.set_default(Reply.status(500))
    relay = await ops_relay(
        tmp_path, sim.url, [subscriber("crm", crm_url), subscriber("flaky", flaky_url)]
    ).start()
    sim.add_record(KEY_A, started_at=ago(30))
    await crm.wait_count(1, timeout=60)

    async def dead() -> bool:
        return len((await relay.call("GET", "/dead-letters"))[1]) == 1

    await wait_until_async(dead, timeout=60)
    return relay, crm, flaky


async def test_sign_in_sets_a_strict_http_only_cookie_and_state_changes_need_csrf(
    sim, receiver_factory, tmp_path
):
    relay, _, _ = await dead_letter_relay(sim, receiver_factory, tmp_path)
    jar = aiohttp.CookieJar(unsafe=True)  # cookies for an IP address host
    async with aiohttp.ClientSession(cookie_jar=jar) as http:
        async with http.get(relay.base + "/") as resp:
            assert resp.status == 200 and "text/html" in resp.headers["Content-Type"]
            assert "default-src 'self'" in resp.headers["Content-Security-Policy"]
            page = await resp.text()
        assert "/assets/app.js" in page and "http" not in page.replace("http-equiv", "")
        for asset in ("app.js", "app.css", "favicon.svg"):
            async with http.get(relay.base + "/assets/" + asset) as resp:
                assert resp.status == 200
        async with http.get(relay.base + "/assets/..%2Fadmin.py") as resp:
            assert resp.status == 404
        async with http.get(relay.base + "/status") as resp:
            assert resp.status == 401
        async with http.post(relay.base + "/session", json={"token": "wrong"}) as resp:
            assert resp.status == 401
        async with http.post(relay.base + "/session", json={"token": TOKEN}) as resp:
            assert resp.status == 200
            csrf = (await resp.json())["csrf"]
            cookie = resp.headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and TOKEN not in cookie
        async with http.get(relay.base + "/status") as resp:
            assert resp.status == 200  # the cookie signs in reads
        replay = relay.base + "/dead-letters/replay"
        async with http.post(replay, json={"subscriber": "flaky"}) as resp:
            assert resp.status == 403 and "CSRF" in (await resp.json())["error"]
        async with http.post(
            replay, json={"subscriber": "flaky"}, headers={"X-CSRF-Token": "x"}
        ) as r:
            assert r.status == 403
        async with http.post(
            replay, json={"subscriber": "flaky"}, headers={"X-CSRF-Token": csrf}
        ) as r:
            assert r.status == 200 and (await r.json()) == {"replayed": 1}
        async with http.delete(relay.base + "/session") as resp:
            assert resp.status == 200
        async with http.get(relay.base + "/status") as resp:
            assert resp.status == 401
    await relay.stop()


async def test_dashboard_in_headless_chromium(sim, receiver_factory, tmp_path):
    need_chromium()
    from playwright.async_api import async_playwright, expect

    relay, _, flaky = await dead_letter_relay(sim, receiver_factory, tmp_path)
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1360, "height": 1000})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            # (A console error for the wrong token's 401 is the browser's, and expected.)
            await page.goto(relay.base + "/")
            await page.fill("#token", "not the token")
            await page.click("#sign-in")
            await expect(page.locator("#signin-error")).to_contain_text("wrong admin token")
            await page.fill("#token", TOKEN)
            await page.click("#sign-in")
            subs = page.locator("[data-testid=subscriber]")
            await expect(subs).to_have_count(2, timeout=60_000)
            await expect(page.locator("[data-testid=subscriber][data-name=crm]")).to_be_visible()
            await expect(page.locator("[data-testid=subscriber][data-name=flaky]")).to_be_visible()
            await expect(page.locator("#ready")).to_have_text("Ready")
            row = page.locator("[data-testid=dead-row][data-subscriber=flaky]")
            await expect(row).to_have_count(1, timeout=60_000)

            flaky.set_default(Reply.status(200))
            await row.locator("button.replay").click()
            await expect(row).to_have_count(0, timeout=60_000)
            delivered = page.locator(
                "[data-testid=recent-row][data-subscriber=flaky][data-status='200']"
            )
            await expect(delivered).to_have_count(1, timeout=60_000)
            card = page.locator("[data-testid=subscriber][data-name=flaky] [data-testid=delivered]")
            await expect(card).to_have_text("1", timeout=60_000)
            # A call's journey from the activity list.
            await delivered.locator("button.link").click()
            await expect(page.locator("#journey")).to_contain_text("webhook-id")
            await page.click("#journey-close")
            # RELAY_UPDATE_SCREENSHOT=1 refreshes the one in docs/ (shown in the README).
            shot = ROOT / "docs" if os.environ.get("RELAY_UPDATE_SCREENSHOT") else tmp_path
            await page.screenshot(path=str(shot / "dashboard.png"), full_page=True)
            assert errors == []
        finally:
            await browser.close()
    await relay.stop()
