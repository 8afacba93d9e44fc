"""The upstream budget on SQLite: each API key's leaky bucket, kept in the state file.

Kept apart from :mod:`relay.store.sqlite.sql` because it is its own concept: the durable half of
:class:`~relay.ingest.budget.KeyBudget`. One row per key digest (schema version 3) holds the
bucket's level as of a time, and a pause after a 429; the arithmetic is
:func:`relay.core.budget.bucket_spend`, the same as on PostgreSQL. A charge commits before the
request it pays for is sent, so a relay restarted after ``kill -9`` finds the bucket as its
predecessor left it instead of a full one.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from relay.core.budget import Charge, bucket_params, bucket_spend, default_burst
from relay.store.sqlite.schema import _transaction

SQL_BUCKET = "SELECT level, at, paused_until FROM budget_buckets WHERE key_id = ?"
SQL_CHARGE = """
INSERT INTO budget_buckets (key_id, level, at) VALUES (?, ?, ?)
ON CONFLICT (key_id) DO UPDATE SET level = excluded.level, at = excluded.at
"""
SQL_PAUSE = """
INSERT INTO budget_buckets (key_id, level, at, paused_until) VALUES (?, 0, ?, ?)
ON CONFLICT (key_id) DO UPDATE
SET paused_until = max(coalesce(paused_until, excluded.paused_until), excluded.paused_until)
"""


def spend_budget(
    conn: sqlite3.Connection,
    key_id: str,
    now: float,
    requests: int,
    per: float,
    burst: int | None = None,
) -> float:
    """In one transaction: charge one request to ``key_id``'s bucket at ``now`` and return 0.0,
    or charge nothing and return the seconds to wait (the rest of a pause, or until the bucket
    has room). See :meth:`relay.store.base.Store.spend_budget`."""
    with _transaction(conn):
        return _spend(conn, Charge(key_id, now, requests, per, burst))


def spend_budgets(conn: sqlite3.Connection, charges: Sequence[Charge]) -> list[float]:
    """:func:`spend_budget` for each of ``charges`` in order, all in one transaction (each
    charge reads the row an earlier one of its key wrote). See
    :meth:`relay.store.base.Store.spend_budgets`."""
    with _transaction(conn):
        return [_spend(conn, charge) for charge in charges]


def _spend(conn: sqlite3.Connection, c: Charge) -> float:
    """One charge, inside the caller's transaction."""
    capacity, period = bucket_params(
        c.requests, c.per, default_burst(c.requests) if c.burst is None else c.burst
    )
    row = conn.execute(SQL_BUCKET, (c.key_id,)).fetchone()
    level, at, paused_until = (0.0, c.now, None) if row is None else row
    if paused_until is not None and paused_until > c.now:
        return float(paused_until) - c.now
    level, at, wait = bucket_spend(level, at, c.now, capacity, capacity / period)
    if wait == 0.0:
        conn.execute(SQL_CHARGE, (c.key_id, level, at))
    return wait


def pause_budget(conn: sqlite3.Connection, key_id: str, until: float) -> None:
    """Refuse every spend on ``key_id`` until ``until``; a pause only ever extends."""
    with _transaction(conn):
        conn.execute(SQL_PAUSE, (key_id, until, until))
