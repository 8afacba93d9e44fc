"""The store behaviour suite: every backend must pass the parametrized tests; the SQLite-only
ones (file locking, crash safety, disk full, URL parsing) follow at the end.

All times are explicit numbers passed to the store, so nothing here sleeps or reads a clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import multiprocessing
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from relay.core.errors import StoreError, StoreFull, StoreLocked
from relay.core.models import (
    AccountCursor,
    Attempt,
    CallRecord,
    Finished,
    IngestBatch,
    Outcome,
    Quarantined,
)
from relay.runtime.stores import open_store
from relay.store import Store
from relay.store.sqlite import sql as sqlite_backend
from relay.store.sqlite.store import SqliteStore, integrity_check

NOW = 1_764_400_000.0
REPO = Path(__file__).resolve().parents[2]
T0 = 1_000.0  # when the test batches are received
LEASE = 30.0

# -- fixtures -------------------------------------------------------------------------------------

# Add "postgres" here (and a branch in store_factory) when that backend exists.
BACKENDS = ["sqlite"]


@pytest.fixture(params=BACKENDS)
def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], Store]:
    """Makes unopened stores that all point at the same (fresh) state."""
    if request.param == "sqlite":
        path = str(tmp_path / "state.db")
        return lambda: SqliteStore(path)
    raise AssertionError(f"unknown backend {request.param}")


@pytest.fixture
async def store(store_factory: Callable[[], Store]) -> AsyncIterator[Store]:
    s = store_factory()
    await s.open()
    try:
        yield s
    finally:
        await s.close()


@contextlib.asynccontextmanager
async def opened(s: Store) -> AsyncIterator[Store]:
    await s.open()
    try:
        yield s
    finally:
        await s.close()


# -- builders -------------------------------------------------------------------------------------


def ts(n: int) -> str:
    """A call_timestamp n seconds after a fixed midnight."""
    return f"2024-05-01 {n // 3600:02d}:{n // 60 % 60:02d}:{n % 60:02d}"


def rec(rid: int, call_ts: str | None = None, body: bytes | None = None) -> CallRecord:
    return CallRecord(rid, call_ts or ts(rid), body if body is not None else b'{"rid":%d}' % rid)


def batch(
    rids: list[int],
    subscribers: tuple[str, ...] = ("a", "b"),
    *,
    account: str = "acct",
    at: float = T0,
    cursor: str | None = None,
    **kwargs: Any,
) -> IngestBatch:
    records = [rec(r) for r in rids]
    return IngestBatch(account, records, list(subscribers), at, cursor, **kwargs)


def result(
    delivery_id: int,
    outcome: Outcome,
    *,
    at: float = 2_000.0,
    status: int | None = 200,
    error: str | None = None,
    next_at: float | None = None,
) -> Finished:
    attempt = Attempt(at=at, status=status, error=error, latency_ms=12.5, response="ok")
    return Finished(delivery_id, attempt, outcome, next_at)


# -- ingest ---------------------------------------------------------------------------------------


async def test_ingest_skips_known_and_repeated_rids(store: Store) -> None:
    first = await store.ingest(batch([1, 2, 2, 3]))
    assert first.new_rids == [1, 2, 3]
    assert first.duplicates == 1

    second = await store.ingest(batch([3, 4, 1]))
    assert second.new_rids == [4]
    assert second.duplicates == 2

    # De-dup is per account.
    other = await store.ingest(batch([1], account="other"))
    assert other.new_rids == [1]


async def test_first_occurrence_in_a_batch_wins(store: Store) -> None:
    records = [rec(7, body=b"first"), rec(7, body=b"second")]
    await store.ingest(IngestBatch("acct", records, ["a"], T0, None))
    [delivery] = await store.claim("a", 10, T0, LEASE)
    assert delivery.body == b"first"


async def test_seed_only_marks_seen_but_enqueues_nothing(store: Store) -> None:
    seeded = await store.ingest(batch([1, 2], seed_only=True, cursor=ts(2)))
    assert seeded.new_rids == [1, 2]
    assert await store.claim("a", 10, T0, LEASE) == []
    assert await store.next_due("a") is None
    assert (await store.load_cursor("acct")).newest == ts(2)

    again = await store.ingest(batch([1, 2, 3]))
    assert again.new_rids == [3]
    assert [d.rid for d in await store.claim("a", 10, T0, LEASE)] == [3]


async def test_cursor_only_moves_forward(store: Store) -> None:
    assert await store.load_cursor("acct") == AccountCursor(None, None)
    await store.ingest(batch([1], cursor="2024-05-01 10:00:00"))
    await store.ingest(batch([2], cursor="2024-05-01 09:00:00"))
    assert (await store.load_cursor("acct")).newest == "2024-05-01 10:00:00"
    await store.ingest(batch([3], cursor=None))
    assert (await store.load_cursor("acct")).newest == "2024-05-01 10:00:00"
    await store.ingest(batch([], cursor="2024-05-01 11:00:00"))
    assert (await store.load_cursor("acct")).newest == "2024-05-01 11:00:00"

    await store.mark_swept("acct", 5_000.0, "2024-05-01 11:00:00")
    assert await store.load_cursor("acct") == AccountCursor(
        "2024-05-01 11:00:00", 5_000.0, "2024-05-01 11:00:00"
    )
    # The cursor moves on between sweeps; the anchor stays where the last sweep left it.
    await store.ingest(batch([4], cursor="2024-05-01 12:00:00"))
    assert await store.load_cursor("acct") == AccountCursor(
        "2024-05-01 12:00:00", 5_000.0, "2024-05-01 11:00:00"
    )
    await store.mark_swept("fresh", 6_000.0, None)
    assert await store.load_cursor("fresh") == AccountCursor(None, 6_000.0, None)


async def test_one_delivery_per_subscriber_with_identical_bytes(store: Store) -> None:
    body = bytes(range(256)) + b"\x00\xff not utf-8 \xc3\x28"
    records = [CallRecord(1, ts(1), body), rec(2)]
    await store.ingest(IngestBatch("acct", records, ["a", "b", "a"], T0, None))

    for name in ("a", "b"):
        claimed = await store.claim(name, 10, T0, LEASE)
        assert [(d.subscriber, d.account, d.rid, d.attempts) for d in claimed] == [
            (name, "acct", 1, 0),
            (name, "acct", 2, 0),
        ]
        assert claimed[0].body == body
    stats = await store.stats()
    assert {name: s.inflight for name, s in stats.subscribers.items()} == {"a": 2, "b": 2}


async def test_quarantined_records_are_kept(store: Store) -> None:
    bad = [Quarantined(b'{"rid": null}', "no rid"), Quarantined(b"\xff", "not json")]
    await store.ingest(IngestBatch("acct", [], ["a"], T0, None, quarantined=bad))
    assert (await store.stats()).quarantined == 2


async def test_ingest_100k_records(store: Store) -> None:
    subscribers = ("a", "b", "c")
    total = 0
    for start in range(0, 100_000, 10_000):
        outcome = await store.ingest(batch(list(range(start, start + 10_000)), subscribers))
        total += len(outcome.new_rids)
    assert total == 100_000
    again = await store.ingest(batch(list(range(99_000, 101_000)), subscribers))
    assert (len(again.new_rids), again.duplicates) == (1_000, 1_000)

    stats = await store.stats()
    assert stats.seen == 101_000
    assert {s.pending for s in stats.subscribers.values()} == {101_000}
    claimed = await store.claim("b", 500, T0, LEASE)
    assert [d.rid for d in claimed] == list(range(500))


# -- claim ----------------------------------------------------------------------------------------


async def test_claim_respects_limit_and_queue_order(store: Store) -> None:
    await store.ingest(batch([5, 3, 9, 1, 7]))
    await store.ingest(batch([2], at=T0 + 1))
    first = await store.claim("a", 2, T0 + 1, LEASE)
    second = await store.claim("a", 10, T0 + 1, LEASE)
    assert [d.rid for d in first] == [5, 3]  # arrival order, not rid order
    assert [d.rid for d in second] == [9, 1, 7, 2]
    assert await store.claim("a", 10, T0 + 1, LEASE) == []
    assert await store.claim("a", 0, T0 + 1, LEASE) == []


async def test_claim_waits_until_due(store: Store) -> None:
    await store.ingest(batch([1], at=T0))
    assert await store.claim("a", 10, T0 - 1, LEASE) == []
    assert await store.next_due("a") == T0

    [d] = await store.claim("a", 10, T0, LEASE)
    await store.finish([result(d.id, Outcome.RETRY, at=T0 + 1, status=500, next_at=T0 + 60)])
    assert await store.next_due("a") == T0 + 60
    assert await store.claim("a", 10, T0 + 59, LEASE) == []
    [again] = await store.claim("a", 10, T0 + 60, LEASE)
    assert (again.id, again.attempts) == (d.id, 1)


async def test_live_lease_blocks_and_expired_lease_is_reclaimable(store: Store) -> None:
    await store.ingest(batch([1, 2]))
    claimed = await store.claim("a", 1, T0, LEASE)
    assert await store.next_due("a") == T0  # rid 2 is still pending
    [other] = await store.claim("a", 10, T0 + 1, LEASE)
    assert other.rid == 2
    assert await store.next_due("a") == T0 + LEASE  # the earliest lease to run out

    assert await store.claim("a", 10, T0 + LEASE, LEASE) == []  # still leased at expiry
    reclaimed = await store.claim("a", 10, T0 + LEASE + 0.5, LEASE)
    assert [(d.id, d.attempts) for d in reclaimed] == [(claimed[0].id, 0)]
    # The fresh lease holds again.
    assert await store.claim("a", 10, T0 + LEASE + 1, LEASE) == []


async def test_disabled_subscriber_is_not_claimed_for(store: Store) -> None:
    await store.ingest(batch([1]))
    await store.set_subscriber_disabled("a", "disabled by operator", NOW)
    assert await store.disabled_subscribers() == {"a": "disabled by operator"}
    assert await store.claim("a", 10, T0, LEASE) == []
    assert await store.next_due("a") is None
    assert len(await store.claim("b", 10, T0, LEASE)) == 1

    await store.set_subscriber_disabled("a", None, NOW)
    assert await store.disabled_subscribers() == {}
    assert [d.rid for d in await store.claim("a", 10, T0, LEASE)] == [1]


async def test_next_due_is_none_for_an_empty_queue(store: Store) -> None:
    assert await store.next_due("nobody") is None
    await store.ingest(batch([1], ("a",)))
    [d] = await store.claim("a", 10, T0, LEASE)
    await store.finish([result(d.id, Outcome.DELIVERED)])
    assert await store.next_due("a") is None


# -- finish and release ----------------------------------------------------------------------------


async def test_finish_applies_each_outcome(store: Store) -> None:
    await store.ingest(batch([1, 2, 3, 4], ("a",)))
    d1, d2, d3, d4 = await store.claim("a", 10, T0, LEASE)
    await store.finish(
        [
            result(d1.id, Outcome.DELIVERED),
            result(d2.id, Outcome.RETRY, status=503, error="HTTP 503", next_at=3_000.0),
            result(d3.id, Outcome.DEAD, at=2_500.0, status=400, error="HTTP 400"),
        ]
    )
    stats = (await store.stats()).subscribers["a"]
    assert (stats.delivered, stats.pending, stats.inflight, stats.dead) == (1, 1, 1, 1)
    assert stats.oldest_pending_at == 3_000.0

    [dead] = await store.dead_letters("a", 10)
    assert (dead.id, dead.rid, dead.account, dead.subscriber) == (d3.id, 3, "acct", "a")
    assert (dead.attempts, dead.last_error, dead.dead_at) == (1, "HTTP 400", 2_500.0)

    await store.finish([result(d4.id, Outcome.GONE, at=2_600.0, status=410, error="HTTP 410")])
    assert await store.disabled_subscribers() == {"a": "410 Gone"}
    assert await store.claim("a", 10, 9_999.0, LEASE) == []
    # The delivery is kept, due as soon as the subscriber is re-enabled.
    await store.set_subscriber_disabled("a", None, NOW)
    claimed = await store.claim("a", 10, 2_600.0, 3_600.0)
    assert [(d.id, d.attempts) for d in claimed] == [(d4.id, 1)]
    assert [(d.id, d.attempts) for d in await store.claim("a", 10, 3_000.0, LEASE)] == [(d2.id, 1)]


async def test_delivered_is_final(store: Store) -> None:
    await store.ingest(batch([1], ("a",)))
    [d] = await store.claim("a", 10, T0, LEASE)
    await store.finish([result(d.id, Outcome.DELIVERED)])
    await store.finish([result(d.id, Outcome.RETRY, status=500, next_at=T0)])  # a late echo
    assert await store.claim("a", 10, 9_999.0, LEASE) == []
    assert (await store.stats()).subscribers["a"].delivered == 1


async def test_finish_handles_large_batches(store: Store) -> None:
    await store.ingest(batch(list(range(3_000)), ("a",)))
    claimed = await store.claim("a", 3_000, T0, LEASE)
    assert len(claimed) == 3_000
    await store.finish([result(d.id, Outcome.DELIVERED) for d in claimed])
    assert (await store.stats()).subscribers["a"].delivered == 3_000
    await store.finish([])


async def test_release_makes_claims_due_again_untouched(store: Store) -> None:
    await store.ingest(batch([1, 2, 3], ("a",)))
    claimed = await store.claim("a", 10, T0 + 5, LEASE)
    await store.release([d.id for d in claimed[:2]])
    again = await store.claim("a", 10, T0 + 5, LEASE)
    assert [(d.id, d.attempts) for d in again] == [(d.id, 0) for d in claimed[:2]]
    await store.release([])


# -- durability -----------------------------------------------------------------------------------


async def test_reopen_keeps_everything_and_recovers_inflight(
    store_factory: Callable[[], Store],
) -> None:
    async with opened(store_factory()) as first:
        await first.ingest(batch([1, 2, 3], ("a", "b"), cursor=ts(3)))
        await first.mark_swept("acct", 4_000.0, ts(2))
        await first.set_account_status("acct", "ok", None, NOW)
        inflight = await first.claim("a", 2, T0, 3_600.0)
        [dead] = await first.claim("b", 1, T0, LEASE)
        await first.finish([result(dead.id, Outcome.DEAD, status=400, error="HTTP 400")])
        await first.set_subscriber_disabled("c", "410 Gone", NOW)

    async with opened(store_factory()) as second:
        assert await second.load_cursor("acct") == AccountCursor(ts(3), 4_000.0, ts(2))
        # The lease was live for another hour, but its holder is gone: due again now.
        claimed = await second.claim("a", 10, T0, LEASE)
        assert [d.id for d in claimed[:2]] == [d.id for d in inflight]
        assert [d.rid for d in claimed] == [1, 2, 3]
        assert [d.id for d in await second.dead_letters(None, 10)] == [dead.id]
        assert await second.disabled_subscribers() == {"c": "410 Gone"}
        assert (await second.ingest(batch([1, 2, 3]))).duplicates == 3
        assert (await second.stats()).accounts["acct"].status == "ok"


async def test_close_is_idempotent_and_closed_store_refuses(
    store_factory: Callable[[], Store],
) -> None:
    s = store_factory()
    await s.open()
    await s.close()
    await s.close()
    with pytest.raises(StoreError):
        await s.claim("a", 1, T0, LEASE)


# -- maintenance ----------------------------------------------------------------------------------


async def test_prune_seen_needs_both_old_timestamp_and_old_sighting(store: Store) -> None:
    await store.ingest(batch([1, 2], at=100.0))  # call_ts ts(1), ts(2)
    await store.ingest(batch([3], at=200.0))
    await store.ingest(batch([50], at=100.0))
    # Older than ts(10) by timestamp: 1, 2, 3. First seen before 150: 1, 2 (and 50, too new).
    assert await store.prune_seen("acct", ts(10), 150.0) == 2
    assert await store.prune_seen("other", ts(10), 9_999.0) == 0
    again = await store.ingest(batch([1, 2, 3, 50]))
    assert again.new_rids == [1, 2]


async def test_prune_delivered_keeps_anything_unfinished(store: Store) -> None:
    await store.ingest(batch([1, 2, 3, 4], ("a", "b"), at=100.0))
    await store.ingest(batch([5], ("a", "b"), at=900.0))
    claimed = await store.claim("a", 10, T0, LEASE) + await store.claim("b", 10, T0, LEASE)
    by = {(d.subscriber, d.rid): d.id for d in claimed}

    def ok(sub: str, rid: int) -> Finished:
        return result(by[sub, rid], Outcome.DELIVERED)

    await store.finish(
        [
            ok("a", 1), ok("b", 1),  # fully delivered: pruned
            ok("a", 2),  # b still in flight: kept
            ok("a", 3), result(by["b", 3], Outcome.DEAD, status=400),  # dead: kept
            ok("a", 4), result(by["b", 4], Outcome.RETRY, next_at=5_000.0),  # pending: kept
            ok("a", 5), ok("b", 5),  # received after the cutoff: kept
        ]
    )  # fmt: skip
    assert await store.prune_delivered(500.0) == 1
    assert await store.prune_delivered(500.0) == 0
    stats = (await store.stats()).subscribers
    assert (stats["a"].delivered, stats["b"].delivered) == (4, 1)
    assert [d.rid for d in await store.dead_letters("b", 10)] == [3]
    # Pruned records stay de-duplicated: that is the seen table's job.
    assert (await store.ingest(batch([1]))).duplicates == 1


async def test_replay_by_subscriber_by_id_and_all(store: Store) -> None:
    await store.ingest(batch([1, 2, 3], ("a", "b")))
    claimed = await store.claim("a", 10, T0, LEASE) + await store.claim("b", 10, T0, LEASE)
    await store.finish(
        [result(d.id, Outcome.DEAD, at=2_000.0 + d.rid, status=400) for d in claimed]
    )
    letters = await store.dead_letters(None, 10)
    assert len(letters) == 6
    assert [d.dead_at for d in letters] == sorted((d.dead_at for d in letters), reverse=True)
    assert len(await store.dead_letters(None, 2)) == 2

    b_ids = [d.id for d in await store.dead_letters("b", 10)]
    assert await store.replay(None, b_ids[:1], 3_000.0) == 1
    assert await store.replay("a", None, 3_000.0) == 3
    assert await store.replay("a", None, 3_000.0) == 0
    assert await store.replay("a", b_ids, 3_000.0) == 0  # ids of another subscriber
    assert await store.replay(None, [], 3_000.0) == 0

    assert await store.claim("a", 10, 2_999.0, LEASE) == []
    replayed = await store.claim("a", 10, 3_000.0, LEASE)
    assert sorted(d.rid for d in replayed) == [1, 2, 3]
    assert {d.attempts for d in replayed} == {0}
    assert await store.replay(None, None, 3_000.0) == 2
    assert await store.dead_letters(None, 10) == []


async def test_stats_reports_accounts_subscribers_and_counts(store: Store) -> None:
    bad = [Quarantined(b"?", "no rid")]
    await store.ingest(IngestBatch("acct", [rec(1), rec(2)], ["a"], T0, ts(2), quarantined=bad))
    await store.mark_swept("acct", 1_500.0, ts(2))
    await store.set_account_status("acct", "backing_off", "HTTP 503", NOW)
    await store.set_account_status("idle", "auth_failed", "HTTP 401", NOW)
    await store.set_subscriber_disabled("z", "410 Gone", NOW)
    await store.claim("a", 1, T0, LEASE)

    stats = await store.stats()
    assert {k: dataclasses.asdict(v) for k, v in stats.accounts.items()} == {
        "acct": {"cursor": ts(2), "last_sweep": 1_500.0, "status": "backing_off",
                 "error": "HTTP 503"},
        "idle": {"cursor": None, "last_sweep": None, "status": "auth_failed", "error": "HTTP 401"},
    }  # fmt: skip
    assert {k: dataclasses.asdict(v) for k, v in stats.subscribers.items()} == {
        "a": {"pending": 1, "inflight": 1, "delivered": 0, "dead": 0, "disabled": None,
              "oldest_pending_at": T0},
        "z": {"pending": 0, "inflight": 0, "delivered": 0, "dead": 0, "disabled": "410 Gone",
              "oldest_pending_at": None},
    }  # fmt: skip
    assert (stats.quarantined, stats.seen) == (1, 2)


# == SQLite only ===================================================================================


def sqlite_rows(path: Path, sql: str) -> list[tuple[Any, ...]]:
    """Read the state file through a second connection (fine alongside the owner in WAL)."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return conn.execute(sql).fetchall()


