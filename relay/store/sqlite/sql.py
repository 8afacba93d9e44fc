"""The SQL of the SQLite backend: the synchronous functions that each run one transaction on
one of the store's threads (see :mod:`relay.store.sqlite.store`); the schema is in
:mod:`relay.store.sqlite.schema`.

Every function here takes the connection first and is called only from the thread that owns
it: the writer's, except :func:`claim` and :func:`next_due`, which run on the claim thread
(:mod:`relay.store.sqlite.claims`) and only read.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Sequence
from typing import Any

import orjson

from relay.core.models import (
    DeadLetter,
    Delivery,
    StoredRecord,
)
from relay.store.bodies import BodyCache
from relay.store.sqlite.finish import finish
from relay.store.sqlite.held import SQL_OLDEST_UNHELD, Held
from relay.store.sqlite.ingest import ingest, load_cursor, load_cursors
from relay.store.sqlite.schema import (
    CHUNK,
    MIGRATIONS,
    SCHEMA_V1,
    SCHEMA_V2,
    SCHEMA_V3,
    SCHEMA_V4,
    SCHEMA_V5,
    SCHEMA_V6,
    SCHEMA_V7,
    SCHEMA_V8,
    SYNCHRONOUS_MODES,
    _chunks,
    _marks,
    _reading,
    _transaction,
    check_current,
    check_ours,
    configure,
    execute,
    is_full,
    migrate,
    recover,
)
from relay.store.sqlite.stats import stats

# Re-exported: the store and the tests reach these through this module.
__all__ = [
    "CHUNK",
    "MIGRATIONS",
    "SCHEMA_V1",
    "SCHEMA_V2",
    "SCHEMA_V3",
    "SCHEMA_V4",
    "SCHEMA_V5",
    "SCHEMA_V6",
    "SCHEMA_V7",
    "SCHEMA_V8",
    "SYNCHRONOUS_MODES",
    "_reading",
    "_transaction",
    "check_current",
    "check_ours",
    "configure",
    "execute",
    "finish",
    "ingest",
    "is_full",
    "load_cursor",
    "load_cursors",
    "migrate",
    "recover",
    "stats",
]

log = logging.getLogger(__name__)

PRUNE_CHUNK = 2000  # records examined per prune transaction, so claims interleave with it


SQL_MARK_SWEPT = """
INSERT INTO cursors (account, last_sweep, sweep_anchor) VALUES (?, ?, ?)
ON CONFLICT (account) DO UPDATE
SET last_sweep = excluded.last_sweep, sweep_anchor = excluded.sweep_anchor
"""
SQL_PRUNE_SEEN = "DELETE FROM seen WHERE account = ? AND call_ts < ? AND seen_at < ?"
SQL_ACCOUNT_STATUS = """
INSERT INTO account_status (account, status, error, updated_at) VALUES (?, ?, ?, ?)
ON CONFLICT (account) DO UPDATE
SET status = excluded.status, error = excluded.error, updated_at = excluded.updated_at
"""
SQL_SUBSCRIBER_STATE = """
INSERT INTO subscriber_state (subscriber, disabled_reason, updated_at) VALUES (?, ?, ?)
ON CONFLICT (subscriber) DO UPDATE
SET disabled_reason = excluded.disabled_reason, updated_at = excluded.updated_at
"""

# -- ingest -------------------------------------------------------------------------------------


# -- delivery -----------------------------------------------------------------------------------

# Batches are single statements over one bound JSON array, not a statement per row: sqlite3
# releases the GIL around every step, and each time the store's thread wants it back it waits
# for the busy event loop to let go. A claim or finish of a hundred rows took a hundred such
# waits; now it takes a handful, whatever its size.
#
# Due pending rows in due order that no live claim holds (claims are in memory: see
# relay.store.sqlite.held), walking the partial indexes 'deliveries_fresh' and 'deliveries_retry'
# and stopping at :limit. One row comes back: the claimed deliveries as JSON, each with its rank
# in due order (a window function: SQLite 3.25 or later), and what names its record's body (id,
# rid, received_at).
# The held ids are a JSON array, made into a lookup table once per statement.
# The fresh ones (never tried, due since they were queued) come in queue order from
# 'deliveries_fresh', the retries by due time from 'deliveries_retry', the first :limit of each,
# merged. Queue order is a fresh delivery's due order (it is due from when its record was
# stored), except after the wall clock went back, and for a replayed dead letter (it keeps its
# place in the queue, due from the replay): those can come ahead of deliveries due before them.
SQL_CLAIM = """
SELECT json_group_array(
    json_array(due.rank, d.id, d.attempts, r.account, r.rid, r.id, r.received_at))
