"""The operator queries of the SQLite backend: a call's journey, record search, redelivery and
the online backup. Each function takes the connection first and runs on the thread that owns it,
like everything in :mod:`relay.store.sqlite.sql`.

The PostgreSQL backend mirrors these statements (see ``docs/OPERATIONS.md``, "Store queries").
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Callable
from typing import Any

import orjson

from relay.core.journey import (
    AttemptView,
    DeliveryView,
    Journey,
    QuarantineView,
    RecentAttempt,
    RecordQuery,
    RecordSummary,
    RecordView,
    digits,
    excerpt,
)

# A delivery's state as a reader sees it, from its id and its state in the file: the owner's
# store shows its held claims as in flight (relay.store.sqlite.held), a snapshot as stored.
StateOf = Callable[[int, str], str]


def _as_stored(delivery_id: int, state: str) -> str:
    return state


SQL_RECORD = (
    "SELECT id, call_ts, received_at, body FROM records WHERE account = ? AND rid = ? "
    "ORDER BY id LIMIT 1"
)
SQL_DELIVERIES = (
    "SELECT id, subscriber, state, attempts, next_at, updated_at, last_status, last_error "
    "FROM deliveries WHERE record_id = ? ORDER BY subscriber"
)
SQL_ATTEMPTS = (
    "SELECT at, status, error, latency_ms, response FROM attempts WHERE delivery_id = ? "
    "ORDER BY at, rowid"
)
# The quarantine keeps raw bytes; a record there may not even have a usable rid, so the match
# is on the JSON text (the table is small: bad records are rare and de-duplicated).
SQL_QUARANTINE = (
    "SELECT reason, at, raw FROM quarantine WHERE account = ? AND json_valid(raw) "
    "AND json_extract(raw, '$.rid') = ? ORDER BY at"
)
SQL_SEEN = "SELECT 1 FROM seen WHERE account = ? AND rid = ?"

# Either party's number, digits only, contains the digits asked for.
SQL_FIND = """
SELECT r.id, r.account, r.rid, r.call_ts, r.received_at,
       json_extract(r.body, '$.data.cidnumber_outside')
FROM records AS r
WHERE (:account IS NULL OR r.account = :account)
  AND (:since IS NULL OR r.call_ts >= :since)
  AND (:until IS NULL OR r.call_ts <= :until)
  AND (:caller IS NULL
       OR instr(relay_digits(json_extract(r.body, '$.data.cidnumber_outside')), :caller) > 0
       OR instr(relay_digits(json_extract(r.body, '$.data.cidnumber_inside')), :caller) > 0)
ORDER BY r.call_ts DESC, r.id DESC
LIMIT :limit
"""
SQL_STATES = "SELECT record_id, subscriber, id, state FROM deliveries WHERE record_id IN ({marks})"

SQL_REDELIVER = """
UPDATE deliveries SET state = 'pending', attempts = 0, next_at = ?, lease_until = NULL,
    updated_at = ?
