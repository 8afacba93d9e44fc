"""An empty poll costs the store no write: no ingest transaction, and a cursor-less account
records its sweep only every SWEPT_WRITE_EVERY (an older one only makes a restart read more).

Runs the real AccountPoller and SQLite store against the simulated WebFones, with the
poller's wall clock moved by the test.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from relay.ingest.poller import SWEPT_WRITE_EVERY, _epoch
from relay.store.sqlite.store import SqliteStore
from tests.helpers import KEY_A, ago
from tests.pollers import account_poller, simulated

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


async def test_quiet_account_writes_its_sweep_once_a_minute(tmp_path: Path) -> None:
    now = [T0]
    async with (
        simulated() as (sim, session),
        account_poller(CountingStore, sim, session, tmp_path, now, "now") as (p, store),
    ):
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


async def test_a_record_after_quiet_polls_is_stored_and_delivered(tmp_path: Path) -> None:
    now = [T0]
    async with (
        simulated() as (sim, session),
        account_poller(CountingStore, sim, session, tmp_path, now, "now") as (p, store),
    ):
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


async def test_the_newest_call_time_follows_the_cursor_and_not_each_poll(tmp_path: Path) -> None:
    """stats.newest_call_at (the lag on the status page) is read from the cursor once per
    cursor it moved to, and is what the cursor says after every poll."""
    now = [T0]
    async with (
        simulated() as (sim, session),
        account_poller(CountingStore, sim, session, tmp_path, now, "now") as (p, store),
    ):
        await p.poll_once()
        assert p.stats.newest_call_at is None  # no cursor yet
        seen: list[float | None] = []
        for age in (30, None, 10):  # a record, an empty poll, a newer record
            if age is not None:
                sim.add_record(KEY_A, started_at=ago(age))
            now[0] += 5.0
            await p.poll_once()
            cursor = (await store.load_cursor("alpha")).newest
            assert cursor is not None
            assert p.stats.newest_call_at == _epoch(cursor, p._tz)
            seen.append(p.stats.newest_call_at)
        assert seen[0] == seen[1] and seen[2] is not None and seen[0] is not None
        assert seen[2] > seen[0]
