"""Schema versions 7 and 8 of the SQLite backend: a fresh pending delivery is in one partial
index (queue order), a retry in two (due time, and queue order for the head of the queue); the
two indexes that held every pending row are gone. A file of version 6 is upgraded and keeps its
queue; a reader refuses a file no ``relay run`` has upgraded yet; and no statement on pending
deliveries walks the whole table."""

from __future__ import annotations

import contextlib
import re
import sqlite3
from pathlib import Path

import pytest

from relay.core.errors import StoreError
from relay.core.models import Outcome
from relay.store.sqlite import held as sqlite_held
from relay.store.sqlite import pace as sqlite_pace
from relay.store.sqlite import retention as sqlite_retention
from relay.store.sqlite import sql as sqlite_backend
from relay.store.sqlite import stats as sqlite_stats
from relay.store.sqlite.reader import SqliteSnapshotReader
from relay.store.sqlite.store import SqliteStore
from tests.store.builders import LEASE, T0, batch, opened, result

V6_INDEXES = """
DROP INDEX deliveries_fresh;
DROP INDEX deliveries_retry;
DROP INDEX deliveries_retry_queue;
CREATE INDEX deliveries_due ON deliveries (subscriber, next_at) WHERE state = 'pending';
CREATE INDEX deliveries_queue ON deliveries (subscriber, id) WHERE state = 'pending';
PRAGMA user_version = 6;
"""


def indexes(path: Path) -> set[str]:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        sql = "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'deliveries'"
        return {name for (name,) in conn.execute(sql)}


async def version_6_file(path: Path) -> None:
    """A state file as version 6 left it: a fresh delivery for rid 1, a retry for rid 2 due at
    T0 + 100 (for subscriber 'crm'), then the pending indexes of that version."""
    async with opened(SqliteStore(str(path))) as store:
        await store.ingest(batch([1, 2], ("crm",)))
        first, second = await store.claim("crm", 2, T0, LEASE)
        await store.finish([result(second.id, Outcome.RETRY, status=500, next_at=T0 + 100)])
        await store.release([first.id])
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.executescript(V6_INDEXES)