async def test_sqlite_records_every_attempt(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    async with opened(SqliteStore(str(path))) as s:
        await s.ingest(batch([1], ("a",)))
        [d] = await s.claim("a", 1, T0, LEASE)
        await s.finish([result(d.id, Outcome.RETRY, at=1_100.0, status=None, error="timeout")])
        [d] = await s.claim("a", 1, 1_100.0, LEASE)
        await s.finish([result(d.id, Outcome.DELIVERED, at=1_200.0)])
        rows = sqlite_rows(path, "SELECT delivery_id, at, status, error FROM attempts ORDER BY at")
        assert rows == [(d.id, 1_100.0, None, "timeout"), (d.id, 1_200.0, 200, None)]
        [state] = sqlite_rows(path, "SELECT state, attempts, last_status FROM deliveries")
        assert state == ("delivered", 2, 200)
        # The body is stored once, however many subscribers there are.
        await s.ingest(batch([2], ("a", "b", "c")))
        assert sqlite_rows(path, "SELECT COUNT(*) FROM records") == [(2,)]


async def test_sqlite_runs_everything_on_one_worker_thread(tmp_path: Path) -> None:
    async with opened(SqliteStore(str(tmp_path / "state.db"))) as s:
        first = await s._run("probe", lambda _conn: threading.get_ident())
        second = await s._run("probe", lambda _conn: threading.get_ident())
    assert first == second != threading.get_ident()


async def test_sqlite_prune_delivered_in_chunks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_backend, "PRUNE_CHUNK", 3)
    path = tmp_path / "state.db"
    async with opened(SqliteStore(str(path))) as s:
        await s.ingest(batch(list(range(10)), ("a",), at=100.0))
        claimed = await s.claim("a", 100, T0, LEASE)
        done = [result(d.id, Outcome.DELIVERED) for d in claimed if d.rid != 4]
        await s.finish(done)
        assert await s.prune_delivered(500.0) == 9
        assert sqlite_rows(path, "SELECT rid FROM records") == [(4,)]
        assert sqlite_rows(path, "SELECT COUNT(*) FROM attempts") == [(0,)]
        assert sqlite_rows(path, "SELECT COUNT(*) FROM deliveries") == [(1,)]


