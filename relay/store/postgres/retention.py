"""Retention on the PostgreSQL backend: dead letters and quarantined records past their keep,
and the deliveries of subscribers no longer configured (orphans).

Deletes run in chunks of :data:`CHUNK` rows, each its own short transaction, so no instance
holds locks on many rows for long. The store runs them under its maintenance lock, one instance
at a time (and a row deleted by one would simply not be found by another). Attempts have no
foreign key (schema version 4): each chunk that deletes deliveries deletes their attempts next,
in a second statement of its transaction (see ``relay.store.postgres.sql.FINISH`` for why that
leaves none behind).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Sequence

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from relay.core.models import Orphan
from relay.store.postgres import sql as q
from relay.store.postgres.connect import PoolHost

log = logging.getLogger(__name__)

CHUNK = 2000

# Each takes ($1 before, $2 chunk) and answers the ids of the rows that went.
PRUNE_DEAD = """
WITH doomed AS (
    SELECT id FROM deliveries WHERE state = 'dead' AND updated_at < $1 LIMIT $2
), gone AS (
    DELETE FROM deliveries AS d USING doomed WHERE d.id = doomed.id RETURNING d.id
)
SELECT COALESCE(array_agg(id), '{}') FROM gone
"""
PRUNE_QUARANTINE = """
WITH doomed AS (
    SELECT id FROM quarantine WHERE last_at < $1 LIMIT $2
), gone AS (
    DELETE FROM quarantine AS q USING doomed WHERE q.id = doomed.id RETURNING q.id
)
SELECT COALESCE(array_agg(id), '{}') FROM gone
"""
PURGE_ORPHANS = """
WITH doomed AS (
    SELECT d.id FROM deliveries AS d JOIN subscriber_state AS s ON s.subscriber = d.subscriber
    WHERE s.orphaned_at < $1 LIMIT $2
), gone AS (
    DELETE FROM deliveries AS d USING doomed WHERE d.id = doomed.id RETURNING d.id
)
SELECT COALESCE(array_agg(id), '{}') FROM gone
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


async def chunked(
    conn: PoolConnectionProxy[asyncpg.Record], sql: str, before: float, then: str | None = None
) -> int:
    """Run one of the chunked deletes until a chunk comes back short; returns the total.

    ``then`` (``DELETE_ATTEMPTS`` after deliveries) runs on each chunk's ids as the second
    statement of its transaction."""
    total = 0
    while True:
        async with conn.transaction():
            ids = await conn.fetchval(sql, before, CHUNK)
            if then is not None and ids:
                await conn.execute(then, ids)
        total += len(ids)
        if len(ids) < CHUNK:
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


class RetentionMixin(PoolHost):
    """Pruning and retention for :class:`~relay.store.postgres.store.PostgresStore`, each step
    under the maintenance lock: one instance at a time prunes."""

    @contextlib.asynccontextmanager
    async def _maintenance(
        self, op: str
    ) -> AsyncIterator[PoolConnectionProxy[asyncpg.Record] | None]:
        """A connection holding the maintenance lock, so that one instance at a time prunes
        (peers have pinned PostgreSQL with concurrent cleanups); None while another holds it."""
        async with self._conn(op) as conn:
            if not await conn.fetchval(q.TRY_MAINTENANCE):
                log.info("another instance is running maintenance; %s skipped", op)
                yield None
                return
            try:
                yield conn
            finally:
                try:
                    await conn.execute(q.END_MAINTENANCE)
                except BaseException:
                    # The pool does not reset sessions: a lock not released here would stay
                    # with the pooled connection. Closing the session ends it.
                    conn.terminate()
                    raise

    async def prune_delivered(self, before: float) -> int:
        """As the interface says, in bounded batches; and only one instance at a time prunes:
        while another holds the maintenance lock this returns 0 at once."""
        total, after = 0, (float("-inf"), 0)
        async with self._maintenance("prune delivered") as conn:
            while conn is not None:
                # Every chunk is its own short transaction: the records (their deliveries
                # follow by cascade), then the attempts of those deliveries.
                async with conn.transaction():
                    row = await conn.fetchrow(q.PRUNE_DELIVERED, before, *after, q.PRUNE_CHUNK)
                    assert row is not None
                    pruned, examined, last_at, last_id, gone = row
                    if gone:
                        await conn.execute(q.DELETE_ATTEMPTS, gone)
                total += int(pruned)
                if examined < q.PRUNE_CHUNK:
                    break
                after = (last_at, last_id)
        return total

    async def prune_dead(self, before: float) -> int:
        async with self._maintenance("prune dead letters") as conn:
            return 0 if conn is None else await chunked(conn, PRUNE_DEAD, before, q.DELETE_ATTEMPTS)

    async def prune_quarantine(self, before: float) -> int:
        async with self._maintenance("prune quarantine") as conn:
            return 0 if conn is None else await chunked(conn, PRUNE_QUARANTINE, before)

    async def find_orphans(self, configured: Sequence[str], now: float) -> list[Orphan]:
        async with self._tx("find orphans") as conn:
            return await find_orphans(conn, list(configured), now)

    async def purge_orphans(self, before: float) -> int:
        async with self._maintenance("purge orphans") as conn:
            return (
                0 if conn is None else await chunked(conn, PURGE_ORPHANS, before, q.DELETE_ATTEMPTS)
            )
