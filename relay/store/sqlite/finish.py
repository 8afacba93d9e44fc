"""Attempt results on the SQLite backend: one transaction per batch of results that records
every attempt and moves each delivery on (delivered, due again, dead, or waiting behind a 410),
then ends the claims (:mod:`relay.store.sqlite.held`). Run on the store's worker thread, as
everything in :mod:`relay.store.sqlite.sql`.
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Sequence
from typing import Any

import orjson

from relay.core.models import Finished, Outcome
from relay.store.results import GONE_REASON, STATE_AFTER, due_after, updated_stamps
from relay.store.sqlite.held import Held
from relay.store.sqlite.schema import _chunks, _marks, _transaction

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

# Delivered results, the common case, one statement per status code: nothing per row but the
# id. A delivered row's updated_at is the latest attempt time among them (the batch spans
# milliseconds; each attempt's own time is in attempts): see relay.store.results.updated_stamps.
SQL_FINISH_DELIVERED = """
UPDATE deliveries
SET state = 'delivered', lease_until = NULL, attempts = attempts + 1, last_status = ?,
    last_error = NULL, updated_at = ?
WHERE id IN (SELECT value FROM json_each(?)) AND state != 'delivered'
"""

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


def finish(conn: sqlite3.Connection, results: Sequence[Finished], held: Held) -> None:
    """Store attempt results, ending their claims once (and only if) they are committed: a
    refused write leaves them held, so nothing claims them while their result waits."""
    _finish(conn, results)
    held.drop(f.delivery_id for f in results)


def _finish(conn: sqlite3.Connection, results: Sequence[Finished]) -> None:
    stamps = updated_stamps(results)
    batch = _finish_batch(results, stamps)
    with _transaction(conn):
        # An attempt on a delivery that no longer exists is dropped rather than failing the
        # whole batch on the foreign key (only possible after a manual cleanup).
        # 'delivered' is final: a late result for the same delivery never re-queues it.
        if batch is not None:
            attempts, others, delivered = batch
            conn.execute(SQL_FINISH_ATTEMPTS, (attempts,))
            if others is not None:
                conn.execute(SQL_FINISH_BATCH, (others,))
            for (status, stamp), ids in delivered.items():
                conn.execute(SQL_FINISH_DELIVERED, (status, stamp, orjson.dumps(ids).decode()))
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
            conn.executemany(
                SQL_FINISH, [_finish_params(f, at) for f, at in zip(results, stamps, strict=True)]
            )
        gone = [f for f in results if f.outcome is Outcome.GONE]
        # The disable is stamped with the 410's own time, one statement per attempt time.
        for at in sorted({f.attempt.at for f in gone}):
            ids = [f.delivery_id for f in gone if f.attempt.at == at]
            for chunk in _chunks(ids):
                marks = _marks(len(chunk))
                conn.execute(SQL_DISABLE_GONE.format(marks=marks), (GONE_REASON, at, *chunk))


_FinishBatch = tuple[str, str | None, dict[tuple[int | None, float], list[int]]]


def _finish_batch(results: Sequence[Finished], stamps: Sequence[float]) -> _FinishBatch | None:
    """The results for the batch statements: every attempt as one JSON array, the results other
    than delivered as another (None: there are none), and the delivered ids by (status,
    updated_at). None where those would not do exactly what one statement per result does: an
    old SQLite, a delivery twice in one batch (applied in order, one after the other), or a
    number JSON cannot carry."""
    if not BATCH_SQL or len({f.delivery_id for f in results}) != len(results):
        return None
    attempts = []
    others = []
    delivered: dict[tuple[int | None, float], list[int]] = {}
    for f, stamp in zip(results, stamps, strict=True):
        a = f.attempt
        if not (math.isfinite(a.at) and math.isfinite(a.latency_ms) and math.isfinite(stamp)):
            return None
        attempts.append([f.delivery_id, a.at, a.status, a.error, a.latency_ms, a.response])
        if f.outcome is Outcome.DELIVERED:
            delivered.setdefault((a.status, stamp), []).append(f.delivery_id)
            continue
        state, next_at, status, error, at, delivery_id = _finish_params(f, stamp)
        if next_at is not None and not math.isfinite(next_at):
            return None
        others.append([delivery_id, at, status, error, None, None, state, next_at])
    try:
        return (
            orjson.dumps(attempts).decode(),
            orjson.dumps(others).decode() if others else None,
            delivered,
        )
    except orjson.JSONEncodeError:  # e.g. a lone surrogate in an error text
        return None


def _finish_params(f: Finished, stamp: float) -> tuple[Any, ...]:
    a = f.attempt
    return (STATE_AFTER[f.outcome], due_after(f), a.status, a.error, stamp, f.delivery_id)
