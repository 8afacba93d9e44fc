"""Start-up reads every account's cursor in one store query and hands each poller its own; a
poller started later (a reload adds an account) loads its own, as before.

Runs the real supervisor, pipeline and SQLite store against the simulated WebFones.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from relay.config.schema import Settings
from relay.core.models import AccountCursor
from relay.sim.simulator import SimulatedWebFones
from relay.store.sqlite.store import SqliteStore
from tests.helpers import GENEROUS, KEY_A, KEY_B, make_settings
from tests.pollers import supervised
from tests.store.builders import batch

KEY_C = "key-charlie-0123456789abcdef"
KEY_D = "key-delta-0123456789abcdef"
KEYS = {KEY_A: "alpha", KEY_B: "bravo", KEY_C: "charlie", KEY_D: "delta"}
CURSOR = "2024-05-01 10:00:00"  # older than anything the simulator holds: no poll moves it


class CountingStore(SqliteStore):
    """The real store, counting how cursors are read; ``loaded`` is set by a single read."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.calls: Counter[str] = Counter()
        self.loaded = asyncio.Event()

    async def load_cursor(self, account: str) -> AccountCursor:
        self.calls["load_cursor"] += 1
        cursor = await super().load_cursor(account)
        self.loaded.set()
        return cursor

    async def load_cursors(self, accounts: Sequence[str]) -> dict[str, AccountCursor]:
        self.calls["load_cursors"] += 1
        return await super().load_cursors(accounts)


def settings_for(tmp_path: Path, url: str, names: list[str]) -> Settings:
    keys = {name: key for key, name in KEYS.items()}
    return make_settings(tmp_path, url, [], accounts={n: keys[n] for n in names})


def epoch(call_ts: str, settings: Settings) -> float:
    tz = ZoneInfo(settings.upstream.timezone)
    return datetime.strptime(call_ts, "%Y-%m-%d %H:%M:%S").replace(tzinfo=tz).timestamp()


async def test_start_up_reads_every_cursor_in_one_query_and_each_poller_takes_up_its_own(
    tmp_path: Path,
) -> None:
    sim = SimulatedWebFones(KEYS)
    await sim.start()
    settings = settings_for(tmp_path, sim.url, ["alpha", "bravo", "charlie"])
    store = CountingStore(settings.state)
    await store.open()
    try:
        await store.ingest(batch([1], account="alpha", cursor=CURSOR))
        await store.ingest(batch([2], account="bravo", cursor=CURSOR))
        # charlie has no row yet: it starts as an account never polled.
        async with supervised(settings, store) as sup:
            await asyncio.wait_for(sup.polled_once.wait(), GENEROUS)
            assert store.calls == Counter({"load_cursors": 1}), "one query, no per-account load"
            status = await sup.status()
    finally:
        await store.close()
        await sim.stop()
    assert all(p.polls >= 1 for p in sup.pollers)
    # Each poller polled from the cursor it was handed (a poller that ignored it would have
    # none: nothing the simulator holds is old enough to set one).
    assert status.pollers["alpha"].newest_call_at == epoch(CURSOR, settings)
    assert status.pollers["bravo"].newest_call_at == epoch(CURSOR, settings)
    assert status.pollers["charlie"].newest_call_at is None


async def test_an_account_added_by_a_reload_loads_its_own_cursor(tmp_path: Path) -> None:
    sim = SimulatedWebFones(KEYS)
    await sim.start()
    settings = settings_for(tmp_path, sim.url, ["alpha"])
    store = CountingStore(settings.state)
    await store.open()
    try:
        await store.ingest(batch([1], account="delta", cursor=CURSOR))
        async with supervised(settings, store) as sup:
            await asyncio.wait_for(sup.polled_once.wait(), GENEROUS)
            assert store.calls == Counter({"load_cursors": 1})
            await sup._apply(settings_for(tmp_path, sim.url, ["alpha", "delta"]))
            await asyncio.wait_for(store.loaded.wait(), GENEROUS)
            assert store.calls == Counter({"load_cursors": 1, "load_cursor": 1})
    finally:
        await store.close()
        await sim.stop()
