"""The operator queries of the PostgreSQL backend: a call's journey, record search, the latest
attempts, redelivery -- the same answers as :mod:`relay.store.sqlite.queries`, as a mixin of
:class:`relay.store.postgres.store.PostgresStore`.

Reads run in one ``REPEATABLE READ READ ONLY`` transaction, so a journey's record, deliveries
and attempts are one snapshot while other instances keep writing. There is no online
:meth:`backup`: a PostgreSQL state is backed up with the database's own tools (``pg_dump``).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import orjson
from asyncpg.pool import PoolConnectionProxy

from relay.core.errors import StoreError
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
from relay.store.postgres.connect import PoolHost
from relay.store.postgres.shared import notify_due

RECORD = (
    "SELECT id, call_ts, received_at, body FROM records WHERE account = $1 AND rid = $2 "
    "ORDER BY id LIMIT 1"
)
DELIVERIES = (
    "SELECT id, subscriber, state, attempts, next_at, updated_at, last_status, last_error "
    "FROM deliveries WHERE record_id = $1 ORDER BY subscriber"
)
ATTEMPTS = (
    "SELECT delivery_id, at, status, error, latency_ms, response FROM attempts "
    "WHERE delivery_id = ANY($1::bigint[]) ORDER BY at, id"
)
# The quarantine keeps raw bytes that may not be UTF-8 or JSON at all, which PostgreSQL cannot
# parse without failing the statement; so the rid's digits pre-select rows here and Python
# decides (the table is small: bad records are rare and kept once).
QUARANTINE = (
    "SELECT reason, at, raw FROM quarantine WHERE account = $1 "
    "AND position(convert_to($2::text, 'UTF8') IN raw) > 0 ORDER BY at, id"
)
SEEN = "SELECT 1 FROM seen WHERE account = $1 AND rid = $2"

# Either party's number, digits only, contains the digits asked for. Bodies are the JSON
# envelopes the relay wrote (always valid); a number that is not a JSON string has no digits,
# as on SQLite.
_NUMBER = "CASE WHEN jsonb_typeof(r.data -> '{field}') = 'string' THEN r.data ->> '{field}' END"
_OUTSIDE = _NUMBER.format(field="cidnumber_outside")
_INSIDE = _NUMBER.format(field="cidnumber_inside")
FIND = f"""
SELECT r.id, r.account, r.rid, r.call_ts, r.received_at, {_OUTSIDE}
FROM (
    SELECT id, account, rid, call_ts, received_at,
           convert_from(body, 'UTF8')::jsonb -> 'data' AS data
    FROM records
    WHERE ($1::text IS NULL OR account = $1)
      AND ($2::text IS NULL OR call_ts >= $2::text COLLATE "C")
      AND ($3::text IS NULL OR call_ts <= $3::text COLLATE "C")
) AS r
WHERE $4::text IS NULL
   OR strpos(regexp_replace(coalesce({_OUTSIDE}, ''), '[^0-9]', '', 'g'), $4) > 0
   OR strpos(regexp_replace(coalesce({_INSIDE}, ''), '[^0-9]', '', 'g'), $4) > 0
ORDER BY r.call_ts DESC, r.id DESC
LIMIT $5
"""
STATES = "SELECT record_id, subscriber, state FROM deliveries WHERE record_id = ANY($1::bigint[])"

# Newest first by id: attempts are appended, so this walks the primary key backwards and stops
# after $1 rows, whatever the table's size.
RECENT = """
SELECT d.id, d.subscriber, r.account, r.rid, a.at, a.status, a.error, a.latency_ms, d.state
FROM (SELECT id, delivery_id, at, status, error, latency_ms FROM attempts
      ORDER BY id DESC LIMIT $1) AS a
JOIN deliveries AS d ON d.id = a.delivery_id
JOIN records AS r ON r.id = d.record_id
ORDER BY a.id DESC
"""

REDELIVER = """
UPDATE deliveries
SET state = 'pending', attempts = 0, next_at = $2, lease_until = NULL, owner = NULL,
    token = NULL, updated_at = $2
