"""Store hardening: private state files (issue 8 §3 #4), de-duplicated and pruned quarantine
(#7), retention of dead letters and orphaned deliveries (#8). Real SQLite files in tmp dirs;
every time is an explicit number passed to the store."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import stat
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from relay.core.models import CallRecord, IngestBatch, Orphan, Outcome, Quarantined
from relay.store import Store
from relay.store.sqlite import sql as sqlite_sql
from relay.store.sqlite.retention import CHUNK
from relay.store.sqlite.store import SqliteStore
from tests.pg import PG_DSN, require_postgres, schema_url
from tests.store.builders import LEASE, NOW, batch, opened, result

T0 = 1_000.0


@pytest.fixture
def umask_022() -> Iterator[None]:
    """The common default umask, which would make new files world-readable."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def record(rid: int) -> CallRecord:
    return CallRecord(rid, "2025-07-01 14:53:43", b'{"rid":%d}' % rid)


async def test_state_file_and_companions_are_created_private(
    tmp_path: Path, umask_022: None
) -> None:
    path = tmp_path / "state.db"
    s = SqliteStore(str(path))
    await s.open()
    try:
        await s.ingest(IngestBatch("acct", [record(1)], ["a"], T0, None))
        files = [path, Path(f"{path}-wal"), Path(f"{path}-shm"), Path(f"{path}.lock")]
        assert {f.name: mode(f) for f in files} == {f.name: 0o600 for f in files}
    finally:
        await s.close()


async def test_a_world_readable_state_file_is_tightened_on_open(
    tmp_path: Path, umask_022: None
) -> None:
    path = tmp_path / "state.db"
    async with opened(SqliteStore(str(path))) as s:
        await s.ingest(IngestBatch("acct", [record(1)], ["a"], T0, None))
    for f in (path, Path(f"{path}.lock")):
        f.chmod(0o644)  # as an older relay left it
    async with opened(SqliteStore(str(path))):
        for f in (path, Path(f"{path}-wal"), Path(f"{path}-shm"), Path(f"{path}.lock")):
            assert mode(f) == 0o600, f.name


# -- #7: quarantine de-duplicated by content, pruned by when last seen (both backends) ------------

BAD = Quarantined(b'{"rid":"R-17","call_timestamp":"soon"}', "rid not an integer")


def quarantined(at: float, *items: Quarantined, account: str = "acct") -> IngestBatch:
    return batch([], account=account, at=at, quarantined=list(items))


async def test_a_bad_record_is_quarantined_once_across_restarts(
    store_factory: Callable[[], Store],
) -> None:
    for restart in range(3):
        async with opened(store_factory()) as s:
            await s.ingest(quarantined(T0 + restart, BAD))
            await s.ingest(quarantined(T0 + restart + 0.5, BAD))
            assert (await s.stats()).quarantined == 1
    async with opened(store_factory()) as s:
        await s.ingest(quarantined(T0 + 9, BAD, account="other"))  # another account's copy
        other = Quarantined(BAD.raw + b" ", BAD.reason)
        await s.ingest(quarantined(T0 + 9, other))
        assert (await s.stats()).quarantined == 3


async def test_quarantine_is_pruned_by_when_a_record_was_last_seen(store: Store) -> None:
    await store.ingest(quarantined(T0, BAD))
    await store.ingest(quarantined(T0 + 100, BAD))  # served again: still wanted
    assert await store.prune_quarantine(T0 + 50) == 0
    assert (await store.stats()).quarantined == 1
    assert await store.prune_quarantine(T0 + 101) == 1
    assert (await store.stats()).quarantined == 0


# -- #8: dead letters and orphaned deliveries (both backends) --------------------------------------


async def dead_letters(store: Store, rids: list[int], at: float) -> None:
    await store.ingest(batch(rids, ("a",)))
    claimed = await store.claim("a", len(rids), T0, LEASE)
    await store.finish([result(d.id, Outcome.DEAD, at=at, status=500) for d in claimed])


async def test_dead_letters_are_pruned_after_their_retention(store: Store) -> None:
    await dead_letters(store, [1, 2], at=2_000.0)
    assert await store.prune_dead(2_000.0) == 0  # died at 2000: not before it
    assert len(await store.dead_letters(None, 10)) == 2
    assert await store.prune_dead(2_000.5) == 2
    assert await store.dead_letters(None, 10) == []
    # Their records have no delivery left and go with the next prune of delivered records.
    assert await store.prune_delivered(NOW) == 2


async def test_dead_letters_are_pruned_in_bounded_chunks(store: Store) -> None:
    await dead_letters(store, list(range(1, 2 * CHUNK + 2)), at=2_000.0)
    assert await store.prune_dead(3_000.0) == 2 * CHUNK + 1
    assert await store.dead_letters(None, 10) == []


async def test_orphans_are_stamped_once_reported_and_purged_after_retention(
    store: Store,
) -> None:
    await store.ingest(batch([1, 2], ("a", "gone")))
    assert await store.find_orphans(["a"], 5_000.0) == [Orphan("gone", 5_000.0, 2)]
    # Found again later: still counted from when it was first found.
    assert await store.find_orphans(["a"], 6_000.0) == [Orphan("gone", 5_000.0, 2)]
    assert (await store.stats()).subscribers["gone"].orphaned_since == 5_000.0
    assert await store.purge_orphans(5_000.0) == 0  # orphaned at 5000: not before it
    assert await store.purge_orphans(5_001.0) == 2
    queues = (await store.stats()).subscribers
    assert queues["a"].pending == 2 and queues["a"].orphaned_since is None
    assert await store.find_orphans(["a"], 7_000.0) == []
    assert "gone" not in (await store.stats()).subscribers


