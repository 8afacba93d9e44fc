"""The SQLite owner keeps its claims in memory (relay.store.sqlite.held): what that changes on
disk and for readers, and what it must not change (the store contract covers the rest)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from relay.core.errors import StoreError
from relay.core.models import Outcome
from relay.store.sqlite import SqliteStore
from relay.store.sqlite.held import Held
from tests.helpers import sqlite_rows
from tests.store.builders import LEASE, T0, batch, opened, result


def disk_states(path: Path) -> dict[str, int]:
    rows = sqlite_rows(path, "SELECT state, COUNT(*) FROM deliveries GROUP BY 1")
    return {state: n for state, n in rows}


async def test_a_claim_writes_nothing_and_a_new_owner_finds_it_due(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    async with opened(SqliteStore(str(path))) as store:
        await store.ingest(batch([1, 2, 3], ("a",)))
        claimed = await store.claim("a", 2, T0, LEASE)
        assert [d.rid for d in claimed] == [1, 2]
        assert disk_states(path) == {"pending": 3}
        # The owner itself does not hand them out again while the lease runs.
        assert [d.rid for d in await store.claim("a", 10, T0 + 1, LEASE)] == [3]
    # The owner is gone without a result (as after kill -9): the next one sends them again.
    async with opened(SqliteStore(str(path))) as store:
        again = await store.claim("a", 10, T0 + 2, LEASE)
        assert sorted(d.rid for d in again) == [1, 2, 3]
        assert {d.id for d in again} >= {d.id for d in claimed}


async def test_a_refused_result_keeps_its_claim(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    async with opened(SqliteStore(str(path))) as store:
        await store.ingest(batch([1, 2], ("a",)))
        [d] = await store.claim("a", 1, T0, LEASE)

        def refuse_attempts(conn: sqlite3.Connection) -> None:
            conn.execute(
                "CREATE TEMP TRIGGER refuse BEFORE INSERT ON attempts "
                "BEGIN SELECT RAISE(ABORT, 'refused for the test'); END"
            )

        await store._run("test", refuse_attempts)
        with pytest.raises(StoreError, match="refused for the test"):
            await store.finish([result(d.id, Outcome.DELIVERED)])
        # Its result waits to be written again: nothing may claim it meanwhile.
        assert [x.rid for x in await store.claim("a", 10, T0 + 1, LEASE)] == [2]
        await store._run("test", lambda conn: conn.execute("DROP TRIGGER temp.refuse"))
        await store.finish([result(d.id, Outcome.DELIVERED)])
        assert disk_states(path) == {"delivered": 1, "pending": 1}
        counts = (await store.stats()).subscribers["a"]
        assert (counts.pending, counts.inflight, counts.delivered) == (0, 1, 1)


async def test_readers_of_the_owner_see_held_deliveries_in_flight(tmp_path: Path) -> None:
    async with opened(SqliteStore(str(tmp_path / "state.db"))) as store:
        await store.ingest(batch([1, 2], ("a", "b")))
        await store.ingest(batch([3], ("a", "b"), at=T0 + 20))
        await store.ingest(batch([4], ("a",), at=T0 + 50))
        [d1, d2] = await store.claim("a", 2, T0, LEASE)
        counts = (await store.stats()).subscribers
        assert (counts["a"].pending, counts["a"].inflight) == (2, 2)
        assert (counts["b"].pending, counts["b"].inflight) == (3, 0)
        # The oldest pending one is the oldest not held (rid 3).
        assert counts["a"].oldest_pending_at == T0 + 20
        assert counts["b"].oldest_pending_at == T0
        journey = await store.journey("acct", d1.rid)
        assert {v.subscriber: v.state for v in journey.deliveries} == {
            "a": "inflight",
            "b": "pending",
        }
        await store.finish([result(d1.id, Outcome.RETRY, status=500, next_at=T0 + 90)])
        recent = await store.recent_attempts(10)
        assert [(a.delivery_id, a.state) for a in recent] == [(d1.id, "pending")]
        await store.release([d2.id])
        counts = (await store.stats()).subscribers
        assert (counts["a"].pending, counts["a"].inflight) == (4, 0)


async def test_next_due_and_due_times_look_past_held_rows(tmp_path: Path) -> None:
    async with opened(SqliteStore(str(tmp_path / "state.db"))) as store:
        await store.ingest(batch([1], ("a",)))
        await store.ingest(batch([2], ("a",), at=T0 + 40))
        [d] = await store.claim("a", 1, T0, LEASE)
        assert d.rid == 1
        # rid 2 is due at T0 + 40, after the lease of rid 1 runs out (T0 + 30).
        assert await store.next_due("a") == T0 + LEASE
        assert await store.due_times() == {"a": T0 + LEASE}
        await store.finish([result(d.id, Outcome.DELIVERED)])
        assert await store.next_due("a") == T0 + 40
        assert await store.due_times() == {"a": T0 + 40}


def test_held_forgets_run_out_leases_when_asked_what_is_live() -> None:
    held = Held()
    held.take("a", [1, 2], until=10.0)
    held.take("a", [3], until=20.0)
    assert held.live("a", 10.0) == [1, 2, 3]  # a lease is live through its last instant
    assert held.live("a", 15.0) == [3]
    assert held.state(1, "pending") == "pending" and held.state(3, "pending") == "inflight"
    assert held.state(3, "delivered") == "delivered"
    assert held.renew([1, 3], 30.0) == [3]
    assert held.soonest("a") == 30.0
    assert held.drop([3, 4]) == [4]
    assert held.ids("a") == [] and held.every() == []
