"""Retention on the SQLite backend: dead letters and quarantined records past their keep, and
the deliveries of subscribers no longer configured (orphans).

Each function is one short transaction of at most :data:`CHUNK` rows, run on the store's thread
(see :mod:`relay.store.sqlite.store`), which loops until a chunk comes back short: claims and
finishes queued behind a large purge wait for one chunk, not for all of it.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence

from relay.core.models import Orphan
from relay.store.sqlite.schema import _transaction
from relay.store.sqlite.stats import SQL_STATE_COUNTS

CHUNK = 2000
STATES = ("pending", "inflight", "delivered", "dead")

# Attempts follow their deliveries through ON DELETE CASCADE.
SQL_PRUNE_DEAD = """
DELETE FROM deliveries WHERE id IN (
    SELECT id FROM deliveries INDEXED BY deliveries_dead_age
    WHERE state = 'dead' AND updated_at < ? LIMIT ?)
"""
SQL_PRUNE_QUARANTINE = """
DELETE FROM quarantine WHERE id IN (
    SELECT id FROM quarantine INDEXED BY quarantine_seen WHERE last_at < ? LIMIT ?)
"""
# One statement per state, so that each walks that state's partial index by subscriber
# (pending rows are in two: fresh and retries).
SQL_PURGE_STATE = {
    state: "DELETE FROM deliveries WHERE id IN (SELECT id FROM deliveries "
    f"WHERE subscriber = ? AND state = '{state}' LIMIT ?)"
    for state in STATES
    if state != "pending"
}
SQL_PURGE_STATE["pending"] = """
DELETE FROM deliveries WHERE id IN (
    SELECT id FROM (
        SELECT id FROM deliveries INDEXED BY deliveries_fresh
        WHERE subscriber = ?1 AND state = 'pending' AND attempts = 0 LIMIT ?2)
    UNION ALL
    SELECT id FROM (
        SELECT id FROM deliveries INDEXED BY deliveries_retry
        WHERE subscriber = ?1 AND state = 'pending' AND attempts > 0 LIMIT ?2)
    LIMIT ?2)
"""
SQL_STAMP_ORPHAN = """
INSERT INTO subscriber_state (subscriber, disabled_reason, updated_at, orphaned_at)
VALUES (?1, NULL, ?2, ?2)
ON CONFLICT (subscriber) DO UPDATE
SET orphaned_at = COALESCE(subscriber_state.orphaned_at, excluded.orphaned_at)
"""


def prune_dead_chunk(conn: sqlite3.Connection, before: float) -> int:
    """Delete up to CHUNK dead letters that died before ``before``."""
    with _transaction(conn):
        return conn.execute(SQL_PRUNE_DEAD, (before, CHUNK)).rowcount


def prune_quarantine_chunk(conn: sqlite3.Connection, before: float) -> int:
    """Forget up to CHUNK quarantined records last seen before ``before``."""
    with _transaction(conn):
        return conn.execute(SQL_PRUNE_QUARANTINE, (before, CHUNK)).rowcount


def find_orphans(conn: sqlite3.Connection, configured: Sequence[str], now: float) -> list[Orphan]:
    """Stamp (once) and list the subscribers with deliveries that are not configured; clear
    the stamp of configured ones, and drop stamps with nothing left behind them."""
    with _transaction(conn):
        totals: dict[str, int] = {}
        for name, _, count, _ in conn.execute(SQL_STATE_COUNTS):
            totals[name] = totals.get(name, 0) + count
        known = json.dumps(list(configured))
        orphans = sorted(set(totals) - set(configured))
        conn.execute(
            "UPDATE subscriber_state SET orphaned_at = NULL "
            "WHERE orphaned_at NOTNULL AND subscriber IN (SELECT value FROM json_each(?))",
            (known,),
        )
        conn.executemany(SQL_STAMP_ORPHAN, [(name, now) for name in orphans])
        # A stamped subscriber with no deliveries left: its row has nothing more to say
        # (unless it also records a 410, kept for if the subscriber is configured again).
        gone = json.dumps(orphans)
        conn.execute(
            "DELETE FROM subscriber_state WHERE orphaned_at NOTNULL AND disabled_reason ISNULL "
            "AND subscriber NOT IN (SELECT value FROM json_each(?))",
            (gone,),
        )
        conn.execute(
            "UPDATE subscriber_state SET orphaned_at = NULL WHERE orphaned_at NOTNULL "
            "AND subscriber NOT IN (SELECT value FROM json_each(?))",
            (gone,),
        )
        since = dict(
            conn.execute(
                "SELECT subscriber, orphaned_at FROM subscriber_state WHERE orphaned_at NOTNULL"
            ).fetchall()
        )
    return [Orphan(name, float(since[name]), totals[name]) for name in orphans]


def purge_orphans_chunk(conn: sqlite3.Connection, before: float) -> int:
    """Delete up to CHUNK deliveries of subscribers orphaned before ``before``."""
    deleted = 0
    with _transaction(conn):
        names = [
            row[0]
            for row in conn.execute(
                "SELECT subscriber FROM subscriber_state WHERE orphaned_at < ?", (before,)
            )
        ]
        for name in names:
            for state in STATES:
                if deleted >= CHUNK:
                    return deleted
                deleted += conn.execute(SQL_PURGE_STATE[state], (name, CHUNK - deleted)).rowcount
    return deleted
