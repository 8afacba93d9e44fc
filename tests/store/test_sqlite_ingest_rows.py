"""The SQLite ingest writes a batch's records and seen rows with one statement each (the bodies
as one blob cut with ``substr``): every body comes back byte for byte, every rid and timestamp
exactly, whatever the bytes, the sizes and the rids."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay.core.errors import StoreError, StoreFull
from relay.core.models import CallRecord, IngestBatch
from relay.core.window import RID_MAX
from relay.store.sqlite.ingest import UNCHECKED_FAN_OUT
from relay.store.sqlite.store import SqliteStore
from tests.store.builders import T0, opened, ts


def stored(path: Path) -> list[tuple[int, str, int, str, float, bytes]]:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        sql = "SELECT id, account, rid, call_ts, received_at, body FROM records ORDER BY id"
        return [(*row[:5], bytes(row[5])) for row in conn.execute(sql)]


def seen(path: Path) -> set[tuple[str, int, str, float]]:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return set(conn.execute("SELECT account, rid, call_ts, seen_at FROM seen"))


bodies = st.binary(min_size=0, max_size=300) | st.sampled_from(
    [b"", b"\x00", b"\xff\xfe\x00\x01", "é😀".encode(), b"'); DROP TABLE records; --"]
)
rids = st.integers(0, 50) | st.sampled_from([RID_MAX, RID_MAX - 1, 2**53 + 1, 2**31])


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(st.tuples(rids, bodies), min_size=1, max_size=40, unique_by=lambda t: t[0]))
def test_every_body_rid_and_time_comes_back_exactly(
    tmp_path_factory: pytest.TempPathFactory, rows: list[tuple[int, bytes]]
) -> None:
    path = tmp_path_factory.mktemp("ingest") / "state.db"
    records = [CallRecord(rid, ts(rid % 60), body) for rid, body in rows]

    async def go() -> None:
        async with opened(SqliteStore(str(path))) as store:
            await store.ingest(IngestBatch("acct", records, ["a"], T0, None))

    asyncio.run(go())
    got = stored(path)
    assert [(rid, call_ts, body) for _, _, rid, call_ts, _, body in got] == [
        (r.rid, r.call_ts, r.body) for r in records
    ]
    assert [i for i, *_ in got] == list(range(got[0][0], got[0][0] + len(records)))
    assert {(a, at) for _, a, _, _, at, _ in got} == {("acct", T0)}
    assert seen(path) == {("acct", r.rid, r.call_ts, T0) for r in records}


async def test_a_large_batch_and_a_second_one_keep_their_ids_and_bodies(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    first = [CallRecord(rid, ts(rid % 60), b"%d" % rid * 50) for rid in range(1, 10_001)]
    second = [CallRecord(rid, ts(1), b"second %d" % rid) for rid in range(10_001, 10_004)]
    async with opened(SqliteStore(str(path))) as store:
        for records in (first, second):
            await store.ingest(IngestBatch("acct", records, ["a", "b"], T0, None))
        claimed = await store.claim("b", 20_000, T0, 30.0)
    got = stored(path)
    assert [(i, rid, body) for i, _, rid, _, _, body in got] == [
        (n, r.rid, r.body) for n, r in enumerate(first + second, start=1)
    ]
    assert [(d.rid, d.body) for d in claimed] == [(r.rid, r.body) for r in first + second]


# -- a large fan-out skips the per-row foreign-key check (relay.store.sqlite.ingest) ------------


def foreign_keys(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA foreign_keys").fetchone()[0])


def fan_out_rows(n: int, subscribers: list[str], first_rid: int = 1) -> IngestBatch:
    records = [
        CallRecord(rid, ts(rid % 60), b"%d" % rid) for rid in range(first_rid, first_rid + n)
    ]
    return IngestBatch("acct", records, subscribers, T0, None)


async def test_a_large_fan_out_points_every_delivery_at_its_record_and_checks_again_after(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.db"
    subscribers = ["a", "b"]
    n = UNCHECKED_FAN_OUT // len(subscribers)  # exactly large enough to skip the check
    async with opened(SqliteStore(str(path))) as store:
        await store.ingest(fan_out_rows(3, subscribers))  # small: checked as always
        await store.ingest(fan_out_rows(n, subscribers, first_rid=10))
        assert await store._run("pragma", foreign_keys) == 1
        orphans = await store._run(
            "check", lambda c: c.execute("PRAGMA foreign_key_check").fetchall()
        )
        assert orphans == []
        # The check is on again: a record's deletion takes its deliveries with it (retention's
        # cascade), and a delivery of no record is refused.
        await store._run("delete", lambda c: c.execute("DELETE FROM records WHERE rid < 110"))
        with pytest.raises(StoreError, match="FOREIGN KEY constraint failed"):
            await store._run(
                "orphan",
                lambda c: c.execute(
                    "INSERT INTO deliveries (record_id, subscriber, state, next_at, updated_at) "
                    "VALUES (999999, 'a', 'pending', 0, 0)"
                ),
            )
    with contextlib.closing(sqlite3.connect(path)) as conn:
        joined = "SELECT count(*) FROM deliveries d JOIN records r ON r.id = d.record_id"
        total = "SELECT count(*) FROM deliveries"
        assert (
            conn.execute(joined).fetchone()
            == conn.execute(total).fetchone()
            == ((n + 3 - 103) * len(subscribers),)
        )


async def test_a_large_fan_out_that_fails_stores_nothing_and_checks_again_after(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.db"
    async with opened(SqliteStore(str(path))) as store:
        await store.ingest(fan_out_rows(3, ["a"]))
        # A full disk half-way (the file capped at its size: SQLITE_FULL, as from ENOSPC).
        await store._run("cap", lambda c: c.execute("PRAGMA max_page_count = 1"))
        with pytest.raises(StoreFull):
            await store.ingest(fan_out_rows(UNCHECKED_FAN_OUT, ["a"], first_rid=10))
        assert await store._run("pragma", foreign_keys) == 1
        await store._run("uncap", lambda c: c.execute("PRAGMA max_page_count = 1073741823"))
    assert [rid for _, _, rid, *_ in stored(path)] == [1, 2, 3]
