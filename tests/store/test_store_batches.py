"""The SQLite store's set-based claim and finish agree with the statement-per-row path they
replace, including the cases that fall back to it; the fast webhook-id matches the reference."""

from __future__ import annotations

import base64
import hashlib
import math
import random
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from relay.core.models import Attempt, CallRecord, Finished, IngestBatch, Outcome
from relay.core.signing import webhook_id
from relay.store.sqlite import finish as finishing
from relay.store.sqlite import sql as backend
from relay.store.sqlite.store import SqliteStore

T0 = 1_000.0


def batch(n: int, subscribers: list[str], body_size: int = 40) -> IngestBatch:
    pad = "é" * body_size
    records = [
        CallRecord(rid, "2025-07-01 10:00:00", f'{{"rid":{rid},"pad":"{pad}"}}'.encode())
        for rid in range(1, n + 1)
    ]
    return IngestBatch("acct", records, subscribers, T0, "2025-07-01 10:00:00")


def finished(delivery_id: int, outcome: Outcome, i: int) -> Finished:
    attempt = Attempt(
        at=T0 + 1 + i / 7,  # not short decimals: they must survive the JSON round trip exactly
        # Two delivered statuses, so the delivered results form more than one group.
        status={Outcome.DELIVERED: 204 if i % 8 == 4 else 200, Outcome.GONE: 410}.get(outcome, 503),
        error=None if outcome is Outcome.DELIVERED else f"HTTP 503 ünïcode {i}",
        latency_ms=math.pi * (i + 1),
        response='{"ok":true}' if outcome is Outcome.DELIVERED else "",
    )
    next_at = T0 + 60 + i / 3 if outcome is Outcome.RETRY else None
    return Finished(delivery_id, attempt, outcome, next_at)


def rows(path: Path) -> tuple[list[Any], list[Any]]:
    conn = sqlite3.connect(path)
    try:
        deliveries = conn.execute(
            "SELECT id, state, attempts, next_at, lease_until, last_status, last_error, updated_at "
            "FROM deliveries ORDER BY id"
        ).fetchall()
        attempts = conn.execute(
            "SELECT delivery_id, at, status, error, latency_ms, response FROM attempts "
            "ORDER BY delivery_id, rowid"
        ).fetchall()
    finally:
        conn.close()
    return deliveries, attempts


async def run_cycle(path: Path, results_for: Any) -> tuple[list[Any], list[Any]]:
    store = SqliteStore(str(path))
    await store.open()
    try:
        await store.ingest(batch(40, ["a", "b"]))
        claimed = await store.claim("a", 30, T0 + 1, 30.0)
        await store.finish(results_for([d.id for d in claimed]))
    finally:
        await store.close()
    return rows(path)


OUTCOMES = [Outcome.DELIVERED, Outcome.RETRY, Outcome.DEAD, Outcome.GONE]


def mixed(ids: list[int]) -> list[Finished]:
    return [finished(i, OUTCOMES[k % len(OUTCOMES)], k) for k, i in enumerate(ids)]


@pytest.mark.parametrize(
    "results_for",
    [
        pytest.param(mixed, id="mixed outcomes"),
        pytest.param(lambda ids: [*mixed(ids), *mixed(ids[:3])], id="same delivery twice"),
        pytest.param(
            lambda ids: [*mixed(ids), finished(10_000, Outcome.DELIVERED, 0)], id="unknown delivery"
        ),
    ],
)
async def test_batch_finish_matches_row_by_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, results_for: Any
) -> None:
    fast = await run_cycle(tmp_path / "fast.db", results_for)
    monkeypatch.setattr(finishing, "BATCH_SQL", False)
    slow = await run_cycle(tmp_path / "slow.db", results_for)
    assert fast == slow
    deliveries, attempts = fast
    assert attempts and {r[1] for r in deliveries} >= {"delivered", "pending", "dead"}


async def test_delivered_rows_share_their_groups_latest_attempt_time(tmp_path: Path) -> None:
    deliveries, attempts = await run_cycle(tmp_path / "s.db", mixed)
    at_of = {row[0]: row[1] for row in attempts}
    status_of = {row[0]: row[5] for row in deliveries}
    delivered = [row for row in deliveries if row[1] == "delivered"]
    assert {row[5] for row in delivered} == {200, 204}
    for row in delivered:
        group = [i for i, s in status_of.items() if s == row[5] and i in at_of]
        assert row[7] == max(at_of[i] for i in group)  # one updated_at per status
    others = [row for row in deliveries if row[1] != "delivered" and row[2]]
    assert others and all(row[7] == at_of[row[0]] for row in others)  # their own time
    assert len(set(at_of.values())) == len(at_of)  # attempts keep each exact time


async def test_claim_reads_large_bodies_row_by_row_with_the_same_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    got = []
    for name, limit in (("one.db", backend.BODIES_AT_ONCE), ("rows.db", 0)):
        monkeypatch.setattr(backend, "BODIES_AT_ONCE", limit)
        store = SqliteStore(str(tmp_path / name))
        await store.open()
        try:
            await store.ingest(batch(25, ["a"], body_size=3000))
            got.append(await store.claim("a", 20, T0 + 1, 30.0))
        finally:
            await store.close()
    assert got[0] == got[1]
    assert [d.rid for d in got[0]] == list(range(1, 21))  # queue order
    assert got[0][0].body.startswith(b'{"rid":1,') and len(got[0][0].body) > 6000


def test_webhook_id_is_the_base32_of_the_digest() -> None:
    rng = random.Random(3)
    for _ in range(2000):
        account = "".join(rng.choice("abc-_.é😀") for _ in range(rng.randint(0, 10)))
        subscriber = "".join(rng.choice("xyz-1") for _ in range(rng.randint(1, 8)))
        rid = rng.randint(0, 2**63 - 1)
        digest = hashlib.sha256(f"{account}\x00{rid}\x00{subscriber}".encode()).digest()
        expected = "msg_" + base64.b32encode(digest)[:26].decode().lower()
        assert webhook_id(account, rid, subscriber) == expected