async def test_a_version_6_file_is_upgraded_and_keeps_its_queue_and_retries(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.db"
    await version_6_file(path)
    assert {"deliveries_due", "deliveries_queue"} <= indexes(path)
    async with opened(SqliteStore(str(path))) as store:
        assert await store.due_times() == {"crm": T0}
        head = await store.claim_head("crm", T0, LEASE)
        assert head is not None and head.rid == 1  # queue order: the fresh one is older
        await store.release([head.id])
        [first] = await store.claim("crm", 10, T0 + 1, LEASE)
        assert first.rid == 1
        await store.finish([result(first.id, Outcome.DELIVERED)])
        assert [d.rid for d in await store.claim("crm", 10, T0 + 100, LEASE)] == [2]
    found = indexes(path)
    assert {"deliveries_fresh", "deliveries_retry", "deliveries_retry_queue"} <= found
    assert not {"deliveries_due", "deliveries_queue"} & found
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(sqlite_backend.MIGRATIONS)
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


async def test_a_reader_refuses_a_file_that_no_relay_run_has_upgraded(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    await version_6_file(path)
    reader = SqliteSnapshotReader(str(path))
    with pytest.raises(StoreError) as caught:
        await reader.open()
    message = str(caught.value)
    assert "schema version 6, from an older relay" in message
    assert "`relay run` upgrades it" in message
    async with opened(SqliteStore(str(path))):
        pass  # the owner upgrades it
    async with opened(SqliteSnapshotReader(str(path))) as upgraded:
        assert (await upgraded.stats()).subscribers["crm"].pending == 2


async def test_every_pending_row_is_in_exactly_one_of_the_two_indexes(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    async with opened(SqliteStore(str(path))) as store:
        await store.ingest(batch([1, 2, 3, 4], ("a", "b")))
        claimed = await store.claim("a", 3, T0, LEASE)
        await store.finish(
            [
                result(claimed[0].id, Outcome.DELIVERED),
                result(claimed[1].id, Outcome.RETRY, status=503, next_at=T0 + 5),
                result(claimed[2].id, Outcome.DEAD, status=400),
            ]
        )
    with contextlib.closing(sqlite3.connect(path)) as conn:

        def ids(index: str, where: str) -> set[int]:
            sql = f"SELECT id FROM deliveries INDEXED BY {index} WHERE {where}"
            return {i for (i,) in conn.execute(sql)}

        fresh = ids("deliveries_fresh", "state = 'pending' AND attempts = 0")
        retry = ids("deliveries_retry", "state = 'pending' AND attempts > 0")
        queued = ids("deliveries_retry_queue", "state = 'pending' AND attempts > 0")
        pending = {i for (i,) in conn.execute("SELECT id FROM deliveries WHERE state = 'pending'")}
    assert fresh | retry == pending and not fresh & retry and queued == retry
    assert len(fresh) == 5 and retry == {claimed[1].id}


async def test_the_head_is_the_oldest_retry_whatever_its_due_time(tmp_path: Path) -> None:
    """Three retries due in the reverse of their queue order, behind them fresh deliveries: the
    head is the oldest delivery of all, the first retry, though it is due last."""
    path = tmp_path / "state.db"
    async with opened(SqliteStore(str(path))) as store:
        await store.ingest(batch([1, 2, 3, 4, 5], ("a",)))
        first, second, third = await store.claim("a", 3, T0, LEASE)
        await store.finish(
            [
                result(first.id, Outcome.RETRY, status=503, next_at=T0 + 300),
                result(second.id, Outcome.RETRY, status=503, next_at=T0 + 200),
                result(third.id, Outcome.RETRY, status=503, next_at=T0 + 100),
            ]
        )
        assert await store.head_due("a") == T0 + 300
        assert await store.claim_head("a", T0 + 299, LEASE) is None  # the head is not due
        head = await store.claim_head("a", T0 + 300, LEASE)
        assert head is not None and head.rid == 1


# Every statement that reads pending deliveries by subscriber, with parameters of its shape.
STATEMENTS = {
    "claim": (sqlite_backend.SQL_CLAIM, {"sub": "a", "now": T0, "limit": 10, "held": "[]"}),
    "oldest unheld": (sqlite_held.SQL_OLDEST_UNHELD, ("a", "[]")),
    "head": (sqlite_pace.SQL_HEAD, ("a", "[]")),
    "due times": (sqlite_pace.SQL_DUE_TIMES, ()),
    "requeue": (sqlite_pace.SQL_REQUEUE, ("a", "[]")),
    "stats": (sqlite_stats.SQL_STATE_COUNTS, ()),
    **{
        f"purge {state}": (sql, ("a", 10))
        for state, sql in sqlite_retention.SQL_PURGE_STATE.items()
    },
}


async def full_walks(tmp_path: Path, sql: str, params: object) -> tuple[list[str], list[str]]:
    """The query plan of ``sql``, and its steps that walk the deliveries table itself."""
    path = tmp_path / "state.db"
    async with opened(SqliteStore(str(path))) as store:
        await store.ingest(batch(list(range(1, 50)), ("a", "b")))
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("ANALYZE")  # the planner knows the table is not tiny
        plan = [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, params)]
    return plan, [line for line in plan if re.match(r"SCAN (deliveries|d|f)\b(?!.*INDEX)", line)]


@pytest.mark.parametrize("name", sorted(STATEMENTS))
async def test_no_statement_on_pending_deliveries_walks_the_whole_table(
    tmp_path: Path, name: str
) -> None:
    plan, full = await full_walks(tmp_path, *STATEMENTS[name])
    assert plan and not full, plan


async def test_the_head_takes_one_step_in_each_queue_order(tmp_path: Path) -> None:
    plan, _ = await full_walks(tmp_path, *STATEMENTS["head"])
    assert any("deliveries_fresh" in line for line in plan), plan
    assert any("deliveries_retry_queue" in line for line in plan), plan
    assert not any(re.search(r"deliveries_retry\b(?!_)", line) for line in plan), plan


async def test_the_plan_check_sees_a_walk_of_the_whole_table(tmp_path: Path) -> None:
    # "pending" alone implies neither partial index's condition: SQLite reads every row.
    sql = "SELECT id FROM deliveries WHERE subscriber = ? AND state = 'pending'"
    _, full = await full_walks(tmp_path, sql, ("a",))
    assert full