async def test_a_subscriber_configured_again_keeps_its_deliveries(store: Store) -> None:
    await store.ingest(batch([1, 2], ("a", "b")))
    assert [o.subscriber for o in await store.find_orphans(["a"], 5_000.0)] == ["b"]
    assert await store.find_orphans(["a", "b"], 6_000.0) == []
    assert (await store.stats()).subscribers["b"].orphaned_since is None
    assert await store.purge_orphans(NOW) == 0
    assert len(await store.claim("b", 10, T0, LEASE)) == 2


async def test_a_disabled_subscriber_removed_from_the_config_is_an_orphan_too(
    store: Store,
) -> None:
    await store.ingest(batch([1], ("a", "b")))
    await store.set_subscriber_disabled("b", "410 Gone", 4_000.0)
    assert [o.subscriber for o in await store.find_orphans(["a"], 5_000.0)] == ["b"]
    assert await store.purge_orphans(NOW) == 1
    assert await store.find_orphans(["a"], 7_000.0) == []
    # The 410 is still remembered, for if it is configured again.
    assert await store.disabled_subscribers() == {"b": "410 Gone"}


# -- schema migrations keep what was quarantined, once ---------------------------------------------


def test_sqlite_version_2_file_migrates_and_dedupes_its_quarantine(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db:
        for step in sqlite_sql.MIGRATIONS[:2]:
            for statement in step.split(";"):
                db.execute(statement)
        db.execute("PRAGMA user_version = 2")
        for at in (1.0, 2.0, 3.0):  # one bad record kept on each of three restarts
            db.execute(
                "INSERT INTO quarantine (account, raw, reason, at) VALUES (?, ?, ?, ?)",
                ("acct", BAD.raw, BAD.reason, at),
            )
        db.execute(
            "INSERT INTO quarantine (account, raw, reason, at) VALUES ('acct', x'00ff', 'x', 4)"
        )

    async def check() -> None:
        async with opened(SqliteStore(str(path))) as s:
            assert (await s.stats()).quarantined == 2
            await s.ingest(quarantined(T0, BAD))
            assert (await s.stats()).quarantined == 2

    asyncio.run(check())
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == len(sqlite_sql.MIGRATIONS)
        rows = db.execute("SELECT at, last_at, times FROM quarantine ORDER BY id").fetchall()
    assert rows == [(1.0, T0, 4), (4.0, 4.0, 1)]


async def test_postgres_version_1_schema_migrates_and_dedupes_its_quarantine() -> None:
    require_postgres()
    import asyncpg

    from relay.store.postgres import PostgresStore
    from relay.store.postgres import migrations as pg_migrations

    schema = f"relay_test_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(PG_DSN)
    try:
        await conn.execute(f'CREATE SCHEMA "{schema}"')
        await conn.execute(f'SET search_path TO "{schema}"')
        await conn.execute(pg_migrations.SCHEMA_V1)
        await conn.execute("CREATE TABLE relay_schema (version integer NOT NULL)")
        await conn.execute("INSERT INTO relay_schema VALUES (1)")
        for at in (1.0, 2.0, 3.0):
            await conn.execute(
                "INSERT INTO quarantine (account, raw, reason, at) VALUES ($1, $2, $3, $4)",
                "acct",
                BAD.raw,
                BAD.reason,
                at,
            )
        async with opened(PostgresStore(schema_url(schema))) as s:
            assert (await s.stats()).quarantined == 1
            await s.ingest(quarantined(T0, BAD))  # the digest SQL computed is the relay's
            assert (await s.stats()).quarantined == 1
        rows = await conn.fetch("SELECT at, last_at, times FROM quarantine")
        assert [tuple(r) for r in rows] == [(1.0, T0, 4)]
    finally:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await conn.close()


async def test_one_maintenance_pass_applies_every_retention(store: Store) -> None:
    from relay.config.schema import Settings
    from relay.runtime.maintenance import maintain

    day = 86_400.0
    settings = Settings.model_validate(
        {
            "upstream": {"accounts": [{"name": "acct", "api_key": "key-0123456789abcdef"}]},
            "subscribers": [
                {
                    "name": "a",
                    "url": "http://127.0.0.1:9/",
                    "secret": "whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
                }
            ],
        }
    )
    await dead_letters(store, [1], at=T0)  # dead at T0
    await store.ingest(batch([2], ("a", "gone")))  # "gone" is not configured
    await store.ingest(quarantined(T0, BAD))
    first = await maintain(store, settings, T0 + day)
    assert (first.dead, first.quarantined, first.orphaned) == (0, 0, 0)
    assert first.orphans == [Orphan("gone", T0 + day, 1)]
    later = await maintain(store, settings, T0 + 31 * day)
    assert (later.dead, later.quarantined, later.orphaned) == (1, 1, 1)
    assert later.delivered == 1  # the dead letter's record, with nothing left to deliver
    assert (await store.stats()).subscribers["a"].pending == 1