async def test_sqlite_schema_is_versioned(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    async with opened(SqliteStore(str(path))):
        pass
    assert sqlite_rows(path, "PRAGMA user_version") == [(len(sqlite_backend.MIGRATIONS),)]
    assert sqlite_rows(path, "PRAGMA journal_mode") == [("wal",)]
    async with opened(SqliteStore(str(path))):  # reopening migrates nothing
        pass

    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("PRAGMA user_version = 99")
        conn.commit()
    with pytest.raises(StoreError, match="newer than this relay"):
        await SqliteStore(str(path)).open()

    foreign = tmp_path / "other.db"
    with contextlib.closing(sqlite3.connect(foreign)) as conn:
        conn.execute("CREATE TABLE customers (id INTEGER)")
    with pytest.raises(StoreError, match="some other program"):
        await SqliteStore(str(foreign)).open()


async def test_a_version_1_state_file_is_migrated_and_keeps_its_cursor(tmp_path: Path) -> None:
    # A file written by the first release: schema version 1, no sweep anchor column.
    path = tmp_path / "state.db"
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.executescript(sqlite_backend.SCHEMA_V1)
        conn.execute(
            "INSERT INTO cursors (account, newest, last_sweep) VALUES (?, ?, ?)",
            ("acct", ts(3), 4_000.0),
        )
        conn.execute("PRAGMA user_version = 1")
        conn.commit()
    async with opened(SqliteStore(str(path))) as store:
        assert await store.load_cursor("acct") == AccountCursor(ts(3), 4_000.0, None)
        await store.mark_swept("acct", 5_000.0, ts(3))
        assert await store.load_cursor("acct") == AccountCursor(ts(3), 5_000.0, ts(3))
    assert sqlite_rows(path, "PRAGMA user_version") == [(len(sqlite_backend.MIGRATIONS),)]


async def test_sqlite_second_open_is_locked(tmp_path: Path) -> None:
    path = str(tmp_path / "state.db")
    async with opened(SqliteStore(path)):
        with pytest.raises(StoreLocked) as caught:
            await SqliteStore(path).open()
        assert str(caught.value) == f"state file {path} is in use by another relay process"
    # Released on close.
    async with opened(SqliteStore(path)):
        pass


async def test_sqlite_failed_open_releases_everything(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    path.write_bytes(b"this is not an sqlite database, just some text " * 100)
    with pytest.raises(StoreError) as caught:
        await SqliteStore(str(path)).open()
    message = str(caught.value)
    assert str(path) in message and "not a database" in message and "\n" not in message
    with open(f"{path}.lock", "rb") as lock:  # nobody holds the lock any more
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)


async def test_sqlite_missing_directory(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "state.db"
    with pytest.raises(StoreError, match="no directory") as caught:
        await SqliteStore(str(path)).open()
    assert str(path) in str(caught.value)


async def test_sqlite_disk_full_refuses_work_and_rolls_back(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    async with opened(SqliteStore(str(path))) as s:
        await s.ingest(batch([1], cursor=ts(1)))
        # Emulate a full disk: cap the file at its current size (SQLITE_FULL, as from ENOSPC).
        await s._run("cap", lambda c: c.execute("PRAGMA max_page_count = 1"))
        big = [rec(r, body=b"x" * 4_000) for r in range(2, 200)]
        with pytest.raises(StoreFull) as caught:
            await s.ingest(IngestBatch("acct", big, ["a", "b"], T0, ts(199)))
        assert "x" * 10 not in str(caught.value)
        # Nothing of the failed batch was committed; reads still work.
        stats = await s.stats()
        assert (stats.seen, stats.accounts["acct"].cursor) == (1, ts(1))

        await s._run("uncap", lambda c: c.execute("PRAGMA max_page_count = 1073741823"))
        outcome = await s.ingest(IngestBatch("acct", big, ["a", "b"], T0, ts(199)))
        assert len(outcome.new_rids) == 198
    assert integrity_check(str(path)) == "ok"


# -- file permissions: run as an unprivileged user, since root ignores them ------------------------


@pytest.fixture
def store_shared_dir() -> Iterator[Path]:
    """A scratch directory that an unprivileged user can reach (tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="relay-store-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        for sub in path.iterdir():
            sub.chmod(0o755)
        shutil.rmtree(path)


def open_error(path: Path) -> str:
    """Open a store, as a non-root user when we are root, and return the StoreError text."""

    def attempt() -> str:
        try:
            asyncio.run(SqliteStore(str(path)).open())
        except StoreError as exc:
            return f"{type(exc).__name__}: {exc}"
        return "opened"

    if os.geteuid() != 0:
        return attempt()
    ctx = multiprocessing.get_context("fork")
    receiver, sender = ctx.Pipe(duplex=False)

    def child() -> None:
        os.setgid(65534)
        os.setuid(65534)
        try:
            sender.send(attempt())
        except BaseException as exc:  # report, do not hang the parent
            sender.send(f"child failed: {exc!r}")

    proc = ctx.Process(target=child)
    proc.start()
    try:
        assert receiver.poll(30), "child did not answer"
        return str(receiver.recv())
    finally:
        proc.join()
        receiver.close()
        sender.close()


def test_sqlite_read_only_directory(store_shared_dir: Path) -> None:
    directory = store_shared_dir / "ro"
    directory.mkdir(mode=0o555)
    directory.chmod(0o555)
    path = directory / "state.db"
    message = open_error(path)
    assert message.startswith("StoreError: cannot open state file")
    assert str(path) in message


def test_sqlite_read_only_file(store_shared_dir: Path) -> None:
    directory = store_shared_dir / "rw"
    directory.mkdir()
    directory.chmod(0o777)
    path = directory / "state.db"
    asyncio.run(_create(path))
    path.chmod(0o444)
    Path(f"{path}.lock").chmod(0o666)
    message = open_error(path)
    assert message.startswith("StoreError: cannot open state file")
    assert str(path) in message


async def _create(path: Path) -> None:
    async with opened(SqliteStore(str(path))) as s:
        await s.ingest(batch([1]))


# -- other processes -------------------------------------------------------------------------------


def run_python(code: str, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )


TRY_OPEN = """
import asyncio, sys
from relay.core.errors import StoreError
from relay.store.sqlite.store import SqliteStore

async def main():
    store = SqliteStore(sys.argv[1])
    try:
        await store.open()
    except StoreError as exc:
        print(type(exc).__name__, exc)
    else:
        await store.close()
        print("opened")

asyncio.run(main())
"""

INGEST_FOREVER = """
import asyncio, sys
from relay.core.models import CallRecord, IngestBatch
from relay.store.sqlite.store import SqliteStore

async def main():
    store = SqliteStore(sys.argv[1])
    await store.open()
    records = [CallRecord(rid, "2024-05-01 00:00:00", b"x" * 300) for rid in range(100)]
    await store.ingest(IngestBatch("acct", records, ["a", "b"], 1000.0, None))
    await store.claim("a", 10, 1000.0, 3600.0)
    print("ready", flush=True)
    rid = 100
    while True:  # killed somewhere in here
        records = [CallRecord(r, "2024-05-01 00:00:01", b"y" * 300) for r in range(rid, rid + 500)]
        await store.ingest(IngestBatch("acct", records, ["a", "b"], 1000.0, None))
        print("committed", flush=True)
        rid += 500

asyncio.run(main())
"""


@pytest.mark.slow
async def test_sqlite_lock_holds_against_another_process(tmp_path: Path) -> None:
    path = str(tmp_path / "state.db")
    async with opened(SqliteStore(path)):
        with run_python(TRY_OPEN, path) as proc:
            out, _ = proc.communicate(timeout=30)
        assert out.strip() == f"StoreLocked state file {path} is in use by another relay process"
    with run_python(TRY_OPEN, path) as proc:
        out, _ = proc.communicate(timeout=30)
    assert out.strip() == "opened"


@pytest.mark.slow
async def test_sqlite_survives_kill_9(tmp_path: Path) -> None:
    path = str(tmp_path / "state.db")
    with run_python(INGEST_FOREVER, path) as proc:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        for _ in range(3):
            assert proc.stdout.readline().strip() == "committed"
        proc.kill()  # SIGKILL, most likely mid-ingest: no chance to clean up
        proc.wait(timeout=30)

    assert integrity_check(path) == "ok"
    async with opened(SqliteStore(path)) as s:  # the dead process's lock is gone
        [(records, deliveries)] = sqlite_rows(
            Path(path), "SELECT (SELECT COUNT(*) FROM records), (SELECT COUNT(*) FROM deliveries)"
        )
        assert records >= 100 + 3 * 500
        assert records % 500 == 100  # whole batches only
        assert deliveries == 2 * records
        # The ten claimed under a one-hour lease are due again at once.
        claimed = await s.claim("a", 10, 1_000.0, LEASE)
        assert [d.rid for d in claimed] == list(range(10))
    assert integrity_check(path) == "ok"


# -- choosing a backend from a URL -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("./relay-state.db", "./relay-state.db"),
        ("/var/lib/relay/state.db", "/var/lib/relay/state.db"),
        ("sqlite:///relay-state.db", "relay-state.db"),
        ("sqlite:////var/lib/relay/state.db", "/var/lib/relay/state.db"),
        ("  state.db ", "state.db"),
    ],
)
def test_open_store_picks_sqlite(url: str, path: str) -> None:
    s = open_store(url)
    assert isinstance(s, SqliteStore)
    assert s.path == path


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://relay:s3cret@db.example/relay", "PostgreSQL backend is not available yet"),
        ("postgres://relay:s3cret@db.example/relay", "PostgreSQL backend is not available yet"),
        ("mysql://relay:s3cret@db.example/relay", "unsupported state store scheme 'mysql'"),
        ("sqlite://", "needs a path"),
        ("", "no state store configured"),
        (":memory:", "not an in-memory database"),
    ],
)
def test_open_store_rejects(url: str, expected: str) -> None:
    with pytest.raises(StoreError, match=expected) as caught:
        open_store(url)
    assert "s3cret" not in str(caught.value)
