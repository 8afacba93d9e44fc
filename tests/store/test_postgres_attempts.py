"""PostgreSQL schema version 4: attempts without a foreign key to their delivery.

The key's per-row check was a fifth of the backend's CPU per delivered row; the store now keeps
what it kept. These tests hold a finish or a delete open on a connection of their own and run
the other side against it, so each interleaving that could leave an attempt without its
delivery is forced, not hoped for.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from relay.core.models import Outcome
from relay.store.postgres import PostgresStore, migrations
from relay.store.postgres import sql as pg_sql
from relay.store.postgres.store import _finish_arrays
from tests.helpers import wait_until_async
from tests.pg import PG_DSN
from tests.store.builders import LEASE, T0, batch, result


@pytest.fixture
async def store(pg_url: str) -> AsyncIterator[PostgresStore]:
    s = PostgresStore(pg_url, instance_id="one")
    await s.open()
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture
async def raw(store: PostgresStore) -> AsyncIterator[asyncpg.Connection]:
    """A connection of the test's own on the store's schema, outside the store's pool."""
    conn = await asyncpg.connect(PG_DSN)
    await conn.execute(f"SET search_path TO {store.target.schema}")
    try:
        yield conn
    finally:
        await conn.close()


async def count(conn: asyncpg.Connection, sql: str, *args: object) -> int:
    return int(await conn.fetchval(sql, *args))


async def blocked_on_a_lock(store: PostgresStore, raw: asyncpg.Connection) -> None:
    """Until one of the store's connections waits for a row lock held by ``raw``."""

    async def waiting() -> bool:
        n = await raw.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 "
            "AND wait_event_type = 'Lock'",
            store.target.application_name,
        )
        return bool(n)

    await wait_until_async(waiting)


async def test_attempts_have_no_foreign_key_and_an_older_schema_loses_it(
    pg_url: str, store: PostgresStore, raw: asyncpg.Connection
) -> None:
    keys = "SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND conrelid = $1::regclass"
    schema = store.target.schema
    assert schema is not None
    assert await count(raw, keys, f"{schema}.attempts") == 0
    assert await count(raw, keys, f"{schema}.deliveries") == 1  # deliveries -> records stays
    await store.close()
    # The same schema at version 3, with an attempt in it: version 4 drops the key, keeps rows.
    await raw.execute(f'DROP SCHEMA "{schema}" CASCADE; CREATE SCHEMA "{schema}"')
    await raw.execute(f"SET search_path TO {schema}")
    await raw.execute(f"CREATE TABLE {migrations.VERSION_TABLE} (version integer NOT NULL)")
    await raw.execute(f"INSERT INTO {migrations.VERSION_TABLE} VALUES (3)")
    for step in migrations.MIGRATIONS[:3]:
        await raw.execute(step)
    assert await count(raw, keys, f"{schema}.attempts") == 1
    older = PostgresStore(pg_url, instance_id="older")
    await older.open()  # migrates
    try:
        await older.ingest(batch([1], ("a",)))
        [d] = await older.claim("a", 1, T0, LEASE)
        await older.finish([result(d.id, Outcome.DELIVERED, token=d.token)])
    finally:
        await older.close()
    assert await count(raw, keys, f"{schema}.attempts") == 0
    assert await count(raw, f"SELECT version FROM {migrations.VERSION_TABLE}") == len(
        migrations.MIGRATIONS
    )
    assert await count(raw, "SELECT count(*) FROM attempts") == 1
    await store.open()  # for the fixture's close


