"""The operator queries every backend must answer alike: a call's journey, record search,
redelivery, backup, and the read-only snapshot reader (SQLite) beside a running owner."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from relay.core.errors import StoreError
from relay.core.journey import RecordQuery
from relay.core.models import CallRecord, IngestBatch, Outcome, Quarantined
from relay.store import Store, StoreReader
from relay.store.sqlite import SqliteSnapshotReader, SqliteStore
from tests.store.builders import LEASE, T0, opened, result, ts


@pytest.fixture
def ops_store(store: Store) -> Store:
    """The suite's store (every backend); a backend without the operator queries fails here
    rather than skipping."""
    for name in ("journey", "find_records", "recent_attempts", "delivery_subscriber"):
        assert getattr(type(store), name) is not getattr(StoreReader, name), name
    assert type(store).redeliver is not Store.redeliver
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
            held = await owner.claim("a", 3, T0, LEASE)
            # The owner's claims live in its memory: in the file they are still pending, as
            # they would be after a crash; the owner itself counts them in flight.
            assert (await reader.stats()).subscribers["a"].pending == 3
            assert (await owner.stats()).subscribers["a"].inflight == 3
            await owner.finish([result(held[0].id, Outcome.DELIVERED)])  # the owner writes
            counts = (await reader.stats()).subscribers["a"]
            assert (counts.pending, counts.delivered) == (2, 1)
            await reader.backup(str(tmp_path / "copy.db"))
        finally:
            await reader.close()
    finally:
        await owner.close()
    with contextlib.closing(sqlite3.connect(tmp_path / "copy.db")) as db:
        assert db.execute("SELECT COUNT(*) FROM records").fetchone()[0] == 3
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"


async def test_recent_attempts_newest_first_with_the_delivery_state_now(ops_store: Store) -> None:
    store = ops_store
    assert await store.recent_attempts(5) == []
    await seed(store)
    claimed = {d.rid: d for d in await store.claim("a", 10, T0, LEASE)}
    await store.finish([result(claimed[10].id, Outcome.RETRY, at=2_000.0, status=503,
                               error="HTTP 503", next_at=2_500.0)])  # fmt: skip
    await store.finish([result(claimed[20].id, Outcome.DELIVERED, at=2_100.0)])
    await store.finish([result(claimed[30].id, Outcome.DEAD, at=2_200.0, status=None,
                               error="connection refused")])  # fmt: skip
    recent = await store.recent_attempts(10)
    assert [(a.rid, a.subscriber, a.account) for a in recent] == [
        (30, "a", "acct"), (20, "a", "acct"), (10, "a", "acct")]  # fmt: skip
    assert [(a.status, a.error, a.state) for a in recent] == [
        (None, "connection refused", "dead"), (200, None, "delivered"),
        (503, "HTTP 503", "pending")]  # fmt: skip
    assert recent[0].delivery_id == claimed[30].id and recent[0].at == 2_200.0
    assert [a.rid for a in await store.recent_attempts(2)] == [30, 20]
    assert [a.rid for a in await store.recent_attempts(0)] == [30]  # at least one


async def test_journey_quarantine_matches_the_rid_field_only(ops_store: Store) -> None:
    store = ops_store
    bad = [
        Quarantined(b'{"rid": 77, "note": "no timestamp"}', "no call_timestamp"),
        Quarantined(b'{"rid": "77", "x": 1}', "rid is not a number"),  # a string: not rid 77
        Quarantined(b'{"rid": 770}', "no call_timestamp"),  # the digits 77, another rid
        Quarantined(b"\xff\xfe 77 not json", "not JSON"),  # neither UTF-8 nor JSON
        Quarantined(b'[77, {"rid": 77}]', "not an object"),
    ]
    await store.ingest(IngestBatch("acct", [], ["a"], T0, None, quarantined=bad))
    await store.ingest(IngestBatch("other", [], ["a"], T0, None, quarantined=bad[:1]))
    journey = await store.journey("acct", 77)
    assert [(q.account, q.reason) for q in journey.quarantined] == [("acct", "no call_timestamp")]
    assert '"rid": 77' in journey.quarantined[0].raw
    assert journey.record is None and not journey.seen


async def test_find_records_ignores_numbers_that_are_not_text(ops_store: Store) -> None:
    store = ops_store
    data = {"rid": 5, "call_timestamp": ts(5), "cidnumber_outside": 4155550199,
            "cidnumber_inside": None, "caller_name": "Zoë & <Co> 📞"}  # fmt: skip
    body = orjson.dumps({"type": "call.record", "account": "acct", "data": data})
    plain = CallRecord(6, ts(6), b'{"rid": 6}')  # no envelope at all
    await store.ingest(IngestBatch("acct", [CallRecord(5, ts(5), body), plain], ["a"], T0, None))
    assert [h.rid for h in await store.find_records(RecordQuery(caller="415"))] == []
    assert [h.rid for h in await store.find_records(RecordQuery())] == [6, 5]
    journey = await store.journey("acct", 5)
    assert journey.record is not None
    assert journey.record.body["data"]["caller_name"] == "Zoë & <Co> 📞"


async def test_backup_of_postgres_says_to_use_pg_dump(pg_url: str, tmp_path: Path) -> None:
    from relay.store.postgres import PostgresStore  # asyncpg is an optional dependency

    secret = "pw-never-shown-8d1f"
    url = pg_url.replace("postgresql://postgres@", f"postgresql://postgres:{secret}@", 1)
    assert secret in url  # trust authentication ignores it; the message must not carry it
    target = tmp_path / "copy.db"
    async with opened(PostgresStore(url)) as store:
        with pytest.raises(StoreError, match="pg_dump") as caught:
            await store.backup(str(target))
    assert secret not in str(caught.value) and not target.exists()

    # ``relay backup`` says the same, exit 1, nothing written.
    config = tmp_path / "relay.yaml"
    config.write_text(CONFIG.format(state=url))
    proc = subprocess.run(
        [sys.executable, "-m", "relay", "backup", "--config", str(config), str(target)],
        capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "KEY_A": "key-alpha-0123456789abcdef"},
    )  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "pg_dump" in proc.stderr and secret not in proc.stdout + proc.stderr
    assert not target.exists()


CONFIG = """
state: "{state}"
upstream:
  accounts: [{{name: alpha, api_key: "${{KEY_A}}"}}]
subscribers: []
"""