WHERE id = $1 AND state IN ('delivered', 'dead')
RETURNING subscriber
"""
DELIVERY_SUBSCRIBER = "SELECT subscriber FROM deliveries WHERE id = $1"


class OperatorQueriesMixin(PoolHost):
    """The operator queries; the host class provides the pool (``_conn``/``_tx``) and target."""

    @contextlib.asynccontextmanager
    async def _snapshot(self, op: str) -> AsyncIterator[PoolConnectionProxy[asyncpg.Record]]:
        async with (
            self._conn(op) as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            yield conn

    async def journey(self, account: str, rid: int) -> Journey:
        """See :meth:`relay.store.base.StoreReader.journey`."""
        result = Journey(account=account, rid=rid)
        async with self._snapshot("journey") as conn:
            row = await conn.fetchrow(RECORD, account, rid)
            if row is not None:
                record_id, call_ts, received_at, body = row
                result.record = RecordView(account, rid, call_ts, received_at, _json(body))
                views = [DeliveryView(*d) for d in await conn.fetch(DELIVERIES, record_id)]
                by_id = {view.id: view for view in views}
                for d_id, at, status, error, latency, response in await conn.fetch(
                    ATTEMPTS, list(by_id)
                ):
                    attempt = AttemptView(at, status, error, latency, excerpt(response or ""))
                    by_id[d_id].attempt_log.append(attempt)
                result.deliveries = views
            for reason, at, raw in await conn.fetch(QUARANTINE, account, str(rid)):
                if _raw_rid(bytes(raw)) == rid:
                    text = bytes(raw).decode("utf-8", "replace")
                    result.quarantined.append(QuarantineView(account, reason, at, excerpt(text)))
            result.seen = await conn.fetchval(SEEN, account, rid) is not None
        return result

    async def find_records(self, query: RecordQuery) -> list[RecordSummary]:
        """See :meth:`relay.store.base.StoreReader.find_records`."""
        caller = digits(query.caller) or None
        limit = max(1, min(query.limit, 1000))
        async with self._snapshot("find records") as conn:
            rows = await conn.fetch(FIND, query.account, query.since, query.until, caller, limit)
            states: dict[int, dict[str, str]] = {row[0]: {} for row in rows}
            if rows:
                for record_id, subscriber, state in await conn.fetch(STATES, list(states)):
                    states[record_id][subscriber] = state
        return [
            RecordSummary(account, rid, call_ts, received_at, caller_no, states[record_id])
            for record_id, account, rid, call_ts, received_at, caller_no in rows
        ]

    async def recent_attempts(self, limit: int) -> list[RecentAttempt]:
        """See :meth:`relay.store.base.StoreReader.recent_attempts`."""
        async with self._conn("recent attempts") as conn:
            rows = await conn.fetch(RECENT, max(1, min(limit, 500)))
        return [RecentAttempt(*row) for row in rows]

    async def delivery_subscriber(self, delivery_id: int) -> str | None:
        """See :meth:`relay.store.base.StoreReader.delivery_subscriber`."""
        async with self._conn("find delivery") as conn:
            value = await conn.fetchval(DELIVERY_SUBSCRIBER, delivery_id)
        return None if value is None else str(value)

    async def redeliver(self, delivery_id: int, now: float) -> bool:
        """See :meth:`relay.store.base.Store.redeliver`; wakes the subscriber's instances."""
        async with self._tx("redeliver") as conn:
            subscriber = await conn.fetchval(REDELIVER, delivery_id, now)
            if subscriber is not None:
                await notify_due(conn, [subscriber])
        return subscriber is not None

    async def backup(self, target: str) -> None:
        """Refused: a shared database is backed up with its own tools."""
        raise StoreError(
            f"relay backup copies SQLite state files only; back up PostgreSQL "
            f"{self.target.where} with pg_dump (for example: pg_dump --format=custom "
            "--file=relay.dump 'postgresql://…'; add --schema=NAME for a ?schema= state)"
        )


def _raw_rid(raw: bytes) -> int | None:
    """The integer ``rid`` of a quarantined record, if it is a JSON object with one."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    value = doc.get("rid") if isinstance(doc, dict) else None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value) if value == int(value) else None


def _json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return bytes(body).decode("utf-8", "replace")
