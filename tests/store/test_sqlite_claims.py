"""SQLite claims run on a thread and a read connection of their own (relay.store.sqlite.claims):
they do not wait for the writer, they see only what it committed, and a result stored while a
claim looks is never handed out again."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import pytest

from relay.core.errors import StoreError
from relay.core.models import Outcome
from relay.store.sqlite import SqliteStore
from relay.store.sqlite import finish as finishing
from relay.store.sqlite.held import Held
from tests.store.builders import LEASE, T0, batch, opened, result

BOUND = 60.0  # seconds: generous; only a claim stuck behind the writer comes near it


async def test_a_claim_does_not_wait_for_the_writer_and_sees_only_commits(
    tmp_path: Path,
) -> None:
    async with opened(SqliteStore(str(tmp_path / "state.db"))) as store:
        await store.ingest(batch([1, 2, 3], ("a",)))
        entered, release = threading.Event(), threading.Event()

        def long_write(conn: sqlite3.Connection) -> None:
            # An ingest that takes as long as the test wants: uncommitted work, then a wait.
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute("UPDATE deliveries SET state = 'dead' WHERE subscriber = 'a'")
                entered.set()
                release.wait(BOUND)
            finally:
                conn.execute("ROLLBACK")

        writer = asyncio.ensure_future(store._run("test", long_write))
        try:
            assert await asyncio.to_thread(entered.wait, BOUND)
            # The writer is mid-transaction: a claim still answers, from the last commit.
            claimed = await asyncio.wait_for(store.claim("a", 10, T0, LEASE), BOUND)
            assert [d.rid for d in claimed] == [1, 2, 3]
            assert await asyncio.wait_for(store.next_due("a"), BOUND) == T0 + LEASE
        finally:
            release.set()
            await writer
        # The writer's turn again: results are stored behind it, in order.
        await store.finish([result(d.id, Outcome.DELIVERED) for d in claimed])
        assert await store.claim("a", 10, T0 + 1, LEASE) == []


class _StoreResultFirst(Held):
    """Runs ``before`` once, on the claim thread, just before a claim reads the held ids."""

    def __init__(self) -> None:
        super().__init__()
        self.before: list[object] = []

    def live(self, subscriber: str, now: float) -> list[int]:
        while self.before:
            step = self.before.pop()
            assert callable(step)
            step()
        return super().live(subscriber, now)


async def test_a_result_stored_while_a_claim_looks_is_not_claimed_again(tmp_path: Path) -> None:
    """The order that keeps results and claims apart: a result is committed before its claim
    ends, and a claim reads what is held before its snapshot begins. Here the result of a held
    delivery is committed and its claim ended at the worst moment, just before the next claim
    reads the held ids: read after the snapshot began, they would no longer name it while the
    snapshot still showed it pending, and it would go out twice."""
    store = SqliteStore(str(tmp_path / "state.db"))
    held = _StoreResultFirst()
    store._held = held
    async with opened(store):
        await store.ingest(batch([1, 2], ("a",)))
        [first] = await store.claim("a", 1, T0, LEASE)
        writer_conn = store._conn
        assert writer_conn is not None

        def store_the_result() -> None:
            # As the writer does it (its thread is idle meanwhile): commit, then end the claim.
            finishing.finish(writer_conn, [result(first.id, Outcome.DELIVERED)], held)

        held.before.append(store_the_result)
        again = await store.claim("a", 10, T0 + 1, LEASE)
        assert not held.before  # the result was stored during this claim
        assert [d.rid for d in again] == [2]


async def test_claims_and_results_interleaved_hand_out_each_delivery_once(
    tmp_path: Path,
) -> None:
    """Claims on their thread, results and ingests on the writer, all at once (bounded: 1,200
    deliveries, 20 a claim): no delivery is claimed twice, and every one is delivered."""
    async with opened(SqliteStore(str(tmp_path / "state.db"))) as store:
        claimed: list[int] = []
        results: asyncio.Queue[list[int] | None] = asyncio.Queue()
        stored, changed = [0], asyncio.Event()  # ingest batches committed so far

        async def ingest() -> None:
            for start in range(1, 1_201, 100):
                await store.ingest(batch(list(range(start, start + 100)), ("a",)))
                stored[0] += 1
                changed.set()

        async def finish() -> None:
            while (ids := await results.get()) is not None:
                await store.finish([result(i, Outcome.DELIVERED) for i in ids])

        async def claim() -> None:
            while len(claimed) < 1_200:
                mark = stored[0]
                got = await store.claim("a", 20, T0 + 1, LEASE)
                claimed.extend(d.id for d in got)
                results.put_nowait([d.id for d in got])
                if not got:
                    if mark == 12:
                        break  # everything stored and nothing left to claim: the check below
                    while stored[0] == mark:  # nothing due yet: wait for the next ingest
                        changed.clear()
                        await changed.wait()
            results.put_nowait(None)

        finisher = asyncio.ensure_future(finish())
        await asyncio.wait_for(asyncio.gather(ingest(), claim()), BOUND)
        await asyncio.wait_for(finisher, BOUND)
        assert len(claimed) == len(set(claimed)) == 1_200
        counts = (await store.stats()).subscribers["a"]
        assert (counts.delivered, counts.pending, counts.inflight) == (1_200, 0, 0)


async def test_the_claim_connection_cannot_write(tmp_path: Path) -> None:
    async with opened(SqliteStore(str(tmp_path / "state.db"))) as store:
        await store.ingest(batch([1], ("a",)))

        def write(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM deliveries")

        with pytest.raises(StoreError, match="readonly"):
            await store._claims.run("test", write)
        assert [d.rid for d in await store.claim("a", 10, T0, LEASE)] == [1]


async def test_a_closed_store_refuses_claims(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "state.db"))
    async with opened(store):
        await store.ingest(batch([1], ("a",)))
    with pytest.raises(StoreError, match="not open"):
        await store.claim("a", 1, T0, LEASE)
