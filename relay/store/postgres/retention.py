"""Retention on the PostgreSQL backend: dead letters and quarantined records past their keep,
and the deliveries of subscribers no longer configured (orphans).

Deletes run in chunks of :data:`CHUNK` rows, each its own short transaction (autocommit), so
no instance holds locks on many rows for long. The store runs them under its maintenance lock,
one instance at a time (and a row deleted by one would simply not be found by another).
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from relay.core.models import Orphan

CHUNK = 2000

# Each takes ($1 before, $2 chunk) and answers how many rows went. Attempts follow their
# deliveries through ON DELETE CASCADE.
PRUNE_DEAD = """
WITH doomed AS (
    SELECT id FROM deliveries WHERE state = 'dead' AND updated_at < $1 LIMIT $2
), gone AS (
    DELETE FROM deliveries AS d USING doomed WHERE d.id = doomed.id RETURNING 1
)
SELECT count(*) FROM gone
"""
PRUNE_QUARANTINE = """
WITH doomed AS (
    SELECT id FROM quarantine WHERE last_at < $1 LIMIT $2
), gone AS (
    DELETE FROM quarantine AS q USING doomed WHERE q.id = doomed.id RETURNING 1
)
SELECT count(*) FROM gone
"""
PURGE_ORPHANS = """
WITH doomed AS (
    SELECT d.id FROM deliveries AS d JOIN subscriber_state AS s ON s.subscriber = d.subscriber
    WHERE s.orphaned_at < $1 LIMIT $2
), gone AS (
    DELETE FROM deliveries AS d USING doomed WHERE d.id = doomed.id RETURNING 1
)
SELECT count(*) FROM gone
"""

TOTALS = "SELECT subscriber, count(*) FROM deliveries GROUP BY subscriber"
UNSTAMP_CONFIGURED = """
UPDATE subscriber_state SET orphaned_at = NULL
WHERE orphaned_at IS NOT NULL AND subscriber = ANY($1::text[])
"""
STAMP = """
INSERT INTO subscriber_state (subscriber, disabled_reason, updated_at, orphaned_at)
SELECT name, NULL, $2::float8, $2::float8 FROM unnest($1::text[]) AS name
ON CONFLICT (subscriber) DO UPDATE
SET orphaned_at = COALESCE(subscriber_state.orphaned_at, excluded.orphaned_at)
"""
# A stamped subscriber with no deliveries left: its row has nothing more to say (unless it
# also records a 410, kept for if the subscriber is configured again).
DROP_EMPTY = """
DELETE FROM subscriber_state
WHERE orphaned_at IS NOT NULL AND disabled_reason IS NULL AND NOT (subscriber = ANY($1::text[]))
"""
UNSTAMP_EMPTY = """
UPDATE subscriber_state SET orphaned_at = NULL
WHERE orphaned_at IS NOT NULL AND NOT (subscriber = ANY($1::text[]))
"""
STAMPED = "SELECT subscriber, orphaned_at FROM subscriber_state WHERE orphaned_at IS NOT NULL"


async def chunked(conn: PoolConnectionProxy[asyncpg.Record], sql: str, before: float) -> int:
    """Run one of the chunked deletes until a chunk comes back short; returns the total."""
    total = 0
    while True:
        done = int(await conn.fetchval(sql, before, CHUNK))
        total += done
        if done < CHUNK:
            return total


async def find_orphans(
    conn: PoolConnectionProxy[asyncpg.Record], configured: Sequence[str], now: float
) -> list[Orphan]:
    """As :meth:`relay.store.base.Store.find_orphans`; run inside one transaction."""
    totals = {str(name): int(count) for name, count in await conn.fetch(TOTALS)}
    orphans = sorted(set(totals) - set(configured))
    await conn.execute(UNSTAMP_CONFIGURED, list(configured))
    await conn.execute(STAMP, orphans, now)
    await conn.execute(DROP_EMPTY, orphans)
    await conn.execute(UNSTAMP_EMPTY, orphans)
    since = {str(name): float(at) for name, at in await conn.fetch(STAMPED)}
    return [Orphan(name, since[name], totals[name]) for name in orphans]
