"""The SQL of the SQLite backend: schema, migrations, and the synchronous functions that each
run one transaction on the store's worker thread (see :mod:`relay.store.sqlite.store`).

Every function here takes the connection first and is called only from that one thread.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import sqlite3
from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

import orjson

from relay.core.errors import StoreError
from relay.core.models import (
    AccountCursor,
    CallRecord,
    DeadLetter,
    Delivery,
    Finished,
    IngestBatch,
    IngestResult,
    Outcome,
    StoredRecord,
    quarantine_digest,
)
from relay.core.status import AccountState, QueueCounts, StoreStats
from relay.store.bodies import BodyCache

log = logging.getLogger(__name__)

T = TypeVar("T")

# Version 1 of the schema. Statements are separated by ";" (none may contain one).
SCHEMA_V1 = """
CREATE TABLE cursors (
    account     TEXT PRIMARY KEY,
    newest      TEXT,
    last_sweep  REAL
);
CREATE TABLE seen (
    account  TEXT NOT NULL,
    rid      INTEGER NOT NULL,
    call_ts  TEXT NOT NULL,
    seen_at  REAL NOT NULL,
    PRIMARY KEY (account, rid)
) WITHOUT ROWID;
CREATE INDEX seen_age ON seen (account, call_ts);
CREATE TABLE records (
    id           INTEGER PRIMARY KEY,
    account      TEXT NOT NULL,
    rid          INTEGER NOT NULL,
    call_ts      TEXT NOT NULL,
    received_at  REAL NOT NULL,
    body         BLOB NOT NULL
);
CREATE INDEX records_received ON records (received_at);
CREATE TABLE deliveries (
    id           INTEGER PRIMARY KEY,
    record_id    INTEGER NOT NULL REFERENCES records (id) ON DELETE CASCADE,
    subscriber   TEXT NOT NULL,
    state        TEXT NOT NULL CHECK (state IN ('pending', 'inflight', 'delivered', 'dead')),
    attempts     INTEGER NOT NULL DEFAULT 0,
    next_at      REAL NOT NULL,
    lease_until  REAL,
    last_status  INTEGER,
    last_error   TEXT,
    updated_at   REAL NOT NULL
);
-- One partial index per state, each as small as that state: claim walks 'deliveries_due' in
-- order and stops after ``limit`` rows, expired leases (rare) are found through
-- 'deliveries_leased', and stats counts every state from an index without sorting the table.
CREATE INDEX deliveries_due ON deliveries (subscriber, next_at) WHERE state = 'pending';
CREATE INDEX deliveries_leased ON deliveries (subscriber, lease_until) WHERE state = 'inflight';
CREATE INDEX deliveries_done ON deliveries (subscriber) WHERE state = 'delivered';
CREATE INDEX deliveries_dead ON deliveries (subscriber, updated_at) WHERE state = 'dead';
CREATE INDEX deliveries_record ON deliveries (record_id, state);
CREATE TABLE attempts (
    delivery_id  INTEGER NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
    at           REAL NOT NULL,
    status       INTEGER,
    error        TEXT,
    latency_ms   REAL NOT NULL,
    response     TEXT NOT NULL
);
CREATE INDEX attempts_delivery ON attempts (delivery_id);
CREATE TABLE quarantine (
    id       INTEGER PRIMARY KEY,
    account  TEXT NOT NULL,
    raw      BLOB NOT NULL,
    reason   TEXT NOT NULL,
    at       REAL NOT NULL
);
CREATE TABLE account_status (
    account     TEXT PRIMARY KEY,
    status      TEXT NOT NULL,
    error       TEXT,
    updated_at  REAL NOT NULL
);
CREATE TABLE subscriber_state (
    subscriber       TEXT PRIMARY KEY,
    disabled_reason  TEXT,
    updated_at       REAL NOT NULL
)
"""

# Version 2: the sweep anchor is kept (it lived in memory, so the first sweep after a restart
# read back from the current cursor and could miss a record written late behind the old one).
SCHEMA_V2 = "ALTER TABLE cursors ADD COLUMN sweep_anchor TEXT"

# Version 3: each API key's budget bucket (see relay.store.sqlite.ledger), so that a restarted
# relay does not spend again a window its previous process already spent (it lived in memory).
# ``key_id`` is a digest of the key, never the key.
SCHEMA_V3 = """
CREATE TABLE budget_buckets (
    key_id        TEXT PRIMARY KEY,
    level         REAL NOT NULL,
    at            REAL NOT NULL,
    paused_until  REAL
)
"""

# Version 4 (issue 8 #7, #8): a quarantined record is kept once per account and content (its
# digest), with when it was first and last seen, so that a restart does not keep it again and
# retention can forget it; a subscriber no longer configured is stamped with when that was
# found; dead letters are found by age. Self-contained: it needs nothing of version 3.
SCHEMA_V4 = """
CREATE TABLE quarantine_v4 (
    id       INTEGER PRIMARY KEY,
    account  TEXT NOT NULL,
    digest   BLOB NOT NULL UNIQUE,
    raw      BLOB NOT NULL,
    reason   TEXT NOT NULL,
    at       REAL NOT NULL,
    last_at  REAL NOT NULL,
    times    INTEGER NOT NULL DEFAULT 1
);
INSERT INTO quarantine_v4 (account, digest, raw, reason, at, last_at)
SELECT account, relay_quarantine_digest(account, raw), raw, reason, at, at
FROM quarantine WHERE true ORDER BY id
ON CONFLICT (digest) DO UPDATE
SET last_at = max(last_at, excluded.last_at), times = times + 1;
DROP TABLE quarantine;
ALTER TABLE quarantine_v4 RENAME TO quarantine;
CREATE INDEX quarantine_seen ON quarantine (last_at);
CREATE INDEX deliveries_dead_age ON deliveries (updated_at) WHERE state = 'dead';
ALTER TABLE subscriber_state ADD COLUMN orphaned_at REAL
"""

# Version 5, self-contained: each subscriber's circuit breaker and 429 pause survive a restart,
# and the head of a queue (oldest pending delivery, for fifo ordering and an open circuit's
# probe) is one index step instead of a sort of the whole backlog.
SCHEMA_V5 = """
CREATE TABLE subscriber_circuit (
    subscriber     TEXT PRIMARY KEY,
    failures       INTEGER NOT NULL,
    failing_since  REAL,
    opened_at      REAL,
    paused_until   REAL,
    updated_at     REAL NOT NULL
);
CREATE INDEX deliveries_queue ON deliveries (subscriber, id) WHERE state = 'pending'
"""

# MIGRATIONS[n] takes a file from ``PRAGMA user_version`` n to n + 1. Append, never edit.
MIGRATIONS: tuple[str, ...] = (SCHEMA_V1, SCHEMA_V2, SCHEMA_V3, SCHEMA_V4, SCHEMA_V5)

SYNCHRONOUS_MODES = ("OFF", "NORMAL", "FULL", "EXTRA")
CHUNK = 500  # ids per "IN (…)" list: far below SQLite's 32,766 host parameters
PRUNE_CHUNK = 2000  # records examined per prune transaction, so claims interleave with it
GONE_REASON = "410 Gone"
_SQLITE_FULL = 13

_STATE_AFTER = {
    Outcome.DELIVERED: "delivered",
    Outcome.RETRY: "pending",
    Outcome.DEAD: "dead",
    Outcome.GONE: "pending",  # kept for when the subscriber is re-enabled
}


# -- opening ------------------------------------------------------------------------------------


def configure(conn: sqlite3.Connection, synchronous: str) -> None:
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        log.warning("state file cannot use WAL (journal mode %s); writes will be slower", mode)
    conn.execute(f"PRAGMA synchronous = {synchronous}")  # validated against SYNCHRONOUS_MODES
    conn.execute("PRAGMA busy_timeout = 5000")  # only ops tools ever share the file
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA cache_size = -32768")  # 32 MiB
    conn.execute("PRAGMA journal_size_limit = 67108864")  # truncate a big WAL back to 64 MiB


def check_ours(conn: sqlite3.Connection, path: str) -> None:
    """Refuse, with reads only, a file from a newer relay or from some other program."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > len(MIGRATIONS):
        raise StoreError(
            f"state file {path} has schema version {version}, newer than this relay "
            f"understands ({len(MIGRATIONS)}); upgrade the relay"
        )
    if version == 0 and conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchone():
        raise StoreError(f"state file {path} is an SQLite file of some other program")


