"""``poll_interval: auto`` against the simulated WebFones API enforcing a per-key budget.

Several accounts on one key poll as often as the key's budget allows, divided among them: the
simulated upstream (a closed sliding window per key, answering 429 beyond it) must never refuse
one, and no window may hold more than the budget. A reload that changes how many accounts share
the key changes the interval of the pollers that keep running.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from relay.config.schema import Settings
from relay.core.cadence import auto_interval
from relay.sim.simulator import SimulatedWebFones, key_id
from tests.helpers import GENEROUS, KEY_A, KEY_B, make_settings, running

REQUESTS, PER = 10, 5.0  # 3 accounts on a key: each polls every 3 * 0.505 / 0.9 = 1.68 s
POLLS = 18  # about two windows' worth


class CountingWebFones(SimulatedWebFones):
    """The simulator, telling waiters whenever a request has been logged."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._logged = asyncio.Event()

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        try:
            return await super()._serve(request)
        finally:
            self._logged.set()

    async def wait_requests(self, n: int) -> None:
        async def until() -> None:
            while len(self.request_log) < n:
                self._logged.clear()
                await self._logged.wait()

        await asyncio.wait_for(until(), GENEROUS)


@pytest.fixture
async def limited() -> AsyncIterator[CountingWebFones]:
    server = CountingWebFones({KEY_A: "alpha", KEY_B: "bravo"}, seed=7, rate_limit=(REQUESTS, PER))
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def auto_settings(tmp_path, url: str, accounts: dict[str, str], **upstream: object) -> Settings:
    return make_settings(
        tmp_path,
        url,
        [],
        accounts=accounts,
        upstream={
            "poll_interval": "auto",
            "rate_limit": {"requests": REQUESTS, "per": f"{PER:g}s"},
            "start_from": "now",
            **upstream,
        },
    )


async def test_auto_spends_the_budget_without_a_429_or_a_full_window(limited, tmp_path) -> None:
    accounts = {"one": KEY_A, "two": KEY_A, "three": KEY_A}
    settings = auto_settings(tmp_path, limited.url, accounts)
    async with running(settings) as relay:
        await limited.wait_requests(POLLS)
        assert relay.supervisor is not None
        status = await relay.supervisor.status()
    expected = auto_interval(REQUESTS, PER, 3)
    for name in accounts:
        assert status.pollers[name].interval == pytest.approx(expected)
        assert status.pollers[name].interval_auto
        assert status.pollers[name].outcomes["rate_limited"] == 0
    log = [e for e in limited.request_log if e.key == key_id(KEY_A)]
    assert len(log) >= POLLS
    assert [e.status for e in log] == [200] * len(log), "never a 429 (nor any other refusal)"
    assert limited.max_window_count(PER, key=KEY_A) <= REQUESTS


async def test_a_reload_changes_the_interval_of_the_pollers_that_keep_running(
    limited, tmp_path
) -> None:
    three = {"one": KEY_A, "two": KEY_A, "three": KEY_A, "other": KEY_B}
    settings = auto_settings(tmp_path, limited.url, three)
    async with running(settings) as relay:
        sup = relay.supervisor
        assert sup is not None
        kept = {p.name: p for p in sup.pollers}
        before = (await sup.status()).pollers
        assert before["one"].interval == pytest.approx(auto_interval(REQUESTS, PER, 3))
        assert before["other"].interval == pytest.approx(auto_interval(REQUESTS, PER, 1))

        # One account fewer on KEY_A: the two left keep polling, now more often each.
        await sup._apply(auto_settings(tmp_path, limited.url, {**three, "three": KEY_B}))
        after = (await sup.status()).pollers
        assert {p.name: p for p in sup.pollers}["one"] is kept["one"], "not restarted"
        for name in ("one", "two"):
            assert after[name].interval == pytest.approx(auto_interval(REQUESTS, PER, 2))
        for name in ("three", "other"):
            assert after[name].interval == pytest.approx(auto_interval(REQUESTS, PER, 2))

        # An explicit interval again: exactly that, after each poll, for every account.
        await sup._apply(auto_settings(tmp_path, limited.url, three, poll_interval="2s"))
        fixed = (await sup.status()).pollers
        assert {(p.interval, p.interval_auto) for p in fixed.values()} == {(2.0, False)}
