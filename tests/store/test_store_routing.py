"""Per-record subscribers (filters at ingest): ``CallRecord.subscribers`` decides who gets a
delivery, in the ingest's own transaction, and each queue keeps record order. Run against every
backend (the ``store`` fixture of tests/store/conftest.py); records are listed newest first for
``check-config --explain``."""

from __future__ import annotations

import random

from relay.core.models import CallRecord, IngestBatch
from relay.store.base import Store

T0 = 1_000.0
SUBS = ["all", "missed", "sales"]


def record(rid: int, subscribers: tuple[str, ...] | None) -> CallRecord:
    return CallRecord(rid, "2025-07-01 10:00:00", b'{"rid":%d}' % rid, subscribers)


async def claimed_rids(store: Store, subscriber: str) -> list[int]:
    return [d.rid for d in await store.claim(subscriber, 10_000, T0 + 1, 60.0)]


async def test_each_record_reaches_exactly_its_subscribers_in_order(store) -> None:
    rng = random.Random(5)
    records = []
    for rid in range(1, 301):
        roll = rng.random()
        if roll < 0.4:
            routed: tuple[str, ...] | None = None  # passed every filter: the fast fan-out
        elif roll < 0.5:
            routed = ()  # passed none: stored and seen, delivered to nobody
        else:
            routed = tuple(s for s in SUBS if rng.random() < 0.5)
        records.append(record(rid, routed))
    result = await store.ingest(IngestBatch("acct", records, SUBS, T0, "2025-07-01 10:00:00"))
    assert result.new_rids == list(range(1, 301))
    for sub in SUBS:
        expected = [r.rid for r in records if r.subscribers is None or sub in r.subscribers]
        assert await claimed_rids(store, sub) == expected  # record order within each queue
    # Every record is kept, delivered to anyone or not (check-config --explain reads them).
    recent = await store.recent_records(5)
    assert [r.rid for r in recent] == [300, 299, 298, 297, 296]
    assert recent[0].account == "acct" and recent[0].body == b'{"rid":300}'


async def test_a_record_routed_to_nobody_is_still_seen(store) -> None:
    batch = IngestBatch("acct", [record(7, ())], SUBS, T0, "2025-07-01 10:00:00")
    assert (await store.ingest(batch)).new_rids == [7]
    again = IngestBatch("acct", [record(7, None)], SUBS, T0, None)
    result = await store.ingest(again)
    assert result.new_rids == [] and result.duplicates == 1
    for sub in SUBS:
        assert await claimed_rids(store, sub) == []


async def test_a_repeated_name_gives_one_delivery(store) -> None:
    batch = IngestBatch("acct", [record(1, ("sales", "sales"))], SUBS, T0, None)
    await store.ingest(batch)
    assert await claimed_rids(store, "sales") == [1]
