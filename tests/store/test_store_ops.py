"""The operator queries every backend must answer alike: a call's journey, record search,
redelivery, backup, and the read-only snapshot reader (SQLite) beside a running owner."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import orjson
import pytest

from relay.core.journey import RecordQuery
from relay.core.models import CallRecord, IngestBatch, Outcome, Quarantined
from relay.store import Store, StoreReader
from relay.store.sqlite import SqliteSnapshotReader, SqliteStore
from tests.store.builders import LEASE, T0, result, ts


@pytest.fixture
def ops_store(store: Store) -> Store:
    """The suite's store (every backend), skipped where the operator queries are not mirrored
    yet, so that a backend without them is visible rather than silently passing."""
    if type(store).journey is StoreReader.journey:
        pytest.skip(f"{type(store).__name__} does not implement the operator queries yet")
    return store


def call(rid: int, number: str, inside: str = "+1 555 0100, x201") -> CallRecord:
    data = {"rid": rid, "call_timestamp": ts(rid), "cidnumber_outside": number,
            "cidnumber_inside": inside}  # fmt: skip
    body = orjson.dumps({"type": "call.record", "account": "acct", "data": data})
    return CallRecord(rid, ts(rid), body)


async def seed(store: Store) -> None:
    records = [call(10, "+1 (415) 555-0199"), call(20, "07700 900123"), call(30, "")]
    bad = [Quarantined(b'{"rid": 40, "cidnumber_outside": "1"}', "no call_timestamp")]
    await store.ingest(IngestBatch("acct", records, ["a", "b"], T0, ts(30), quarantined=bad))


async def test_journey_has_the_record_each_delivery_and_its_attempts(ops_store: Store) -> None:
    store = ops_store
    await seed(store)
    claimed = await store.claim("a", 10, T0, LEASE)
    first = next(d for d in claimed if d.rid == 10)
    await store.finish([result(first.id, Outcome.RETRY, at=2_000.0, status=500, error="HTTP 500",
                               next_at=2_100.0)])  # fmt: skip
    await store.finish([result(first.id, Outcome.DELIVERED, at=2_200.0)])
    journey = await store.journey("acct", 10)
    assert journey.record is not None and journey.record.call_ts == ts(10)
    assert journey.record.body["data"]["rid"] == 10 and journey.seen
    by_sub = {d.subscriber: d for d in journey.deliveries}
    assert set(by_sub) == {"a", "b"}
    assert by_sub["a"].state == "delivered" and by_sub["a"].attempts == 2
    assert [(x.at, x.status, x.error) for x in by_sub["a"].attempt_log] == [
        (2_000.0, 500, "HTTP 500"),
        (2_200.0, 200, None),
    ]
    assert by_sub["b"].state == "pending" and by_sub["b"].attempt_log == []
    quarantined = await store.journey("acct", 40)
    assert quarantined.record is None and quarantined.deliveries == []
    assert [q.reason for q in quarantined.quarantined] == ["no call_timestamp"]
    unknown = await store.journey("acct", 99)
    assert (unknown.record, unknown.seen, unknown.quarantined) == (None, False, [])
    assert (await store.journey("other", 10)).record is None


async def test_find_records_by_caller_digits_account_and_time(ops_store: Store) -> None:
    store = ops_store
    await seed(store)

    async def find(**kw: object) -> list[int]:
        return [hit.rid for hit in await store.find_records(RecordQuery(**kw))]  # type: ignore[arg-type]

    assert await find() == [30, 20, 10]  # newest call first
    assert await find(caller="415-555-0199") == [10]
    assert await find(caller="900123") == [20]
    assert await find(caller="5550100") == [30, 20, 10]  # the inside number matches too
    assert await find(caller="no digits") == [30, 20, 10]  # nothing to match on: no filter
    assert await find(caller="12345678901234567890") == []
    assert await find(since=ts(15), until=ts(30)) == [30, 20]
    assert await find(account="other") == []
    assert await find(limit=1) == [30]
    hit = (await store.find_records(RecordQuery(caller="4155550199")))[0]
    assert hit.states == {"a": "pending", "b": "pending"} and hit.caller == "+1 (415) 555-0199"


async def test_redeliver_requeues_a_finished_delivery_only(ops_store: Store) -> None:
    store = ops_store
    await seed(store)
    d = (await store.claim("a", 1, T0, LEASE))[0]
    assert await store.delivery_subscriber(d.id) == "a"
    assert await store.delivery_subscriber(10_000) is None
    assert not await store.redeliver(d.id, 3_000.0)  # in flight
    await store.finish([result(d.id, Outcome.DELIVERED)])
    assert await store.redeliver(d.id, 3_000.0)
    assert not await store.redeliver(d.id, 3_000.0)  # pending again already
    again = await store.claim("a", 10, 3_000.0, LEASE)
    assert d.id in [x.id for x in again]
    journey = await store.journey(d.account, d.rid)
    assert [x.state for x in journey.deliveries if x.subscriber == "a"] == ["inflight"]
    assert not await store.redeliver(10_000, 3_000.0)


async def test_snapshot_reader_reads_while_the_owner_holds_the_lock(tmp_path: Path) -> None:
    path = str(tmp_path / "state.db")
    owner = SqliteStore(path)
    await owner.open()
    try:
        await seed(owner)
        reader = SqliteSnapshotReader(path)
        await reader.open()
        try:
            assert (await reader.stats()).subscribers["a"].pending == 3
            assert (await reader.journey("acct", 20)).record is not None
            assert len(await reader.find_records(RecordQuery(caller="900123"))) == 1
            await owner.claim("a", 3, T0, LEASE)  # the owner keeps writing
            assert (await reader.stats()).subscribers["a"].inflight == 3
            await reader.backup(str(tmp_path / "copy.db"))
        finally:
            await reader.close()
    finally:
        await owner.close()
    with contextlib.closing(sqlite3.connect(tmp_path / "copy.db")) as db:
        assert db.execute("SELECT COUNT(*) FROM records").fetchone()[0] == 3
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
