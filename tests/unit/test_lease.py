"""Account leases as a poller holds them (relay.ingest.lease), on the SQLite store's in-memory
leases (same contract as PostgreSQL's), with a clock the test moves."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from relay.ingest.lease import AccountLease, LeaseShare
from relay.store.sqlite.store import SqliteStore


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    s = SqliteStore(str(tmp_path / "state.db"))
    await s.open()
    try:
        yield s
    finally:
        await s.close()


async def test_one_holder_at_a_time_and_takeover_after_the_ttl(store: SqliteStore) -> None:
    clock = Clock()
    a = AccountLease(store, "alpha", "A", 15.0, clock)
    b = AccountLease(store, "alpha", "B", 15.0, clock)
    assert await a.hold() == (True, True)  # fresh: take up the durable position
    assert await a.hold() == (True, False)  # renewed
    assert await b.hold() == (False, False)
    clock.now += 14.9
    assert await b.hold() == (False, False)  # A renewed at +0, its lease still runs
    assert a.held() and a.remaining() == pytest.approx(0.1)
    clock.now += 0.2  # A stalled past its ttl: B takes over
    assert not a.held()
    assert await b.hold() == (True, True)
    assert await a.hold() == (False, False)
    assert (a.taken, b.taken) == (1, 1)
    await b.release()
    assert await a.hold() == (True, True)  # handed over at once, not after a ttl


async def test_a_lease_ran_out_on_our_clock_is_taken_fresh(store: SqliteStore) -> None:
    clock = Clock()
    a = AccountLease(store, "alpha", "A", 3.0, clock)
    assert await a.hold() == (True, True)
    clock.now += 3.0
    # Nobody took it meanwhile, but we cannot know: the caller reloads the cursor.
    assert await a.hold() == (True, True)
    a.lapse()
    assert await a.hold() == (True, True)


async def test_an_instance_takes_only_its_share_and_sheds_the_rest(store: SqliteStore) -> None:
    clock = Clock()
    share = LeaseShare(accounts=3)
    mine = [AccountLease(store, n, "A", 15.0, clock, share) for n in ("a1", "a2", "a3")]
    for lease in mine:
        assert (await lease.hold())[0]
    assert share.held == 3 and not any(lease.should_shed() for lease in mine)
    share.live = 3  # two more instances arrived: a share of one each
    assert share.quota() == 1 and share.over()
    assert mine[0].should_shed()
    await mine[0].release()
    await mine[1].release()
    assert share.held == 1 and not mine[2].should_shed()
    # At its share, it does not even ask about the others.
    other = AccountLease(store, "a1", "B", 15.0, clock)
    assert await other.hold() == (True, True)
    assert await mine[0].hold() == (False, False)
    share.live = 1  # the others died: the share grows again
    await other.release()
    assert await mine[0].hold() == (True, True)
    assert share.held == 2