def migrate(conn: sqlite3.Connection, path: str) -> None:
    """Bring the schema to the newest version, all steps in one transaction."""
    # Version 4 computes the digest of quarantined rows kept before it existed.
    conn.create_function(
        "relay_quarantine_digest",
        2,
        lambda account, raw: quarantine_digest(account, bytes(raw)),
        deterministic=True,
    )
    with _transaction(conn):
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        check_ours(conn, path)  # again inside the transaction: nobody changed it meanwhile
        for step in MIGRATIONS[version:]:
            for statement in step.split(";"):
                if statement.strip():
                    conn.execute(statement)
        if version < len(MIGRATIONS):
            conn.execute(f"PRAGMA user_version = {len(MIGRATIONS)}")


def recover(conn: sqlite3.Connection) -> int:
    """Make deliveries leased by a process that died due again (their next_at is past)."""
    with _transaction(conn):
        sql = "UPDATE deliveries SET state = 'pending', lease_until = NULL WHERE state = 'inflight'"
        return conn.execute(sql).rowcount


# -- helpers ------------------------------------------------------------------------------------


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE … COMMIT``; any failure (including in COMMIT) rolls back everything."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        raise


def is_full(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return (code is not None and code & 0xFF == _SQLITE_FULL) or "disk is full" in str(exc)


def _chunks(items: Sequence[T], size: int = CHUNK) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _marks(n: int) -> str:
    return ",".join("?" * n)


def execute(conn: sqlite3.Connection, sql: str, params: tuple[Any, ...]) -> int:
    """One statement in its own transaction; returns the number of rows changed."""
    with _transaction(conn):
        return conn.execute(sql, params).rowcount


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


def load_cursor(conn: sqlite3.Connection, account: str) -> AccountCursor:
    sql = "SELECT newest, last_sweep, sweep_anchor FROM cursors WHERE account = ?"
    row = conn.execute(sql, (account,)).fetchone()
    return AccountCursor(None, None) if row is None else AccountCursor(*row)


def ingest(conn: sqlite3.Connection, batch: IngestBatch) -> IngestResult:
    first: dict[int, CallRecord] = {}
    for record in batch.records:
        first.setdefault(record.rid, record)  # the first occurrence in the batch wins
    with _transaction(conn):
        known = _known_rids(conn, batch.account, list(first))
        new = [record for rid, record in first.items() if rid not in known]
        # Generators, not lists: a catch-up batch of 100,000 records would otherwise hold
        # every parameter tuple at once.
        conn.executemany(
            "INSERT INTO seen (account, rid, call_ts, seen_at) VALUES (?, ?, ?, ?)",
            ((batch.account, r.rid, r.call_ts, batch.received_at) for r in new),
        )
        if new and not batch.seed_only:
            _enqueue(conn, batch, new)
        if batch.quarantined:
            at = batch.received_at
            conn.executemany(
                SQL_QUARANTINE,
                [
                    (batch.account, quarantine_digest(batch.account, q.raw), q.raw, q.reason, at)
                    for q in batch.quarantined
                ],
            )
        if batch.cursor is not None:
            conn.execute(
                "INSERT INTO cursors (account, newest) VALUES (?, ?) ON CONFLICT (account) "
                "DO UPDATE SET newest = excluded.newest "
                "WHERE cursors.newest IS NULL OR excluded.newest > cursors.newest",
                (batch.account, batch.cursor),
            )
    return IngestResult([r.rid for r in new], len(batch.records) - len(new))


def _known_rids(conn: sqlite3.Connection, account: str, rids: list[int]) -> set[int]:
    known: set[int] = set()
    for chunk in _chunks(rids):
        sql = f"SELECT rid FROM seen WHERE account = ? AND rid IN ({_marks(len(chunk))})"
        known.update(row[0] for row in conn.execute(sql, (account, *chunk)))
    return known


# Kept once: the same record again only says when it was last seen (and how often).
SQL_QUARANTINE = """
INSERT INTO quarantine (account, digest, raw, reason, at, last_at) VALUES (?1, ?2, ?3, ?4, ?5, ?5)
ON CONFLICT (digest) DO UPDATE SET last_at = max(last_at, excluded.last_at), times = times + 1
"""

SQL_FAN_OUT = """
INSERT INTO deliveries (record_id, subscriber, state, attempts, next_at, updated_at)
SELECT r.id, s.value, 'pending', 0, ?, ?
FROM records AS r, json_each(?) AS s
WHERE r.id BETWEEN ? AND ?
ORDER BY r.id
"""


SQL_FAN_OUT_ROUTED = """
INSERT INTO deliveries (record_id, subscriber, state, attempts, next_at, updated_at)
SELECT ? + r.key, s.value, 'pending', 0, ?, ?
FROM json_each(?) AS r, json_each(?, '$[' || r.value || ']') AS s
"""


def _enqueue(conn: sqlite3.Connection, batch: IngestBatch, new: list[CallRecord]) -> None:
    """Store each body once and queue one delivery per subscriber that points at it."""
    # Ids are assigned here so the deliveries can reference them without a round trip per row;
    # safe because BEGIN IMMEDIATE makes this connection the only writer.
    base = conn.execute("SELECT COALESCE(MAX(id), 0) FROM records").fetchone()[0]
    ids = range(base + 1, base + 1 + len(new))
    at = batch.received_at
    conn.executemany(
        "INSERT INTO records (id, account, rid, call_ts, received_at, body) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        ((i, batch.account, r.rid, r.call_ts, at, r.body) for i, r in zip(ids, new, strict=True)),
    )
    # The (record × subscriber) fan-out is a join inside SQLite: binding one row per delivery
    # from Python would cost more than writing it (with a filter on one subscriber of ten, it
    # doubled the cost of an ingest). Without filters it is records × the batch's subscribers.
    everyone = list(dict.fromkeys(batch.subscribers))
    if all(r.subscribers is None for r in new):
        conn.execute(SQL_FAN_OUT, (at, at, json.dumps(everyone), ids.start, ids.stop - 1))
        return
    # Filtered: the distinct subscriber lists (a handful: which filters a record passes) and,
    # per record, the index of its list. SQLite walks the records in order and, for each, its
    # list in order (the inner json_each depends on the outer row, so it cannot go first), so
    # every subscriber's queue keeps record order, as with the plain fan-out.
    lists: dict[tuple[str, ...] | None, int] = {None: 0}
    groups: list[list[str]] = [everyone]
    which: list[int] = []
    for r in new:
        index = lists.get(r.subscribers)
        if index is None:
            index = lists[r.subscribers] = len(groups)
            groups.append(list(dict.fromkeys(r.subscribers or ())))
        which.append(index)
    conn.execute(SQL_FAN_OUT_ROUTED, (ids.start, at, at, json.dumps(which), json.dumps(groups)))


# -- delivery -----------------------------------------------------------------------------------

# Batches are single statements over one bound JSON array, not a statement per row: sqlite3
# releases the GIL around every step, and each time the store's thread wants it back it waits
# for the busy event loop to let go. A claim or finish of a hundred rows took a hundred such
# waits; now it takes a handful, whatever its size.
#
# Due pending rows in queue order, plus inflight rows whose lease ran out (their holder died or
# hung), merged oldest first. Each half walks its own partial index and stops at :limit. One row
# comes back: the claimed deliveries as JSON, each with its rank in queue order (a window
# function: SQLite 3.25 or later), and what names its record's body (id, rid, received_at).
SQL_CLAIM = """
SELECT json_group_array(
    json_array(due.rank, d.id, d.attempts, r.account, r.rid, r.id, r.received_at))
FROM (
    SELECT id, row_number() OVER (ORDER BY next_at, id) AS rank FROM (
        SELECT id, next_at FROM (
            SELECT id, next_at FROM deliveries
            WHERE subscriber = :sub AND state = 'pending' AND next_at <= :now
            ORDER BY next_at, id LIMIT :limit)
        UNION ALL
        SELECT id, next_at FROM (
            SELECT id, next_at FROM deliveries
            WHERE subscriber = :sub AND state = 'inflight' AND lease_until < :now
            ORDER BY lease_until LIMIT :limit))
    ORDER BY next_at, id LIMIT :limit
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

SQL_LEASE = """
UPDATE deliveries SET state = 'inflight', lease_until = ?
WHERE id IN (SELECT value FROM json_each(?))
"""

# One row of the finish batch: [delivery id, at, status, error, latency_ms, response, state,
# next_at]. Numbers are read back from the JSON text exactly (no 15-digit round trip).
SQL_FINISH_ATTEMPTS = """
INSERT INTO attempts (delivery_id, at, status, error, latency_ms, response)
SELECT d.id, f.value ->> 1, f.value ->> 2, f.value ->> 3, f.value ->> 4, f.value ->> 5
FROM json_each(?) AS f JOIN deliveries AS d ON d.id = f.value ->> 0
"""

SQL_FINISH_BATCH = """
UPDATE deliveries
SET state = f.value ->> 6, next_at = COALESCE(f.value ->> 7, next_at), lease_until = NULL,
    attempts = attempts + 1, last_status = f.value ->> 2, last_error = f.value ->> 3,
    updated_at = f.value ->> 1
FROM json_each(?) AS f
WHERE deliveries.id = f.value ->> 0 AND deliveries.state != 'delivered'
"""
# UPDATE … FROM is SQLite 3.33 and ->> is 3.38; older libraries take the statement-per-row path.
BATCH_SQL = sqlite3.sqlite_version_info >= (3, 38, 0)

SQL_FINISH = """
UPDATE deliveries
SET state = ?, next_at = COALESCE(?, next_at), lease_until = NULL, attempts = attempts + 1,
    last_status = ?, last_error = ?, updated_at = ?
WHERE id = ? AND state != 'delivered'
"""

SQL_DISABLE_GONE = """
INSERT INTO subscriber_state (subscriber, disabled_reason, updated_at)
SELECT DISTINCT subscriber, ?, ? FROM deliveries WHERE id IN ({marks})
ON CONFLICT (subscriber) DO UPDATE
SET disabled_reason = excluded.disabled_reason, updated_at = excluded.updated_at
"""

SQL_NEXT_DUE = """
SELECT MIN(t) FROM (
    SELECT MIN(next_at) AS t FROM deliveries WHERE subscriber = ? AND state = 'pending'
    UNION ALL
    SELECT MIN(lease_until) FROM deliveries WHERE subscriber = ? AND state = 'inflight')
"""


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
) -> list[Delivery]:
    """Lease up to ``limit`` due deliveries. Bodies come from ``cache`` when a recent claim (of
    any subscriber) read them, so one record's body exists once however many claim it."""
    if limit <= 0:
        return []
    with _transaction(conn):
        if _disabled_reason(conn, subscriber) is not None:
            return []
        params = {"sub": subscriber, "now": now, "limit": limit}
        rows = sorted(orjson.loads(conn.execute(SQL_CLAIM, params).fetchone()[0]))
        if not rows:
            return []
        ids = orjson.dumps([row[1] for row in rows]).decode()
        conn.execute(SQL_LEASE, (now + lease, ids))
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


def finish(conn: sqlite3.Connection, results: Sequence[Finished]) -> None:
    batch = _finish_batch(results)
    with _transaction(conn):
        # An attempt on a delivery that no longer exists is dropped rather than failing the
        # whole batch on the foreign key (only possible after a manual cleanup).
        # 'delivered' is final: a late result for the same delivery never re-queues it.
        if batch is not None:
            conn.execute(SQL_FINISH_ATTEMPTS, (batch,))
            conn.execute(SQL_FINISH_BATCH, (batch,))
        else:
            conn.executemany(
                "INSERT INTO attempts (delivery_id, at, status, error, latency_ms, response) "
                "SELECT id, ?, ?, ?, ?, ? FROM deliveries WHERE id = ?",
                [
                    (a.at, a.status, a.error, a.latency_ms, a.response, f.delivery_id)
                    for f in results
                    for a in (f.attempt,)
                ],
            )
            conn.executemany(SQL_FINISH, [_finish_params(f) for f in results])
        gone = [f for f in results if f.outcome is Outcome.GONE]
        # The disable is stamped with the 410's own time, one statement per attempt time.
        for at in sorted({f.attempt.at for f in gone}):
            ids = [f.delivery_id for f in gone if f.attempt.at == at]
            for chunk in _chunks(ids):
                marks = _marks(len(chunk))
                conn.execute(SQL_DISABLE_GONE.format(marks=marks), (GONE_REASON, at, *chunk))


def _finish_batch(results: Sequence[Finished]) -> str | None:
    """The results as one JSON array for the batch statements, or None where those would not
    do exactly what one statement per result does: an old SQLite, a delivery twice in one batch
    (applied in order, one after the other), or a number JSON cannot carry."""
    if not BATCH_SQL or len({f.delivery_id for f in results}) != len(results):
        return None
    rows = []
    for f in results:
        state, next_at, status, error, at, delivery_id = _finish_params(f)
        a = f.attempt
        if not (math.isfinite(at) and math.isfinite(a.latency_ms)) or (
            next_at is not None and not math.isfinite(next_at)
        ):
            return None
        rows.append([delivery_id, at, status, error, a.latency_ms, a.response, state, next_at])
    try:
        return orjson.dumps(rows).decode()
    except orjson.JSONEncodeError:  # e.g. a lone surrogate in an error text
        return None


def _finish_params(f: Finished) -> tuple[Any, ...]:
    at = f.attempt.at
    if f.outcome in (Outcome.RETRY, Outcome.GONE):
        next_at: float | None = f.next_at if f.next_at is not None else at
    else:
        next_at = None  # unchanged
    state = _STATE_AFTER[f.outcome]
    return (state, next_at, f.attempt.status, f.attempt.error, at, f.delivery_id)


def release(conn: sqlite3.Connection, ids: Sequence[int]) -> None:
    # next_at stays what it was when the row was claimed (in the past), so it is due at once
    # and keeps its place in the queue.
    with _transaction(conn):
        for chunk in _chunks(list(ids)):
            conn.execute(
                "UPDATE deliveries SET state = 'pending', lease_until = NULL "
                f"WHERE state = 'inflight' AND id IN ({_marks(len(chunk))})",
                chunk,
            )


def renew_claims(conn: sqlite3.Connection, ids: Sequence[int], until: float) -> list[int]:
    """Extend the leases of those of ``ids`` still in flight to ``until``; returns them."""
    renewed: list[int] = []
    with _transaction(conn):
        for chunk in _chunks(list(ids)):
            marks = _marks(len(chunk))
            where = f"WHERE state = 'inflight' AND id IN ({marks})"
            renewed.extend(
                row[0] for row in conn.execute(f"SELECT id FROM deliveries {where}", chunk)
            )
            conn.execute(f"UPDATE deliveries SET lease_until = ? {where}", (until, *chunk))
    return sorted(renewed)


def next_due(conn: sqlite3.Connection, subscriber: str) -> float | None:
    # A disabled subscriber has nothing due until it is re-enabled (which wakes it anyway);
    # answering "now" would make its claim loop spin.
    if _disabled_reason(conn, subscriber) is not None:
        return None
    row = conn.execute(SQL_NEXT_DUE, (subscriber, subscriber)).fetchone()
    return None if row[0] is None else float(row[0])


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


def stats(conn: sqlite3.Connection) -> StoreStats:
    conn.execute("BEGIN")  # one consistent snapshot for every count
    try:
        result = StoreStats(
            accounts=_account_stats(conn),
            subscribers=_subscriber_stats(conn),
            quarantined=conn.execute("SELECT COUNT(*) FROM quarantine").fetchone()[0],
            seen=conn.execute("SELECT COUNT(*) FROM seen").fetchone()[0],
        )
    finally:
        conn.execute("COMMIT")
    return result


def _account_stats(conn: sqlite3.Connection) -> dict[str, AccountState]:
    accounts: dict[str, AccountState] = {}
    for name, newest, last_sweep in conn.execute("SELECT account, newest, last_sweep FROM cursors"):
        state = accounts.setdefault(name, AccountState())
        state.cursor, state.last_sweep = newest, last_sweep
    for name, status, error in conn.execute("SELECT account, status, error FROM account_status"):
        state = accounts.setdefault(name, AccountState())
        state.status, state.error = status, error
    return accounts


# Each branch is a walk of one partial index, already grouped by subscriber.
SQL_STATE_COUNTS = " UNION ALL ".join(
    f"SELECT subscriber, '{state}', COUNT(*), {oldest} FROM deliveries "
    f"WHERE state = '{state}' GROUP BY subscriber"
    for state, oldest in (
        ("pending", "MIN(next_at)"),
        ("inflight", "NULL"),
        ("delivered", "NULL"),
        ("dead", "NULL"),
    )
)


def _subscriber_stats(conn: sqlite3.Connection) -> dict[str, QueueCounts]:
    subscribers: dict[str, QueueCounts] = {}
    for name, state, count, oldest in conn.execute(SQL_STATE_COUNTS):
        counts = subscribers.setdefault(name, QueueCounts())
        setattr(counts, state, count)
        if state == "pending":
            counts.oldest_pending_at = oldest
    sql = "SELECT subscriber, disabled_reason, orphaned_at FROM subscriber_state"
    for name, reason, orphaned_at in conn.execute(sql):
        counts = subscribers.setdefault(name, QueueCounts())
        counts.disabled, counts.orphaned_since = reason, orphaned_at
    columns = "subscriber, failures, failing_since, opened_at, paused_until"
    for name, failures, since, opened_at, paused_until in conn.execute(
        f"SELECT {columns} FROM subscriber_circuit"
    ):
        counts = subscribers.setdefault(name, QueueCounts())
        counts.circuit = "closed" if opened_at is None else "open"
        counts.failures, counts.failing_since = failures, since
        counts.circuit_opened_at, counts.paused_until = opened_at, paused_until
    return subscribers
