"""The SQL of a subscriber's pace in the SQLite backend: the head of its queue, its saved
circuit breaker and pause, and start-up due times (schema versions 5, 7 and 8, see
``sql.SCHEMA_V5`` and those after it).

Like :mod:`relay.store.sqlite.sql`, every function takes the connection first, runs one
transaction, and is called only from the thread that owns it: the writer's, except
:func:`claim_head` and :func:`head_due`, which run on the claim thread and only read.
"""

from __future__ import annotations

import sqlite3

import orjson

from relay.core.breaker import Circuit
from relay.core.models import Delivery
from relay.store.bodies import BodyCache
from relay.store.sqlite import sql as q
from relay.store.sqlite.held import Held

# The head: the oldest pending delivery in queue order that no claim holds (the held ids, a
# JSON array, are in memory: see relay.store.sqlite.held): the first unheld row of
# 'deliveries_fresh' or of 'deliveries_retry_queue', whichever is older: one step in each, and
# one more per held row before it.
SQL_HEAD = """
SELECT d.id, d.next_at, d.attempts, r.account, r.rid, r.id, r.received_at
FROM deliveries AS d JOIN records AS r ON r.id = d.record_id
WHERE d.id = (
    SELECT MIN(id) FROM (
        SELECT id FROM (
            SELECT id FROM deliveries INDEXED BY deliveries_fresh
            WHERE subscriber = ?1 AND state = 'pending' AND attempts = 0
                AND id NOT IN (SELECT value FROM json_each(?2))
            ORDER BY id LIMIT 1)
        UNION ALL
        SELECT id FROM (
            SELECT id FROM deliveries INDEXED BY deliveries_retry_queue
            WHERE subscriber = ?1 AND state = 'pending' AND attempts > 0
                AND id NOT IN (SELECT value FROM json_each(?2))
            ORDER BY id LIMIT 1)))
"""

# Hops from one subscriber to the next in each pending index, then reads the first due time of
# each: a few index seeks per subscriber with something pending, however deep its queue. A
# GROUP BY walked every pending row -- 0.2 s on the store's only thread and the page cache
# filled (+33 MB of RSS) at start-up with 1,000,000 queued. Subscribers holding claims are
# looked at again without their held rows (see due_times).
SQL_DUE_TIMES = """
WITH RECURSIVE
fresh (subscriber) AS (
    SELECT MIN(subscriber) FROM deliveries INDEXED BY deliveries_fresh
    WHERE state = 'pending' AND attempts = 0
    UNION ALL
    SELECT (SELECT MIN(d.subscriber) FROM deliveries AS d INDEXED BY deliveries_fresh
            WHERE d.state = 'pending' AND d.attempts = 0 AND d.subscriber > fresh.subscriber)
    FROM fresh WHERE fresh.subscriber NOTNULL
),
retry (subscriber) AS (
    SELECT MIN(subscriber) FROM deliveries INDEXED BY deliveries_retry
    WHERE state = 'pending' AND attempts > 0
    UNION ALL
    SELECT (SELECT MIN(d.subscriber) FROM deliveries AS d INDEXED BY deliveries_retry
            WHERE d.state = 'pending' AND d.attempts > 0 AND d.subscriber > retry.subscriber)
    FROM retry WHERE retry.subscriber NOTNULL
),
due (subscriber, at) AS (
    SELECT subscriber, (SELECT d.next_at FROM deliveries AS d INDEXED BY deliveries_fresh
                        WHERE d.state = 'pending' AND d.attempts = 0
                            AND d.subscriber = fresh.subscriber
                        ORDER BY d.id LIMIT 1)
    FROM fresh WHERE subscriber NOTNULL
    UNION ALL
    SELECT subscriber, (SELECT MIN(d.next_at) FROM deliveries AS d INDEXED BY deliveries_retry
                        WHERE d.state = 'pending' AND d.attempts > 0
                            AND d.subscriber = retry.subscriber)
    FROM retry WHERE subscriber NOTNULL
)
SELECT subscriber, MIN(at) FROM due
WHERE subscriber NOT IN (SELECT subscriber FROM subscriber_state WHERE disabled_reason NOTNULL)
GROUP BY subscriber
"""

