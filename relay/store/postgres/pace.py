"""The PostgreSQL side of a subscriber's pace (see :class:`relay.store.base.Store`): the head of
its queue, start-up due times, the requeue when a circuit closes, and saved circuits (schema
version 2, ``migrations.SCHEMA_V2``). A mixin of :class:`relay.store.postgres.store.PostgresStore`.

Head claims from several instances are serialised per subscriber by a transaction-scoped
advisory lock, and refused while another delivery of the subscriber is leased: one in flight
across every instance, oldest first.
"""

from __future__ import annotations

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from relay.core.breaker import Circuit
from relay.core.models import Delivery
from relay.core.status import QueueCounts
from relay.store.postgres.connect import PoolHost

HEAD_LOCK = "SELECT pg_advisory_xact_lock(hashtextextended('relay-head:' || $1, 0))"
DISABLED = "SELECT disabled_reason FROM subscriber_state WHERE subscriber = $1"
LEASED = """
SELECT 1 FROM deliveries WHERE subscriber = $1 AND state = 'inflight' AND lease_until >= $2
LIMIT 1
"""
HEAD = """
SELECT id, next_at FROM deliveries WHERE subscriber = $1 AND state = 'pending'
ORDER BY id LIMIT 1
"""
LEASE_HEAD = """
WITH leased AS (
    UPDATE deliveries SET state = 'inflight', lease_until = $2::float8 + $3::float8,
        owner = $4, token = nextval('claim_tokens')
    WHERE id = $1 RETURNING id, attempts, token, record_id
)
SELECT l.id, l.attempts, l.token, r.account, r.rid, r.body
FROM leased AS l JOIN records AS r ON r.id = l.record_id
"""
# As in SQLite (relay.store.sqlite.pace): hop from one subscriber to the next in each partial
# index and read the first entry of each, instead of a GROUP BY over every queued row.
DUE_TIMES = """
WITH RECURSIVE pending (subscriber) AS (
    (SELECT subscriber FROM deliveries WHERE state = 'pending' ORDER BY subscriber LIMIT 1)
    UNION ALL
    SELECT (SELECT d.subscriber FROM deliveries AS d
            WHERE d.state = 'pending' AND d.subscriber > p.subscriber
            ORDER BY d.subscriber LIMIT 1)
    FROM pending AS p WHERE p.subscriber IS NOT NULL
), inflight (subscriber) AS (
    (SELECT subscriber FROM deliveries WHERE state = 'inflight' ORDER BY subscriber LIMIT 1)
    UNION ALL
    SELECT (SELECT d.subscriber FROM deliveries AS d
            WHERE d.state = 'inflight' AND d.subscriber > i.subscriber
            ORDER BY d.subscriber LIMIT 1)
    FROM inflight AS i WHERE i.subscriber IS NOT NULL
), queues AS (
    SELECT subscriber FROM pending WHERE subscriber IS NOT NULL
    UNION SELECT subscriber FROM inflight WHERE subscriber IS NOT NULL
)
SELECT q.subscriber, LEAST(
    (SELECT MIN(next_at) FROM deliveries AS d
     WHERE d.state = 'pending' AND d.subscriber = q.subscriber),
    (SELECT MIN(lease_until) FROM deliveries AS d
     WHERE d.state = 'inflight' AND d.subscriber = q.subscriber))
FROM queues AS q
WHERE q.subscriber NOT IN (
    SELECT subscriber FROM subscriber_state WHERE disabled_reason IS NOT NULL)
"""
REQUEUE = """
UPDATE deliveries AS d SET next_at = r.received_at
FROM records AS r
WHERE r.id = d.record_id AND d.subscriber = $1 AND d.state = 'pending' AND d.attempts > 0
"""
CIRCUITS = (
    "SELECT subscriber, failures, failing_since, opened_at, paused_until FROM subscriber_circuit"
)
SAVE = """
INSERT INTO subscriber_circuit
    (subscriber, failures, failing_since, opened_at, paused_until, updated_at)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (subscriber) DO UPDATE
SET failures = excluded.failures, failing_since = excluded.failing_since,
    opened_at = excluded.opened_at, paused_until = excluded.paused_until,
    updated_at = excluded.updated_at
"""
FORGET = "DELETE FROM subscriber_circuit WHERE subscriber = $1"


class PaceMixin(PoolHost):
    """The pace methods; the host class provides the pool (``_conn``/``_tx``) and instance id."""

    async def claim_head(self, subscriber: str, now: float, lease: float) -> Delivery | None:
        async with self._tx("claim head") as conn:
            await conn.execute(HEAD_LOCK, subscriber)
            if await conn.fetchval(DISABLED, subscriber) is not None:
                return None
            if await conn.fetchval(LEASED, subscriber, now) is not None:
                return None  # the one allowed out is out (on this instance or another)
            head = await conn.fetchrow(HEAD, subscriber)
            if head is None or head[1] > now:
                return None
            row = await conn.fetchrow(LEASE_HEAD, head[0], now, lease, self.instance_id)
        assert row is not None
        return Delivery(row[0], subscriber, row[3], row[4], row[5], row[1], token=row[2])

    async def head_due(self, subscriber: str) -> float | None:
        async with self._conn("head due") as conn:
            if await conn.fetchval(DISABLED, subscriber) is not None:
                return None
            head = await conn.fetchrow(HEAD, subscriber)
        return None if head is None else float(head[1])

    async def due_times(self) -> dict[str, float]:
        async with self._conn("due times") as conn:
            rows = await conn.fetch(DUE_TIMES)
        return {row[0]: float(row[1]) for row in rows if row[1] is not None}

    async def requeue_retries(self, subscriber: str) -> int:
        async with self._conn("requeue retries") as conn:
            status = await conn.execute(REQUEUE, subscriber)
        return int(status.rsplit(" ", 1)[-1])

    async def load_circuits(self) -> dict[str, Circuit]:
        async with self._conn("load circuits") as conn:
            rows = await conn.fetch(CIRCUITS)
        return {row[0]: Circuit(row[1], row[2], row[3], row[4]) for row in rows}

    async def save_circuit(self, subscriber: str, circuit: Circuit, now: float) -> None:
        async with self._conn("save circuit") as conn:
            if circuit == Circuit():
                await conn.execute(FORGET, subscriber)
                return
            c = circuit
            await conn.execute(
                SAVE, subscriber, c.failures, c.failing_since, c.opened_at, c.paused_until, now
            )


async def forget_circuit(conn: PoolConnectionProxy[asyncpg.Record], subscriber: str) -> None:
    """Re-enabling a subscriber starts its circuit afresh (same transaction)."""
    await conn.execute(FORGET, subscriber)


async def add_circuits(
    conn: PoolConnectionProxy[asyncpg.Record], subscribers: dict[str, QueueCounts]
) -> None:
    """Fill the circuit fields of status (inside the stats snapshot)."""
    for name, failures, since, opened_at, paused_until in await conn.fetch(CIRCUITS):
        counts = subscribers.setdefault(name, QueueCounts())
        counts.circuit = "closed" if opened_at is None else "open"
        counts.failures, counts.failing_since = failures, since
        counts.circuit_opened_at, counts.paused_until = opened_at, paused_until