FROM (
    SELECT id, row_number() OVER (ORDER BY next_at, id) AS rank FROM (
        SELECT id, next_at FROM (
            SELECT id, next_at FROM deliveries INDEXED BY deliveries_fresh
            WHERE subscriber = :sub AND state = 'pending' AND attempts = 0 AND next_at <= :now
                AND id NOT IN (SELECT value FROM json_each(:held))
            ORDER BY id LIMIT :limit)
        UNION ALL
        SELECT id, next_at FROM (
            SELECT id, next_at FROM deliveries INDEXED BY deliveries_retry
            WHERE subscriber = :sub AND state = 'pending' AND attempts > 0 AND next_at <= :now
                AND id NOT IN (SELECT value FROM json_each(:held))
            ORDER BY next_at, id LIMIT :limit)
        ORDER BY next_at, id LIMIT :limit)
) AS due
JOIN deliveries AS d ON d.id = due.id
JOIN records AS r ON r.id = d.record_id
"""

# The bodies of the given records in one row: their ids and lengths as JSON, and the bodies
# back to back (both aggregates see the rows in the same order, whatever that order is).
SQL_BODIES = """
SELECT json_group_array(json_array(id, length(body))), CAST(group_concat(body, '') AS BLOB)
FROM records WHERE id IN (SELECT value FROM json_each(?))
"""
BODIES_AT_ONCE = 32 * 1024 * 1024  # above this a claim reads its bodies row by row

# The first due time among the rows no claim holds: one statement with the stats overlay.
SQL_NEXT_DUE = SQL_OLDEST_UNHELD


def _disabled_reason(conn: sqlite3.Connection, subscriber: str) -> str | None:
    sql = "SELECT disabled_reason FROM subscriber_state WHERE subscriber = ?"
    row = conn.execute(sql, (subscriber,)).fetchone()
    return None if row is None else row[0]


def claim(
    conn: sqlite3.Connection,
    subscriber: str,
    limit: int,
    now: float,
    lease: float,
    cache: BodyCache,
    held: Held,
) -> list[Delivery]:
    """Lease up to ``limit`` due deliveries (in ``held``: nothing is written). Bodies come from
    ``cache`` when a recent claim (of any subscriber) read them, so one record's body exists
    once however many claim it."""
    if limit <= 0:
        return []
    # The held ids are read before the snapshot begins (see relay.store.sqlite.held): a result
    # stored meanwhile is then either still held here or already in the snapshot.
    hold = orjson.dumps(held.live(subscriber, now)).decode()
    with _reading(conn):
        if _disabled_reason(conn, subscriber) is not None:
            return []
        params = {"sub": subscriber, "now": now, "limit": limit, "held": hold}
        rows = sorted(orjson.loads(conn.execute(SQL_CLAIM, params).fetchone()[0]))
        if not rows:
            return []
        held.take(subscriber, (row[1] for row in rows), now + lease)
        # Ids alone could name a different body: SQLite reuses the id of a deleted record.
        keys = {row[5]: (row[5], row[4], row[6]) for row in rows}
        bodies: dict[int, bytes] = {}
        missing: list[int] = []
        for rec, key in keys.items():
            body = cache.get(key)
            if body is None:
                missing.append(rec)
            else:
                bodies[rec] = body
        if missing:
            for rec, body in _bodies(conn, missing).items():
                bodies[rec] = cache.put(keys[rec], body)
    return [
        Delivery(
            id=i,
            subscriber=subscriber,
            account=account,
            rid=rid,
            body=bodies[rec],
            attempts=n,
        )
        for _, i, n, account, rid, rec, _ in rows
    ]


def _bodies(conn: sqlite3.Connection, record_ids: list[int]) -> dict[int, bytes]:
    """The bodies of ``record_ids``, read in one step unless they are unusually large."""
    meta, blob = conn.execute(SQL_BODIES, (orjson.dumps(record_ids).decode(),)).fetchone()
    lengths = orjson.loads(meta)
    if sum(n for _, n in lengths) > BODIES_AT_ONCE:
        sql = f"SELECT id, body FROM records WHERE id IN ({_marks(len(record_ids))})"
        return {i: body for chunk in _chunks(record_ids) for i, body in conn.execute(sql, chunk)}
    bodies: dict[int, bytes] = {}
    view = memoryview(blob or b"")
    at = 0
    for record_id, n in lengths:
        bodies[record_id] = bytes(view[at : at + n])
        at += n
    return bodies


def next_due(conn: sqlite3.Connection, subscriber: str, held: Held) -> float | None:
    """When ``subscriber`` has something to claim next: its first unheld due time, or when a
    held claim runs out, whichever is sooner."""
    # A disabled subscriber has nothing due until it is re-enabled (which wakes it anyway);
    # answering "now" would make its claim loop spin.
    hold = orjson.dumps(held.ids(subscriber)).decode()  # before the file is read, as in claim
    soonest = held.soonest(subscriber)
    if _disabled_reason(conn, subscriber) is not None:
        return None
    (at,) = conn.execute(SQL_NEXT_DUE, (subscriber, hold)).fetchone()
    times = (None if at is None else float(at), soonest)
    return min((t for t in times if t is not None), default=None)


# -- operations ---------------------------------------------------------------------------------


def disabled_subscribers(conn: sqlite3.Connection) -> dict[str, str]:
    sql = "SELECT subscriber, disabled_reason FROM subscriber_state WHERE disabled_reason NOTNULL"
    return {row[0]: row[1] for row in conn.execute(sql)}


def dead_letters(conn: sqlite3.Connection, subscriber: str | None, limit: int) -> list[DeadLetter]:
    where = "" if subscriber is None else "AND d.subscriber = :sub"
    sql = (
        "SELECT d.id, d.subscriber, r.account, r.rid, d.attempts, d.last_error, d.updated_at "
        "FROM deliveries AS d INDEXED BY deliveries_dead JOIN records AS r ON r.id = d.record_id "
        f"WHERE d.state = 'dead' {where} ORDER BY d.updated_at DESC, d.id DESC LIMIT :limit"
    )
    rows = conn.execute(sql, {"sub": subscriber, "limit": limit})
    return [DeadLetter(*row) for row in rows]


def recent_records(conn: sqlite3.Connection, limit: int) -> list[StoredRecord]:
    sql = "SELECT account, rid, body FROM records ORDER BY id DESC LIMIT ?"
    return [StoredRecord(*row) for row in conn.execute(sql, (limit,))]


def replay(
    conn: sqlite3.Connection, subscriber: str | None, ids: Sequence[int] | None, now: float
) -> int:
    sql = (
        "UPDATE deliveries SET state = 'pending', attempts = 0, next_at = ?, lease_until = NULL, "
        "updated_at = ? WHERE state = 'dead'"
    )
    params: tuple[Any, ...] = (now, now)
    if subscriber is not None:
        sql += " AND subscriber = ?"
        params += (subscriber,)
    with _transaction(conn):
        if ids is None:
            return conn.execute(sql, params).rowcount
        return sum(
            conn.execute(f"{sql} AND id IN ({_marks(len(chunk))})", (*params, *chunk)).rowcount
            for chunk in _chunks(list(ids))
        )


def prune_chunk(
    conn: sqlite3.Connection, before: float, after: tuple[float, int]
) -> tuple[int, tuple[float, int] | None]:
    """Delete the fully delivered records among the next PRUNE_CHUNK received before ``before``
    (keyset order after ``after``). Returns how many, and where to continue (None: done)."""
    with _transaction(conn):
        candidates = conn.execute(
            "SELECT id, received_at FROM records WHERE received_at < ? "
            "AND (received_at, id) > (?, ?) ORDER BY received_at, id LIMIT ?",
            (before, *after, PRUNE_CHUNK),
        ).fetchall()
        if not candidates:
            return 0, None
        # Deliveries and their attempts follow through ON DELETE CASCADE.
        pruned = conn.executemany(
            "DELETE FROM records WHERE id = ? AND NOT EXISTS (SELECT 1 FROM deliveries "
            "WHERE record_id = records.id AND state != 'delivered')",
            [(row[0],) for row in candidates],
        ).rowcount
    last = candidates[-1]
    return pruned, (None if len(candidates) < PRUNE_CHUNK else (last[1], last[0]))