WHERE id = ? AND state IN ('delivered', 'dead')
"""


# Newest first by rowid: attempts are appended, so this walks the table's b-tree backwards and
# stops after :limit rows, whatever the table's size.
SQL_RECENT = """
SELECT d.id, d.subscriber, r.account, r.rid, a.at, a.status, a.error, a.latency_ms, d.state
FROM (SELECT rowid, * FROM attempts ORDER BY rowid DESC LIMIT ?) AS a
JOIN deliveries AS d ON d.id = a.delivery_id
JOIN records AS r ON r.id = d.record_id
ORDER BY a.rowid DESC
"""


def recent_attempts(
    conn: sqlite3.Connection, limit: int, state_of: StateOf = _as_stored
) -> list[RecentAttempt]:
    """See :meth:`relay.store.base.StoreReader.recent_attempts`."""
    rows = conn.execute(SQL_RECENT, (max(1, min(limit, 500)),))
    return [
        RecentAttempt(i, sub, account, rid, at, status, error, latency, state_of(i, state))
        for i, sub, account, rid, at, status, error, latency, state in rows
    ]


def register_functions(conn: sqlite3.Connection) -> None:
    """The SQL functions these queries use (per connection)."""

    def relay_digits(value: Any) -> str:
        return digits(value if isinstance(value, str) else None)

    conn.create_function("relay_digits", 1, relay_digits, deterministic=True)


def journey(
    conn: sqlite3.Connection, account: str, rid: int, state_of: StateOf = _as_stored
) -> Journey:
    """See :meth:`relay.store.base.StoreReader.journey`."""
    result = Journey(account=account, rid=rid)
    conn.execute("BEGIN")  # one snapshot for the record, its deliveries and their attempts
    try:
        row = conn.execute(SQL_RECORD, (account, rid)).fetchone()
        if row is not None:
            record_id, call_ts, received_at, body = row
            result.record = RecordView(account, rid, call_ts, received_at, _json(body))
            for d in conn.execute(SQL_DELIVERIES, (record_id,)).fetchall():
                view = DeliveryView(*d)
                view.state = state_of(view.id, view.state)
                view.attempt_log = [
                    AttemptView(at, status, error, latency, excerpt(response or ""))
                    for at, status, error, latency, response in conn.execute(SQL_ATTEMPTS, (d[0],))
                ]
                result.deliveries.append(view)
        result.quarantined = [
            QuarantineView(account, reason, at, excerpt(bytes(raw).decode("utf-8", "replace")))
            for reason, at, raw in conn.execute(SQL_QUARANTINE, (account, rid))
        ]
        result.seen = conn.execute(SQL_SEEN, (account, rid)).fetchone() is not None
    finally:
        conn.execute("COMMIT")
    return result


def find_records(
    conn: sqlite3.Connection, query: RecordQuery, state_of: StateOf = _as_stored
) -> list[RecordSummary]:
    """See :meth:`relay.store.base.StoreReader.find_records`."""
    caller = digits(query.caller) or None
    params = {
        "account": query.account,
        "since": query.since,
        "until": query.until,
        "caller": caller,
        "limit": max(1, min(query.limit, 1000)),
    }
    conn.execute("BEGIN")
    try:
        rows = conn.execute(SQL_FIND, params).fetchall()
        states: dict[int, dict[str, str]] = {row[0]: {} for row in rows}
        if rows:
            sql = SQL_STATES.format(marks=",".join("?" * len(rows)))
            for record_id, subscriber, delivery_id, state in conn.execute(
                sql, [row[0] for row in rows]
            ):
                states[record_id][subscriber] = state_of(delivery_id, state)
    finally:
        conn.execute("COMMIT")
    return [
        RecordSummary(account, rid, call_ts, received_at, caller_no, states[record_id])
        for record_id, account, rid, call_ts, received_at, caller_no in rows
    ]


def redeliver(conn: sqlite3.Connection, delivery_id: int, now: float) -> bool:
    """See :meth:`relay.store.base.Store.redeliver`."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        changed = conn.execute(SQL_REDELIVER, (now, now, delivery_id)).rowcount
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        raise
    return changed == 1


def delivery_subscriber(conn: sqlite3.Connection, delivery_id: int) -> str | None:
    """The subscriber a delivery belongs to (None: no such delivery)."""
    row = conn.execute("SELECT subscriber FROM deliveries WHERE id = ?", (delivery_id,)).fetchone()
    return None if row is None else str(row[0])


def backup(conn: sqlite3.Connection, target: str) -> None:
    """SQLite's online backup into ``target`` (a new private file), page by page so writers
    are only briefly held up; the copy is a consistent snapshot."""
    tmp = f"{target}.partial"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # call data: private
    os.close(fd)
    try:
        with contextlib.closing(sqlite3.connect(tmp)) as dest:
            conn.backup(dest, pages=1024)
            dest.execute("PRAGMA journal_mode = DELETE")  # a single self-contained file
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return bytes(body).decode("utf-8", "replace")