async def test_a_result_for_a_delivery_being_deleted_waits_and_writes_no_attempt(
    store: PostgresStore, raw: asyncpg.Connection
) -> None:
    await store.ingest(batch([1, 2], ("a",)))
    first, second = await store.claim("a", 2, T0, LEASE)
    await store.finish([result(first.id, Outcome.DEAD, at=100.0, token=first.token)])
    # A delete of the dead delivery, as retention makes it, holds its row ...
    tx = raw.transaction()
    await tx.start()
    await raw.execute("DELETE FROM deliveries WHERE id = $1", first.id)
    await raw.execute(pg_sql.DELETE_ATTEMPTS, [first.id])
    # ... while a late result for it (and one for a delivery no one deletes) comes in.
    late = asyncio.create_task(
        store.finish(
            [
                result(first.id, Outcome.DEAD, at=200.0),
                result(second.id, Outcome.DELIVERED, at=200.0, token=second.token),
            ]
        )
    )
    await blocked_on_a_lock(store, raw)
    await tx.commit()
    await late
    assert await count(raw, "SELECT count(*) FROM attempts WHERE delivery_id = $1", first.id) == 0
    assert await count(raw, "SELECT count(*) FROM attempts WHERE delivery_id = $1", second.id) == 1
    orphans = (
        "SELECT count(*) FROM attempts AS a "
        "WHERE NOT EXISTS (SELECT 1 FROM deliveries AS d WHERE d.id = a.delivery_id)"
    )
    assert await count(raw, orphans) == 0


@pytest.mark.parametrize("fenced", [False, True], ids=["claim-stands", "claim-gone"])
async def test_a_delete_waits_for_a_result_being_written_and_takes_its_attempt(
    store: PostgresStore, raw: asyncpg.Connection, fenced: bool
) -> None:
    await store.ingest(batch([1], ("a",)))
    [d] = await store.claim("a", 1, T0, LEASE)
    await store.finish([result(d.id, Outcome.DEAD, at=100.0, token=d.token)])
    # A result still being written (its transaction open) for the dead delivery: applied
    # (no token) or, fenced out by a token that no longer stands, kept only as history.
    late = result(d.id, Outcome.DEAD, at=150.0, token=10**9 if fenced else None)
    tx = raw.transaction()
    await tx.start()
    await raw.execute(pg_sql.FINISH, *_finish_arrays([late], [150.0]))
    assert await count(raw, "SELECT count(*) FROM attempts WHERE delivery_id = $1", d.id) == 2
    pruning = asyncio.create_task(store.prune_dead(1_000.0))
    await blocked_on_a_lock(store, raw)
    await tx.commit()
    assert await pruning == 1
    assert await count(raw, "SELECT count(*) FROM attempts") == 0


async def test_every_delete_of_deliveries_takes_their_attempts(
    store: PostgresStore, raw: asyncpg.Connection
) -> None:
    await store.ingest(batch([1, 2, 3], ("a", "gone")))
    claimed = await store.claim("a", 3, T0, LEASE) + await store.claim("gone", 3, T0, LEASE)
    outcomes = {1: Outcome.DELIVERED, 2: Outcome.DEAD, 3: Outcome.RETRY}
    await store.finish(
        [
            result(
                c.id,
                outcomes[c.rid] if c.subscriber == "a" else Outcome.RETRY,
                at=100.0,
                next_at=10**12,
                token=c.token,
            )
            for c in claimed
        ]
    )
    assert await count(raw, "SELECT count(*) FROM attempts") == 6
    # Retention of dead letters: rid 2's delivery to "a".
    assert await store.prune_dead(1_000.0) == 1
    assert await count(raw, "SELECT count(*) FROM attempts") == 5
    # A subscriber no longer configured, past its grace: its three deliveries.
    await store.find_orphans(["a"], 100.0)
    assert await store.purge_orphans(1_000.0) == 3
    assert await count(raw, "SELECT count(*) FROM attempts") == 2
    # Records with nothing but delivered deliveries: rids 1 and 2 (rid 3 has a retry).
    assert await store.prune_delivered(10**12) == 2
    left = await raw.fetch(
        "SELECT r.rid FROM attempts AS a JOIN deliveries AS d ON d.id = a.delivery_id "
        "JOIN records AS r ON r.id = d.record_id"
    )
    assert [row[0] for row in left] == [3]
    assert await count(raw, "SELECT count(*) FROM attempts") == 1
