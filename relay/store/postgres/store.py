"""The PostgreSQL backend: one database shared by any number of relay instances.

Each operation borrows a connection from an asyncpg pool and runs as one transaction (or one
statement), so a failure leaves nothing half-written. Unlike SQLite there is no single owner:
claims take rows with ``FOR UPDATE SKIP LOCKED`` and stamp them with the instance id and a
fresh fencing token; results and releases carrying a token apply only while that claim still
stands. Opening never resets in-flight rows (another instance may be working on them); a dead
instance's claims come back through :meth:`PostgresStore.recover_dead_instances`, and any
expired lease is claimable anyway.

Driver and server failures surface as :class:`StoreError` (:class:`StoreFull` when the server's
disk is full) naming the database without its password; the pool replaces broken connections,
so the next operation after a dropped connection or a server restart works again.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from relay.core.errors import StoreError
from relay.core.models import (
    NO_CURSOR,
    AccountCursor,
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
from relay.store.base import Store
from relay.store.bodies import BodyCache
from relay.store.postgres import migrations
from relay.store.postgres import sql as q
from relay.store.postgres.connect import (
    DRIVER_ERRORS,
    Conn,
    Target,
    keep_session,
    parse_target,
    store_error,
)
from relay.store.postgres.pace import PaceMixin, add_circuits, forget_circuit
from relay.store.postgres.queries import OperatorQueriesMixin
from relay.store.postgres.retention import RetentionMixin
from relay.store.postgres.shared import SharedStateMixin, notify_due
from relay.store.results import GONE_REASON, STATE_AFTER, due_after, updated_stamps

log = logging.getLogger(__name__)


class PostgresStore(RetentionMixin, PaceMixin, SharedStateMixin, OperatorQueriesMixin, Store):
    """:class:`Store` on a PostgreSQL database shared by several relay instances.

    ``instance_id`` stamps this store's claims (see :meth:`register_instance`); by default a
    random one, so two processes never share an id by accident.
    """

    shared = True

    def __init__(
        self,
        url: str,
        *,
        instance_id: str | None = None,
        min_connections: int = 1,
        max_connections: int = 8,
        command_timeout: float = 60.0,
    ) -> None:
        self.target: Target = parse_target(url)
        self.instance_id = instance_id or f"relay-{uuid.uuid4().hex[:12]}"
        self._min = min_connections
        self._max = max_connections
        self._command_timeout = command_timeout
        self._pool: asyncpg.Pool[asyncpg.Record] | None = None
        # One body object per record for every claim of it (used on the event loop only).
        self._bodies = BodyCache()

    # -- lifecycle ----------------------------------------------------------------------------

    async def open(self) -> None:
        if self._pool is not None:
            raise StoreError(f"PostgreSQL {self.target.where} is already open")
        try:
            conn = await asyncpg.connect(**self.target.connect_args())
            try:
                schema = await migrations.target_schema(conn, self.target.schema)
                await migrations.migrate(conn, schema, create_schema=self.target.schema is not None)
            finally:
                await conn.close()
            self._pool = await asyncpg.create_pool(
                **self.target.connect_args(),
                min_size=self._min,
                max_size=self._max,
                command_timeout=self._command_timeout,
                reset=keep_session,
            )
        except DRIVER_ERRORS as exc:
            raise store_error(self.target, "open", exc) from exc

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        self._bodies.clear()
        if pool is not None:
            try:
                await pool.close()
            except DRIVER_ERRORS:
                log.warning("PostgreSQL pool did not close cleanly; terminating", exc_info=True)
                pool.terminate()

    @contextlib.asynccontextmanager
    async def _conn(self, op: str) -> AsyncIterator[PoolConnectionProxy[asyncpg.Record]]:
        """A pooled connection for ``op``; driver failures become :class:`StoreError`."""
        pool = self._pool
        if pool is None:
            raise StoreError(f"PostgreSQL {self.target.where} is not open")
        try:
            async with pool.acquire() as conn:
                yield conn
        except DRIVER_ERRORS as exc:
            raise store_error(self.target, op, exc) from exc

    @contextlib.asynccontextmanager
    async def _tx(self, op: str) -> AsyncIterator[PoolConnectionProxy[asyncpg.Record]]:
        """A pooled connection inside one transaction for ``op``."""
        async with self._conn(op) as conn, conn.transaction():
            yield conn

    async def _execute(self, op: str, sql: str, *args: Any) -> None:
        async with self._conn(op) as conn:
            await conn.execute(sql, *args)

    # -- ingest -------------------------------------------------------------------------------

    async def load_cursor(self, account: str) -> AccountCursor:
        async with self._conn("load cursor") as conn:
            row = await conn.fetchrow(q.LOAD_CURSOR, account)
        return AccountCursor(None, None) if row is None else AccountCursor(*row)

    async def load_cursors(self, accounts: Sequence[str]) -> dict[str, AccountCursor]:
        async with self._conn("load cursors") as conn:
            rows = await conn.fetch(q.LOAD_CURSORS, list(accounts))
        found = {row[0]: AccountCursor(*row[1:]) for row in rows}
        return {a: found.get(a, NO_CURSOR) for a in accounts}

    async def ingest(self, batch: IngestBatch) -> IngestResult:
        first: dict[int, tuple[str, bytes]] = {}
        routes: dict[int, tuple[str, ...] | None] = {}
        for record in batch.records:
            if record.rid not in first:  # the first one wins
                first[record.rid] = (record.call_ts, record.body)
                routes[record.rid] = record.subscribers
        rids = list(first)
        at = batch.received_at
        async with self._tx("ingest") as conn:
            fresh: set[int] = set()
            if rids:
                stamps = [first[r][0] for r in rids]
                rows = await conn.fetch(q.MARK_SEEN, batch.account, rids, stamps, at)
                fresh = {row[0] for row in rows}
            new = [r for r in rids if r in fresh]  # in batch order
            subscribers = list(dict.fromkeys(batch.subscribers))
            if new and not batch.seed_only:
                ids = await conn.fetch(
                    q.INSERT_RECORDS,
                    batch.account,
                    new,
                    [first[r][0] for r in new],
                    at,
                    [first[r][1] for r in new],
                )
                if all(routes[r] is None for r in new):
                    if subscribers:
                        await conn.execute(q.FAN_OUT, [row[0] for row in ids], subscribers, at)
                        await notify_due(conn, subscribers)
                else:
                    await _fan_out_routed(conn, ids, routes, subscribers, at)
            if batch.quarantined:
                # One row per digest: ON CONFLICT cannot touch a row twice in one statement.
                kept = {quarantine_digest(batch.account, i.raw): i for i in batch.quarantined}
                raws = [item.raw for item in kept.values()]
                reasons = [item.reason for item in kept.values()]
                await conn.execute(q.QUARANTINE, batch.account, list(kept), raws, reasons, at)
            if batch.cursor is not None:
                await conn.execute(q.ADVANCE_CURSOR, batch.account, batch.cursor)
        return IngestResult(new, len(batch.records) - len(new))

    async def recent_records(self, limit: int) -> list[StoredRecord]:
        async with self._conn("list records") as conn:
            rows = await conn.fetch(q.RECENT_RECORDS, limit)
        return [StoredRecord(row[0], row[1], bytes(row[2])) for row in rows]

    async def mark_swept(self, account: str, at: float, anchor: str | None) -> None:
        await self._execute("mark swept", q.MARK_SWEPT, account, at, anchor)

    async def prune_seen(self, account: str, older_than_ts: str, seen_before: float) -> int:
        # In bounded steps, each its own transaction: a big cleanup never holds locks for long.
        total = 0
        while True:
            async with self._conn("prune seen") as conn:
                status = await conn.execute(
                    q.PRUNE_SEEN, account, older_than_ts, seen_before, q.PRUNE_SEEN_CHUNK
                )
            pruned = _rowcount(status)
            total += pruned
            if pruned < q.PRUNE_SEEN_CHUNK:
                return total

    # -- delivery -----------------------------------------------------------------------------

    async def claim(self, subscriber: str, limit: int, now: float, lease: float) -> list[Delivery]:
        if limit <= 0:
            return []
        async with self._tx("claim") as conn:
            # A claim need not wait for its WAL flush: if the server crashes before the flush,
            # the claim is simply lost and the delivery is claimed again (a duplicate with the
            # same webhook-id, which at-least-once allows). Results and ingests stay durable.
            await conn.execute(q.CLAIM_ASYNC_COMMIT)
            rows = await conn.fetch(q.CLAIM, subscriber, now, limit, lease, self.instance_id)
        return [
            Delivery(
                id=row[0],
                subscriber=subscriber,
                account=row[3],
                rid=row[4],
                body=self._shared_body(row[6], row[4], row[5]),
                attempts=row[1],
                token=row[2],
            )
            for row in rows
        ]

    def _shared_body(self, record_id: int, rid: int, body: bytes) -> bytes:
        """The body a recent claim already holds for this record, else ``body`` (kept).

        The claim still fetches the bytes (one transient copy, dropped here); what must not
        happen is every subscriber's delivery keeping its own. Record ids come from a sequence
        and are never reused, so id and rid name the body exactly."""
        key = (record_id, rid)
        shared = self._bodies.get(key)
        return shared if shared is not None else self._bodies.put(key, body)

    async def finish(self, results: Sequence[Finished]) -> None:
        if not results:
            return
        gone = [f for f in results if f.outcome is Outcome.GONE]
        async with self._tx("finish") as conn:
            stamps = updated_stamps(results)
            if len({f.delivery_id for f in results}) == len(results):
                await conn.execute(q.FINISH, *_finish_arrays(results, stamps))
            else:
                # A delivery twice in one batch: one statement each, in order, as on SQLite.
                for f, stamp in zip(results, stamps, strict=True):
                    await conn.execute(q.FINISH, *_finish_arrays([f], [stamp]))
            # The disable is stamped with the 410's own time, one statement per attempt time.
            for at in sorted({f.attempt.at for f in gone}):
                ids = [f.delivery_id for f in gone if f.attempt.at == at]
                await conn.execute(q.DISABLE_GONE, ids, GONE_REASON, at)

    async def release(self, delivery_ids: Sequence[int]) -> None:
        if delivery_ids:
            async with self._tx("release") as conn:
                rows = await conn.fetch(q.RELEASE, list(delivery_ids))
                await notify_due(conn, {row[0] for row in rows})

    async def next_due(self, subscriber: str) -> float | None:
        async with self._conn("next due") as conn:
            # A disabled subscriber has nothing due until it is re-enabled (which wakes it).
            if await conn.fetchval(q.SUBSCRIBER_DISABLED, subscriber) is not None:
                return None
            value = await conn.fetchval(q.NEXT_DUE, subscriber)
        return None if value is None else float(value)

    # -- operations ---------------------------------------------------------------------------

    async def set_account_status(
        self, account: str, status: str, error: str | None, now: float
    ) -> None:
        await self._execute("set account status", q.ACCOUNT_STATUS, account, status, error, now)

    async def set_subscriber_disabled(
        self, subscriber: str, reason: str | None, now: float
    ) -> None:
        async with self._tx("set subscriber state") as conn:
            await conn.execute(q.SUBSCRIBER_STATE, subscriber, reason, now)
            if reason is None:
                await forget_circuit(conn, subscriber)
            await conn.execute(q.NOTIFY, [f"subscriber:{subscriber}"])

    async def disabled_subscribers(self) -> dict[str, str]:
        async with self._conn("list disabled subscribers") as conn:
            rows = await conn.fetch(q.DISABLED_SUBSCRIBERS)
        return {row[0]: row[1] for row in rows}

    async def dead_letters(self, subscriber: str | None, limit: int) -> list[DeadLetter]:
        async with self._conn("list dead letters") as conn:
            rows = await conn.fetch(q.DEAD_LETTERS, subscriber, limit)
        return [DeadLetter(*row) for row in rows]

    async def replay(self, subscriber: str | None, ids: Sequence[int] | None, now: float) -> int:
        if ids is not None and not ids:
            return 0
        async with self._tx("replay") as conn:
            rows = await conn.fetch(q.REPLAY, now, subscriber, None if ids is None else list(ids))
            await notify_due(conn, {row[0] for row in rows})
        return len(rows)

    async def stats(self) -> StoreStats:
        # One snapshot for every count, as on SQLite.
        async with (
            self._conn("stats") as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            cursors = await conn.fetch(q.ACCOUNT_CURSORS)
            statuses = await conn.fetch(q.ACCOUNT_STATUSES)
            counts = await conn.fetch(q.STATE_COUNTS)
            states = await conn.fetch(q.SUBSCRIBER_STATES)
            totals = await conn.fetchrow(q.COUNTS)
            result = StoreStats()
            await add_circuits(conn, result.subscribers)
        if totals is not None:
            result.quarantined, result.seen = totals
        for name, newest, last_sweep in cursors:
            account = result.accounts.setdefault(name, AccountState())
            account.cursor, account.last_sweep = newest, last_sweep
        for name, status, error in statuses:
            account = result.accounts.setdefault(name, AccountState())
            account.status, account.error = status, error
        for name, state, count, oldest in counts:
            queue = result.subscribers.setdefault(name, QueueCounts())
            setattr(queue, state, count)
            if state == "pending":
                queue.oldest_pending_at = oldest
        for name, reason, orphaned_at in states:
            queue = result.subscribers.setdefault(name, QueueCounts())
            queue.disabled, queue.orphaned_since = reason, orphaned_at
        return result


async def _fan_out_routed(
    conn: Conn,
    inserted: Sequence[asyncpg.Record],
    routes: dict[int, tuple[str, ...] | None],
    subscribers: list[str],
    at: float,
) -> None:
    """Deliveries for a batch with filtered records: each record to its own subscribers (all of
    the batch's when it has no list), in record order."""
    ids: list[int] = []
    names: list[str] = []
    for record_id, rid in sorted((row[0], row[1]) for row in inserted):
        route = routes[rid]
        for name in subscribers if route is None else dict.fromkeys(route):
            ids.append(record_id)
            names.append(name)
    if ids:
        await conn.execute(q.FAN_OUT_PAIRS, ids, names, at)
        await notify_due(conn, set(names))


def _finish_arrays(results: Sequence[Finished], stamps: Sequence[float]) -> list[list[Any]]:
    """The results as the parallel arrays :data:`sql.FINISH` expands."""
    columns: list[list[Any]] = [[] for _ in range(10)]
    for f, stamp in zip(results, stamps, strict=True):
        a = f.attempt
        row = (f.delivery_id, a.at, a.status, _text(a.error), a.latency_ms, _text(a.response),
               STATE_AFTER[f.outcome], due_after(f), f.token, stamp)  # fmt: skip
        for column, value in zip(columns, row, strict=True):
            column.append(value)
    return columns


def _text(value: str | None) -> str | None:
    """``value`` as PostgreSQL ``text`` can hold it: no NUL, no lone surrogate (a receiver's
    error text may carry either; SQLite takes them, and an attempt must never fail to save)."""
    if value is None:
        return None
    value = value.replace("\x00", "\ufffd")
    try:
        value.encode()
    except UnicodeEncodeError:
        value = value.encode(errors="replace").decode()
    return value


def _rowcount(status: str) -> int:
    """The row count of a command tag such as ``DELETE 42``."""
    tail = status.rsplit(" ", 1)[-1]
    return int(tail) if tail.isdigit() else 0
