"""What only the PostgreSQL backend has: concurrent migrations, claims from several instances,
fencing, shared leases and budgets across stores, LISTEN/NOTIFY, and surviving dropped
connections. Each test gets a fresh schema (``pg_url``); see conftest.py for skipping."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator, Callable

import asyncpg
import pytest

from relay.core.errors import StoreError
from relay.core.models import Outcome
from relay.store.postgres import PostgresStore, migrations
from relay.store.postgres import sql as pg_sql
from tests.helpers import GENEROUS, wait_until_async
from tests.pg import PG_DSN, pg_execute, schema_url
from tests.store.builders import LEASE, NOW, T0, batch, opened, result


@pytest.fixture
async def stores(pg_url: str) -> AsyncIterator[Callable[[str], PostgresStore]]:
    """Opened stores on one schema, one per instance id; all closed afterwards."""
    made: list[PostgresStore] = []
    first = PostgresStore(pg_url)
    await first.open()  # migrates once, so the others only connect
    made.append(first)

    def make(instance_id: str) -> PostgresStore:
        store = PostgresStore(pg_url, instance_id=instance_id)
        made.append(store)
        return store

    try:
        yield make
    finally:
        for store in made:
            await store.close()


async def fetch(sql: str, *args: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(PG_DSN)
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


# -- schema ---------------------------------------------------------------------------------------


async def test_three_connections_migrate_at_once_and_exactly_one_creates(pg_url: str) -> None:
    schema = pg_url.rsplit("schema=", 1)[1]
    conns = [await asyncpg.connect(PG_DSN) for _ in range(3)]
    try:
        applied = await asyncio.gather(
            *(migrations.migrate(c, schema, create_schema=True) for c in conns)
        )
    finally:
        for c in conns:
            await c.close()
    assert sorted(applied) == [0, 0, len(migrations.MIGRATIONS)]
    [row] = await fetch(f'SELECT version FROM "{schema}".relay_schema')
    assert row[0] == len(migrations.MIGRATIONS)
    # And stores opening concurrently on the migrated schema all work.
    many = [PostgresStore(pg_url) for _ in range(3)]
    await asyncio.gather(*(s.open() for s in many))
    try:
        assert [await s.live_instances(T0) for s in many] == [[], [], []]
    finally:
        for s in many:
            await s.close()


async def test_a_newer_or_foreign_schema_is_refused(pg_url: str) -> None:
    schema = pg_url.rsplit("schema=", 1)[1]
    async with opened(PostgresStore(pg_url)):
        pass
    await pg_execute(f'UPDATE "{schema}".relay_schema SET version = 99')
    with pytest.raises(StoreError, match="newer than this relay"):
        await PostgresStore(pg_url).open()

    await pg_execute(f'DROP SCHEMA "{schema}" CASCADE')
    await pg_execute(f'CREATE SCHEMA "{schema}"')
    await pg_execute(f'CREATE TABLE "{schema}".deliveries (id int)')
    with pytest.raises(StoreError, match="belongs to something else"):
        await PostgresStore(pg_url).open()


# -- claims across instances ----------------------------------------------------------------------


async def test_skip_locked_claims_from_two_stores_never_overlap(
    stores: Callable[[str], PostgresStore],
) -> None:
    one, two = stores("one"), stores("two")
    await asyncio.gather(one.open(), two.open())
    await one.ingest(batch(list(range(1, 601)), ("a",)))

    async def drain(store: PostgresStore) -> list[int]:
        got: list[int] = []
        while claimed := await store.claim("a", 7, T0, LEASE):
            got.extend(d.id for d in claimed)
        return got

    results = await asyncio.gather(*(drain(s) for s in (one, two, one, two)))
    every = [i for ids in results for i in ids]
    assert len(every) == len(set(every)) == 600
    owners = await fetch(
        f"SELECT owner, count(*) FROM {one.target.schema}.deliveries GROUP BY owner ORDER BY 1"
    )
    assert [r[0] for r in owners] == ["one", "two"]


async def test_a_late_result_from_an_expired_claim_is_ignored(
    stores: Callable[[str], PostgresStore],
) -> None:
    one, two = stores("one"), stores("two")
    await asyncio.gather(one.open(), two.open())
    await one.ingest(batch([1], ("a",)))
    [old] = await one.claim("a", 10, T0, LEASE)
    [new] = await two.claim("a", 10, T0 + LEASE + 1, LEASE)  # one's lease ran out
    assert (new.id, new.token != old.token) == (old.id, True)

    # one wakes up late: its result, release and renewal all find the claim gone.
    await one.finish([result(old.id, Outcome.DELIVERED, token=old.token)])
    await one.release_claims([old])
    assert await one.renew_claims([old], T0 + LEASE + 2, LEASE) == []
    stats = (await two.stats()).subscribers["a"]
    assert (stats.inflight, stats.delivered) == (1, 0)
    assert await two.claim("a", 10, T0 + LEASE + 2, LEASE) == []  # two's claim still stands

    await two.finish([result(new.id, Outcome.RETRY, status=503, next_at=T0 + 99, token=new.token)])
    [row] = await fetch(
        f"SELECT state, attempts, next_at FROM {two.target.schema}.deliveries WHERE id = $1",
        new.id,
    )
    assert tuple(row) == ("pending", 1, T0 + 99)  # one's success counted for nothing
    attempts = await fetch(f"SELECT count(*) FROM {two.target.schema}.attempts")
    assert attempts[0][0] == 2  # but both attempts are in the log


async def test_only_a_dead_instances_claims_are_recovered(
    stores: Callable[[str], PostgresStore],
) -> None:
    one, two = stores("x"), stores("y")
    await asyncio.gather(one.open(), two.open())
    await one.register_instance("one", T0, 10.0)
    await two.register_instance("two", T0, 10.0)
    await one.ingest(batch([1, 2, 3, 4], ("a",)))
    mine = await one.claim("a", 2, T0, 3_600.0)
    theirs = await two.claim("a", 2, T0, 3_600.0)
    assert await one.acquire_account_lease("acct", "one", 60.0, T0)

    assert await two.heartbeat("two", T0 + 9, 10.0)  # one stops heartbeating
    assert await two.recover_dead_instances(T0 + 12) == 2
    assert await two.recover_dead_instances(T0 + 12) == 0  # exactly once
    reclaimed = await two.claim("a", 10, T0 + 12, LEASE)
    assert sorted(d.id for d in reclaimed) == sorted(d.id for d in mine)
    assert {d.id for d in theirs}.isdisjoint(d.id for d in reclaimed)
    assert await two.acquire_account_lease("acct", "two", 60.0, T0 + 12)
    assert not await one.heartbeat("one", T0 + 13, 10.0)


async def test_recovery_reads_only_claimed_rows_without_an_owner_index(
    stores: Callable[[str], PostgresStore],
) -> None:
    # Schema 5 dropped deliveries_owner and deliveries_done (no query read them); finding a
    # dead instance's claims among many delivered rows still walks the claimed rows only.
    store = stores("x")
    await store.open()
    schema = store.target.schema
    indexes = await fetch("SELECT indexname FROM pg_indexes WHERE schemaname = $1", schema)
    names = {row[0] for row in indexes}
    assert "deliveries_leased" in names
    assert not {"deliveries_owner", "deliveries_done"} & names
    await store.ingest(batch(list(range(1, 2001)), ("a",)))
    claimed = await store.claim("a", 1990, T0, LEASE)
    await store.finish([result(d.id, Outcome.DELIVERED, token=d.token) for d in claimed])
    await store.claim("a", 10, T0, 3_600.0)
    conn = await asyncpg.connect(PG_DSN)
    try:
        await conn.execute(f"SET search_path TO {schema}; ANALYZE deliveries")
        # EXPLAIN alone plans the update without running it.
        rows = await conn.fetch("EXPLAIN " + pg_sql.RECOVER_CLAIMS, [store.instance_id])
    finally:
        await conn.close()
    plan = "\n".join(row[0] for row in rows)
    assert "deliveries_leased" in plan, plan
    assert "Seq Scan on deliveries" not in plan, plan


async def test_account_lease_is_taken_over_by_another_store_after_ttl(
    stores: Callable[[str], PostgresStore],
) -> None:
    one, two = stores("one"), stores("two")
    await asyncio.gather(one.open(), two.open())
    races = await asyncio.gather(
        *(s.acquire_account_lease("acct", s.instance_id, 15.0, T0) for s in (one, two) * 5)
    )
    assert races.count(True) == 5  # one store won every try, the other none
    winner, loser = (one, two) if races[0] else (two, one)
    assert not await loser.acquire_account_lease("acct", loser.instance_id, 15.0, T0 + 14)
    assert await loser.acquire_account_lease("acct", loser.instance_id, 15.0, T0 + 15)
    assert not await winner.renew_account_lease("acct", winner.instance_id, 15.0, T0 + 16)


async def test_budget_shared_by_two_stores_is_never_over_in_any_window(
    stores: Callable[[str], PostgresStore],
) -> None:
    one, two = stores("one"), stores("two")
    await asyncio.gather(one.open(), two.open())
    requests, per = 30, 60.0
    rng = random.Random(12)
    admitted: list[float] = []
    now = T0

    async def spend(store: PostgresStore, at: float) -> float:
        wait = await store.spend_budget("key-abc", at, requests, per)
        if wait == 0:
            admitted.append(at)
        return wait

    while now < T0 + 4 * per:
        # Both instances ask at once (and several times) at the same instant.
        waits = await asyncio.gather(*(spend(rng.choice((one, two)), now) for _ in range(4)))
        now += rng.choice((0.0, 0.01, 0.5, min(waits)))
    admitted.sort()
    for i, start in enumerate(admitted):
        assert sum(1 for t in admitted[i:] if t <= start + per) <= requests
    assert len(admitted) >= 4 * requests * 0.9

    await two.pause_budget("key-abc", now + 30)
    assert await one.spend_budget("key-abc", now + 1, requests, per) == pytest.approx(29.0)


# -- wake-ups -------------------------------------------------------------------------------------


async def test_listen_wakes_on_ingest_replay_and_subscriber_changes(
    stores: Callable[[str], PostgresStore],
) -> None:
    one, two = stores("one"), stores("two")
    await asyncio.gather(one.open(), two.open())
    heard: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
    task = asyncio.create_task(two.listen(lambda kind, subject: heard.put_nowait((kind, subject))))
    try:
        assert await asyncio.wait_for(heard.get(), GENEROUS) == ("listening", "")
        await one.ingest(batch([1], ("a", "b")))
        assert {await asyncio.wait_for(heard.get(), GENEROUS) for _ in range(2)} == {
            ("due", "a"),
            ("due", "b"),
        }
        [d] = await one.claim("a", 1, T0, LEASE)
        await one.finish([result(d.id, Outcome.DEAD, status=400, token=d.token)])
        assert await one.replay("a", None, T0 + 1) == 1
        assert await asyncio.wait_for(heard.get(), GENEROUS) == ("due", "a")
        await one.set_subscriber_disabled("b", "paused", NOW)
        assert await asyncio.wait_for(heard.get(), GENEROUS) == ("subscriber", "b")
        await one.notify("config", "reload:now")
        assert await asyncio.wait_for(heard.get(), GENEROUS) == ("config", "reload:now")

        # The listening connection is dropped: it reconnects and says so.
        await pg_execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = $1 AND query LIKE 'LISTEN%'",
            one.target.application_name,
        )
        assert await asyncio.wait_for(heard.get(), GENEROUS) == ("listening", "")
        await one.ingest(batch([2], ("c",)))
        assert await asyncio.wait_for(heard.get(), GENEROUS) == ("due", "c")
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_relays_on_other_schemas_hear_nothing_of_each_other(
    stores: Callable[[str], PostgresStore],
) -> None:
    """Two relays sharing one server, each in its own schema: wake-ups stay in their schema."""
    mine = stores("one")
    await mine.open()
    schema = f"relay_test_{uuid.uuid4().hex[:12]}"
    other = PostgresStore(schema_url(schema), instance_id="other")
    await other.open()
    heard: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
    task = asyncio.create_task(
        other.listen(lambda kind, subject: heard.put_nowait((kind, subject)))
    )
    try:
        assert await asyncio.wait_for(heard.get(), GENEROUS) == ("listening", "")
        await mine.ingest(batch([1], ("theirs",)))
        await mine.notify("config", "reload:mine")
        await other.notify("config", "reload:other")  # sent after mine: arrives after it
        assert await asyncio.wait_for(heard.get(), GENEROUS) == ("config", "reload:other")
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await other.close()
        await pg_execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


# -- failures -------------------------------------------------------------------------------------


async def test_a_terminated_connection_mid_use_is_a_store_error_then_recovers(
    stores: Callable[[str], PostgresStore],
) -> None:
    store = stores("one")
    await store.open()
    await store.set_subscriber_disabled("a", None, NOW)
    schema = store.target.schema
    blocker = await asyncpg.connect(PG_DSN)
    try:
        tx = blocker.transaction()
        await tx.start()
        await blocker.execute(f"SELECT * FROM {schema}.subscriber_state FOR UPDATE")
        # The store's write now waits on the row lock, mid-statement, until it is killed.
        write = asyncio.create_task(store.set_subscriber_disabled("a", "x", NOW))
        victims: list[asyncpg.Record] = []

        async def waiting() -> bool:
            victims[:] = await blocker.fetch(
                "SELECT pid FROM pg_stat_activity WHERE application_name = $1 "
                "AND wait_event_type = 'Lock'",
                store.target.application_name,
            )
            return bool(victims)

        await wait_until_async(waiting)
        await blocker.execute("SELECT pg_terminate_backend($1)", victims[0][0])
        with pytest.raises(StoreError) as caught:
            await asyncio.wait_for(write, GENEROUS)
        assert "set subscriber state failed" in str(caught.value)
        await tx.rollback()
    finally:
        await blocker.close()

    # Every pooled connection dropped while idle: the pool replaces them.
    await pg_execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE application_name = $1 AND pid <> pg_backend_pid()",
        store.target.application_name,
    )
    for _ in range(3):
        try:
            await store.disabled_subscribers()
            break
        except StoreError:
            continue  # at most the first use of a dead connection fails
    assert await store.disabled_subscribers() == {}
    await store.ingest(batch([1], ("a",)))
    assert len(await store.claim("a", 10, T0, LEASE)) == 1


async def test_errors_never_carry_the_password(pg_url: str) -> None:
    host_port = PG_DSN.split("@", 1)[1].split("/", 1)[0]
    for url in (
        f"postgresql://nobody_here:pa55word-x@{host_port}/postgres",
        "postgresql://relay:pa55word-x@127.0.0.1:1/relay",  # nothing listens on port 1
    ):
        with pytest.raises(StoreError) as caught:
            await PostgresStore(url).open()
        for text in (str(caught.value), repr(caught.value), str(caught.value.__cause__)):
            assert "pa55word-x" not in text
        assert str(caught.value).startswith("PostgreSQL postgresql://")


async def test_prune_runs_once_at_a_time_and_in_bounded_batches(
    stores: Callable[[str], PostgresStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = stores("one")
    await store.open()
    monkeypatch.setattr(pg_sql, "PRUNE_CHUNK", 3)
    await store.ingest(batch(list(range(10)), ("a",), at=100.0))
    claimed = await store.claim("a", 100, T0, LEASE)
    await store.finish([result(d.id, Outcome.DELIVERED) for d in claimed if d.rid != 4])

    holder = await asyncpg.connect(PG_DSN)
    try:
        # Another instance on this schema holds the maintenance lock.
        await holder.execute(
            f"SET search_path TO {store.target.schema}; "
            f"SELECT pg_advisory_lock({pg_sql.MAINTENANCE_KEY})"
        )
        assert await store.prune_delivered(500.0) == 0  # another instance is pruning
        assert await store.prune_dead(10**12) == 0  # and retention waits for it too
        # A relay on another schema of the same server is not held up by it.
        elsewhere = f"relay_test_{uuid.uuid4().hex[:12]}"
        other = PostgresStore(schema_url(elsewhere), instance_id="other")
        await other.open()
        try:
            assert await other.prune_delivered(500.0) == 0  # nothing to prune, but it ran
            async with other._maintenance("check") as conn:
                assert conn is not None
        finally:
            await other.close()
            await pg_execute(f'DROP SCHEMA IF EXISTS "{elsewhere}" CASCADE')
    finally:
        await holder.close()  # its lock goes with its session
    assert await store.prune_delivered(500.0) == 9
    rows = await fetch(f"SELECT rid FROM {store.target.schema}.records")
    assert [r[0] for r in rows] == [4]
    assert (await fetch(f"SELECT count(*) FROM {store.target.schema}.attempts"))[0][0] == 0


async def test_a_released_connection_is_not_reset_by_a_round_trip(pg_url: str) -> None:
    # asyncpg's default reset (unlock_all, CLOSE ALL, UNLISTEN, RESET ALL) costs a round trip
    # per store operation; the store's pool skips it, so the backend's last statement is the
    # store's own.
    store = PostgresStore(pg_url, instance_id="solo", max_connections=1)
    await store.open()
    try:
        await store.load_cursor("acct")
        rows = await fetch(
            "SELECT query FROM pg_stat_activity WHERE application_name = $1",
            store.target.application_name,
        )
        assert [r[0] for r in rows] == [pg_sql.LOAD_CURSOR]
    finally:
        await store.close()


async def test_a_transaction_left_open_is_rolled_back_before_reuse(pg_url: str) -> None:
    store = PostgresStore(pg_url, instance_id="solo", max_connections=1)
    await store.open()
    try:
        async with store._conn("test") as conn:
            await conn.execute("BEGIN")
            await conn.execute(pg_sql.ADVANCE_CURSOR, "acct", "2024-01-01 00:00:00")
        # The same (only) connection again: outside any transaction, the write gone.
        async with store._conn("test") as conn:
            assert not conn.is_in_transaction()
        assert (await store.load_cursor("acct")).newest is None
    finally:
        await store.close()


async def test_the_maintenance_lock_never_stays_with_a_pooled_connection(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = PostgresStore(pg_url, instance_id="solo", max_connections=1)
    other = PostgresStore(pg_url, instance_id="other")
    await store.open()
    await other.open()
    try:
        with pytest.raises(RuntimeError):
            async with store._maintenance("test") as conn:
                assert conn is not None
                raise RuntimeError("the body failed")
        async with other._maintenance("check") as conn:
            assert conn is not None  # released by its holder
        # The release itself fails (here: bad SQL; in life, a cancelled await): the session
        # that holds the lock is closed, so the lock goes with it.
        monkeypatch.setattr(pg_sql, "END_MAINTENANCE", "SELECT no_such_function()")
        with pytest.raises(StoreError, match="no_such_function"):
            async with store._maintenance("test") as conn:
                assert conn is not None
        monkeypatch.undo()

        async def free() -> bool:
            async with other._maintenance("check") as conn:
                return conn is not None

        # The server ends a terminated session (and its lock) a moment after the socket closes.
        await wait_until_async(free)
        assert await store.prune_delivered(500.0) == 0  # the pool made a new connection
    finally:
        await store.close()
        await other.close()


async def test_text_postgres_cannot_hold_is_saved_anyway(
    stores: Callable[[str], PostgresStore],
) -> None:
    store = stores("one")
    await store.open()
    await store.ingest(batch([1], ("a",)))
    [d] = await store.claim("a", 1, T0, LEASE)
    await store.finish([result(d.id, Outcome.RETRY, status=None, error="nul\x00 and \ud800")])
    [row] = await fetch(f"SELECT last_error FROM {store.target.schema}.deliveries")
    # The NUL is escaped by Attempt itself (control characters, issue 8 #14); the lone
    # surrogate is what PostgreSQL cannot hold.
    assert row[0] == "nul\\x00 and ?"


async def test_delivered_rows_are_stamped_as_on_sqlite(
    stores: Callable[[str], PostgresStore],
) -> None:
    store = stores("one")
    await store.open()
    await store.ingest(batch([1, 2, 3, 4], ("a",)))
    d = await store.claim("a", 10, T0, LEASE)
    results = [
        result(d[0].id, Outcome.DELIVERED, at=T0 + 1.25),
        result(d[1].id, Outcome.DELIVERED, at=T0 + 1.5),
        result(d[2].id, Outcome.DELIVERED, at=T0 + 1.75, status=204),
        result(d[3].id, Outcome.RETRY, at=T0 + 2.5, status=503, next_at=T0 + 60),
    ]
    await store.finish(results)
    rows = await fetch(f"SELECT updated_at FROM {store.target.schema}.deliveries ORDER BY id")
    # One updated_at per delivered status (the latest of them), the others their own time.
    assert [r[0] for r in rows] == [T0 + 1.5, T0 + 1.5, T0 + 1.75, T0 + 2.5]
    attempts = await fetch(f"SELECT at FROM {store.target.schema}.attempts ORDER BY at")
    assert [r[0] for r in attempts] == [T0 + 1.25, T0 + 1.5, T0 + 1.75, T0 + 2.5]
