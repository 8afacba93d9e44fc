"""Status counts of the SQLite backend, from one consistent snapshot."""

from __future__ import annotations

import sqlite3

from relay.core.status import AccountState, QueueCounts, StoreStats


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


# Each branch is a walk of one partial index, already grouped by subscriber; pending rows are
# in two (fresh and retries, schema version 7), summed here. A fresh row's due time is the first
# one's in queue order (its due order: see relay.store.sqlite.sql.SQL_CLAIM).
_BRANCHES = (
    ("pending", "deliveries_fresh", "attempts = 0", "(SELECT f.next_at FROM deliveries AS f "
     "INDEXED BY deliveries_fresh WHERE f.subscriber = d.subscriber AND f.state = 'pending' "
     "AND f.attempts = 0 ORDER BY f.id LIMIT 1)"),
    ("pending", "deliveries_retry", "attempts > 0", "MIN(next_at)"),
    ("inflight", "deliveries_leased", None, "NULL"),
    ("delivered", "deliveries_done", None, "NULL"),
    ("dead", "deliveries_dead", None, "NULL"),
)  # fmt: skip
SQL_STATE_COUNTS = (
    "SELECT subscriber, state, SUM(n), MIN(oldest) FROM ("
    + " UNION ALL ".join(
        f"SELECT subscriber, '{state}' AS state, COUNT(*) AS n, {oldest} AS oldest "
        f"FROM deliveries AS d INDEXED BY {index} WHERE state = '{state}'"
        + (f" AND {also}" if also else "")
        + " GROUP BY subscriber"
        for state, index, also, oldest in _BRANCHES
    )
    + ") GROUP BY subscriber, state"
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
