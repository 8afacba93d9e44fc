"""Ingest on the SQLite backend: the account's cursor, and the one transaction that stores new
records, marks their rids seen, keeps bad ones aside and fans out their deliveries."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence

import orjson

from relay.core.models import (
    NO_CURSOR,
    AccountCursor,
    CallRecord,
    IngestBatch,
    IngestResult,
    quarantine_digest,
)
from relay.store.sqlite.schema import _transaction


def load_cursor(conn: sqlite3.Connection, account: str) -> AccountCursor:
    sql = "SELECT newest, last_sweep, sweep_anchor FROM cursors WHERE account = ?"
    row = conn.execute(sql, (account,)).fetchone()
    return AccountCursor(None, None) if row is None else AccountCursor(*row)


# One statement over one bound JSON array, whatever the number of accounts: no host-parameter
# limit to chunk for, and one snapshot of every cursor.
SQL_LOAD_CURSORS = """
SELECT account, newest, last_sweep, sweep_anchor FROM cursors
WHERE account IN (SELECT value FROM json_each(?))
"""


def load_cursors(conn: sqlite3.Connection, accounts: Sequence[str]) -> dict[str, AccountCursor]:
    found = {
        row[0]: AccountCursor(*row[1:])
        for row in conn.execute(SQL_LOAD_CURSORS, (json.dumps(list(accounts)),))
    }
    return {a: found.get(a, NO_CURSOR) for a in accounts}


# A fan-out of this many rows or more skips SQLite's foreign-key check on each delivery row (a
# lookup of its record: ~18 % of the fan-out's CPU, 1.94 -> 1.60 us a row). Every delivery of an
# ingest points at a record the same transaction inserted (its id is assigned here), so the
# check could only pass. The pragma is a no-op inside a transaction, and switching it makes the
# connection's prepared statements prepare again (a few us each), hence only for large batches.
# It is on again before ingest returns, whatever happened: retention's ON DELETE CASCADE needs it.
UNCHECKED_FAN_OUT = 10_000


def ingest(conn: sqlite3.Connection, batch: IngestBatch) -> IngestResult:
    first: dict[int, CallRecord] = {}
    for record in batch.records:
        first.setdefault(record.rid, record)  # the first occurrence in the batch wins
    fan_out = 0 if batch.seed_only else len(first) * len(set(batch.subscribers))
    large = fan_out >= UNCHECKED_FAN_OUT  # a seed-only batch queues nothing: nothing to skip
    if large:
        conn.execute("PRAGMA foreign_keys = OFF")
    try:
        return _ingest(conn, batch, first)
    finally:
        if large:
            conn.execute("PRAGMA foreign_keys = ON")


def _ingest(
    conn: sqlite3.Connection, batch: IngestBatch, first: dict[int, CallRecord]
) -> IngestResult:
    with _transaction(conn):
        known = _known_rids(conn, batch.account, list(first))
        new = [record for rid, record in first.items() if rid not in known]
        if new:
            seen = orjson.dumps([(r.rid, r.call_ts) for r in new]).decode()
            conn.execute(SQL_SEEN_ROWS, (batch.account, batch.received_at, seen))
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


# One statement and one row, whatever the batch: sqlite3 gives up the GIL around every step, and
# while a catch-up's next batch is parsed on the event loop each step waits to get it back (the
# switch interval, 5 ms). In chunks of 500 a batch of 10,000 took 20 statements, plus one step
# per rid already seen (every rid of a look-back's re-read).
SQL_KNOWN_RIDS = """
SELECT json_group_array(rid) FROM seen
WHERE account = ?1 AND rid IN (SELECT value FROM json_each(?2))
"""


def _known_rids(conn: sqlite3.Connection, account: str, rids: list[int]) -> set[int]:
    if not rids:
        return set()
    (found,) = conn.execute(SQL_KNOWN_RIDS, (account, orjson.dumps(rids).decode())).fetchone()
    return set(orjson.loads(found))


# Kept once: the same record again only says when it was last seen (and how often).
SQL_QUARANTINE = """
INSERT INTO quarantine (account, digest, raw, reason, at, last_at) VALUES (?1, ?2, ?3, ?4, ?5, ?5)
ON CONFLICT (digest) DO UPDATE SET last_at = max(last_at, excluded.last_at), times = times + 1
"""

# New records and their seen rows: one statement each over one bound JSON array (the records'
# bodies back to back in one bound blob, cut apart with substr, which counts bytes in a blob).
# executemany steps once per row, and sqlite3 gives up the GIL around every step: each of a
# batch's 10,000 rows then waited for the busy event loop to hand the GIL back, ~12 us a record
# on the store's thread in (10), against ~1 us for the rows themselves. (sqlite3 binds an empty
# bytes object as NULL, hence the COALESCE for a batch whose bodies are all empty.)
SQL_SEEN_ROWS = """
INSERT INTO seen (account, rid, call_ts, seen_at)
SELECT ?1, json_extract(m.value, '$[0]'), json_extract(m.value, '$[1]'), ?2
FROM json_each(?3) AS m
"""
RECORD_ROWS = 1000  # records per statement (their bodies are bound as one blob)
SQL_RECORD_ROWS = """
INSERT INTO records (id, account, rid, call_ts, received_at, body)
SELECT ?1 + m.key, ?2, json_extract(m.value, '$[0]'), json_extract(m.value, '$[1]'), ?3,
    COALESCE(substr(?4, json_extract(m.value, '$[2]'), json_extract(m.value, '$[3]')), x'')
FROM json_each(?5) AS m
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
    # RECORD_ROWS at a time: the joined bodies are a copy, and sqlite3 binds a copy of that.
    for start in range(0, len(new), RECORD_ROWS):
        piece = new[start : start + RECORD_ROWS]
        rows: list[tuple[int, str, int, int]] = []
        offset = 1  # substr counts from 1
        for r in piece:
            rows.append((r.rid, r.call_ts, offset, len(r.body)))
            offset += len(r.body)
        bodies = b"".join(r.body for r in piece)
        params = (ids.start + start, batch.account, at, bodies, orjson.dumps(rows))
        conn.execute(SQL_RECORD_ROWS, params)
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