# Held deliveries keep their due time: a retry in flight gets its own from its result.
SQL_REQUEUE = """
UPDATE deliveries
SET next_at = (SELECT received_at FROM records WHERE records.id = deliveries.record_id)
WHERE subscriber = ? AND state = 'pending' AND attempts > 0
    AND id NOT IN (SELECT value FROM json_each(?))
"""

SQL_SAVE = """
INSERT INTO subscriber_circuit
    (subscriber, failures, failing_since, opened_at, paused_until, updated_at)
VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT (subscriber) DO UPDATE
SET failures = excluded.failures, failing_since = excluded.failing_since,
    opened_at = excluded.opened_at, paused_until = excluded.paused_until,
    updated_at = excluded.updated_at
"""


def claim_head(
    conn: sqlite3.Connection,
    subscriber: str,
    now: float,
    lease: float,
    cache: BodyCache,
    held: Held,
) -> Delivery | None:
    if held.live(subscriber, now):  # before the snapshot begins, as in sql.claim
        return None  # the one allowed out is still out
    with q._reading(conn):
        if q._disabled_reason(conn, subscriber) is not None:
            return None
        row = conn.execute(SQL_HEAD, (subscriber, "[]")).fetchone()
        if row is None or row[1] > now:
            return None
        delivery_id, _, attempts, account, rid, record_id, received_at = row
        held.take(subscriber, [delivery_id], now + lease)
        # Shared with the other subscribers' claims of this record, as in sql.claim.
        key = (record_id, rid, received_at)
        body = cache.get(key)
        if body is None:
            body = cache.put(key, q._bodies(conn, [record_id])[record_id])
    return Delivery(delivery_id, subscriber, account, rid, body, attempts)


def head_due(conn: sqlite3.Connection, subscriber: str, held: Held) -> float | None:
    hold = orjson.dumps(held.ids(subscriber)).decode()  # before the file is read
    if q._disabled_reason(conn, subscriber) is not None:
        return None
    row = conn.execute(SQL_HEAD, (subscriber, hold)).fetchone()
    return None if row is None else float(row[1])


def due_times(conn: sqlite3.Connection, held: Held) -> dict[str, float]:
    """When each enabled subscriber has something to claim next (as ``next_due``, for all)."""
    due = {name: float(t) for name, t in conn.execute(SQL_DUE_TIMES) if t is not None}
    for name in held.subscribers():
        # A disabled subscriber is left out, as by the query; next_due answers None for it.
        if held.ids(name):
            when = q.next_due(conn, name, held)
            if when is None:
                due.pop(name, None)
            else:
                due[name] = when
    return due


def requeue_retries(conn: sqlite3.Connection, subscriber: str, held: Held) -> int:
    with q._transaction(conn):
        hold = orjson.dumps(held.ids(subscriber)).decode()
        return conn.execute(SQL_REQUEUE, (subscriber, hold)).rowcount


def load_circuits(conn: sqlite3.Connection) -> dict[str, Circuit]:
    sql = "SELECT subscriber, failures, failing_since, opened_at, paused_until FROM "
    return {
        name: Circuit(failures, since, opened_at, paused_until)
        for name, failures, since, opened_at, paused_until in conn.execute(
            sql + "subscriber_circuit"
        )
    }


def save_circuit(conn: sqlite3.Connection, subscriber: str, circuit: Circuit, now: float) -> None:
    with q._transaction(conn):
        if circuit == Circuit():
            conn.execute("DELETE FROM subscriber_circuit WHERE subscriber = ?", (subscriber,))
            return
        c = circuit
        conn.execute(
            SQL_SAVE,
            (subscriber, c.failures, c.failing_since, c.opened_at, c.paused_until, now),
        )


def set_disabled(conn: sqlite3.Connection, subscriber: str, reason: str | None, now: float) -> None:
    """Disable or re-enable; re-enabling also starts the circuit afresh, in the same commit."""
    with q._transaction(conn):
        conn.execute(q.SQL_SUBSCRIBER_STATE, (subscriber, reason, now))
        if reason is None:
            conn.execute("DELETE FROM subscriber_circuit WHERE subscriber = ?", (subscriber,))
