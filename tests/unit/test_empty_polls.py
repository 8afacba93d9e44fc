"""An empty poll costs the store no write: no ingest transaction, and a cursor-less account
records its sweep only every SWEPT_WRITE_EVERY (an older one only makes a restart read more).

Runs the real AccountPoller and SQLite store against the simulated WebFones, with the
poller's wall clock moved by the test.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from relay.http1.client import Http1Client
from relay.ingest.budget import KeyBudget
from relay.ingest.poller import SWEPT_WRITE_EVERY, AccountPoller
from relay.ingest.upstream import WebFonesClient
from relay.sim.simulator import SimulatedWebFones
from relay.store.sqlite.store import SqliteStore
from tests.helpers import GENEROUS, KEY_A, Sub, ago, make_settings, new_secret

T0 = time.time()  # the simulator stamps records on the real clock; the poller's moves from here


class CountingStore(SqliteStore):
    """The real store, counting the writes a poll makes."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.writes: list[str] = []

    async def ingest(self, batch: Any) -> Any:
        self.writes.append("ingest")
        return await super().ingest(batch)

    async def mark_swept(self, account: str, at: float, anchor: str | None) -> None:
        self.writes.append("mark_swept")
        await super().mark_swept(account, at, anchor)


async def _poller(
    sim: SimulatedWebFones, tmp_path: Path, session: Http1Client, now: list[float]
) -> tuple[AccountPoller, CountingStore]:
    subs = [Sub("crm", "http://127.0.0.1:9/crm", new_secret())]
    conf = make_settings(tmp_path, sim.url, subs, upstream={"start_from": "now"})
    store = CountingStore(conf.state)
    await store.open()
    client = WebFonesClient(session, sim.url, timeout=GENEROUS, max_response_bytes=1 << 20)
    budget = KeyBudget(100_000, 10.0)
    account = conf.upstream.accounts[0]
    p = AccountPoller(account, conf, store, client, budget, lambda _: None, lambda: now[0])
    await p.load()
    return p, store


async def test_quiet_account_writes_its_sweep_once_a_minute(tmp_path: Path) -> None:
    sim = SimulatedWebFones({KEY_A: "alpha"})
    await sim.start()
    now = [T0]
    try:
        async with Http1Client() as session:
            p, store = await _poller(sim, tmp_path, session, now)
            try:
                await p.poll_once()  # the first poll seeds: its sweep is recorded
                assert store.writes == ["mark_swept"]
                for _ in range(3):
                    now[0] += 5.0
                    assert await p.poll_once() == 0
                assert store.writes == ["mark_swept"]  # empty polls: no write at all
                now[0] = T0 + SWEPT_WRITE_EVERY
                await p.poll_once()
                assert store.writes == ["mark_swept", "mark_swept"]
                assert (await store.load_cursor("alpha")).last_sweep == now[0]
            finally:
                await store.close()
    finally:
        await sim.stop()


async def test_a_record_after_quiet_polls_is_stored_and_delivered(tmp_path: Path) -> None:
    sim = SimulatedWebFones({KEY_A: "alpha"})
    await sim.start()
    now = [T0]
    try:
        async with Http1Client() as session:
            p, store = await _poller(sim, tmp_path, session, now)
            try:
                await p.poll_once()
                now[0] += 5.0
                await p.poll_once()
                made = sim.add_record(KEY_A, started_at=ago(5))
                now[0] += 5.0
                assert await p.poll_once() == 1
                assert "ingest" in store.writes
                cursor = await store.load_cursor("alpha")
                assert cursor.newest is not None
                assert made["rid"] in [r.rid for r in await store.recent_records(10)]
            finally:
                await store.close()
    finally:
        await sim.stop()
