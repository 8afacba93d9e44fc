"""Builders shared by the store suites: records, batches and results with explicit times."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from relay.core.models import Attempt, CallRecord, Finished, IngestBatch, Outcome
from relay.store import Store

NOW = 1_764_400_000.0
T0 = 1_000.0  # when the test batches are received
LEASE = 30.0


@contextlib.asynccontextmanager
async def opened(s: Store) -> AsyncIterator[Store]:
    await s.open()
    try:
        yield s
    finally:
        await s.close()


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
    token: int | None = None,
) -> Finished:
    attempt = Attempt(at=at, status=status, error=error, latency_ms=12.5, response="ok")
    return Finished(delivery_id, attempt, outcome, next_at, token)
