"""A re-read builds no body for rids the store already holds (relay.ingest.seen), and detection
is unchanged: a record written late inside the window, a record of the same second, a first
poll after a restart and a poll whose ingest failed all still go the store's way.

Runs the real AccountPoller and SQLite store against the simulated WebFones, with the poller's
wall clock moved by the test.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from relay.core.errors import StoreError
from relay.core.models import IngestBatch, IngestResult
from relay.ingest.seen import KnownRids
from relay.store.sqlite.store import SqliteStore
from tests.helpers import KEY_A, ago
from tests.pollers import account_poller, simulated

T0 = time.time()


class RecordingStore(SqliteStore):
    """The real store, keeping the rids each ingest was handed; ``fail`` refuses the next."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.ingested: list[list[int]] = []
        self.fail = False

    async def ingest(self, batch: IngestBatch) -> IngestResult:
        if self.fail:
            self.fail = False
            raise StoreError("refused by the test")
        self.ingested.append([r.rid for r in batch.records])
        return await super().ingest(batch)


def _rids(records: list[dict[str, Any]]) -> list[int]:
    return [int(r["rid"]) for r in records]


async def test_rereads_build_nothing_and_late_records_are_still_found(tmp_path: Path) -> None:
    now = [T0]
    async with (
        simulated() as (sim, session),
        account_poller(RecordingStore, sim, session, tmp_path, now, "2000-01-01 00:00:00") as (
            p,
            store,
        ),
    ):
        first = [sim.add_record(KEY_A, started_at=ago(120)) for _ in range(5)]
        assert await p.poll_once() == 5
        assert store.ingested == [_rids(first)]
        # The same window again: every rid is known, so no body and no transaction.
        now[0] += 5.0
        assert await p.poll_once() == 0
        assert store.ingested == [_rids(first)]
        # Written late, stamped before the cursor (a long call), and one stamped in the
        # same second as the newest record: both are new rids, both are stored.
        late = sim.add_record(KEY_A, started_at=ago(300))
        same = sim.add_record(KEY_A, call_timestamp=first[-1]["call_timestamp"])
        now[0] += 5.0
        assert await p.poll_once() == 2
        assert sorted(store.ingested[-1]) == sorted(_rids([late, same]))


async def test_a_failed_ingest_or_a_restart_goes_through_the_store(tmp_path: Path) -> None:
    now = [T0]
    start = "2000-01-01 00:00:00"
    async with simulated() as (sim, session):
        async with account_poller(RecordingStore, sim, session, tmp_path, now, start) as (p, store):
            first = [sim.add_record(KEY_A, started_at=ago(60)) for _ in range(3)]
            assert await p.poll_once() == 3
            more = sim.add_record(KEY_A, started_at=ago(30))
            store.fail = True
            with pytest.raises(StoreError):
                await p.poll_once()
            # Nothing of the failed poll is taken as stored: the record is ingested next
            # time, once; what the poll before knew stays known.
            assert await p.poll_once() == 1
            assert store.ingested[-1] == _rids([more])
        # A new poller (a restart) knows nothing: the store de-duplicates its first poll.
        async with account_poller(RecordingStore, sim, session, tmp_path, now, start) as (
            p2,
            store2,
        ):
            assert await p2.poll_once() == 0
            assert sorted(store2.ingested[0]) == sorted(_rids([*first, more]))
            assert await p2.poll_once() == 0
            assert store2.ingested == [store2.ingested[0]]


def test_known_rids_are_those_of_the_last_good_poll() -> None:
    known = KnownRids()
    known.begin()
    known.stored([1, 2, 3])
    assert 1 not in known  # not until the poll is done
    known.done()
    assert 1 in known and 3 in known and len(known) == 3
    known.begin()
    known.stored([3, 4])
    known.done()
    assert 1 not in known and 3 in known and 4 in known  # rids that left the window go
    known.begin()
    known.stored([9])
    known.begin()  # the poll failed: the next one starts over
    known.done()
    assert 9 not in known and 3 not in known
