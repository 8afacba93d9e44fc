"""The SQLite backend: one state file, owned by one relay process.

sqlite3 blocks, so every operation runs on a dedicated worker thread that owns its connection:
the event loop never waits on the disk, and no connection is shared between threads. Every write
and most reads run on the writer's thread; claims run on a second thread with a read connection
of their own (:mod:`relay.store.sqlite.claims`), so that they never wait for an ingest. Each
write is one explicit ``BEGIN IMMEDIATE … COMMIT`` and rolls back as a whole on any error. WAL
with ``synchronous=NORMAL`` makes every commit atomic and durable against a crash of the process
(``kill -9``); only a power loss can drop the last few commits.

The state file, its ``-wal`` and ``-shm`` companions and the lock file hold callers' names and
numbers, so they are private to the relay's user (0600) whatever the umask: the file is created
0600 before SQLite opens it (SQLite gives its companions the main file's mode), and a file left
wider by an older relay is tightened on open. The directory is the operator's (0700 advised).

Ownership is an exclusive ``flock`` on ``<path>.lock``: a second relay on the same file fails
fast with :class:`StoreLocked`, and the OS releases the lock when the owner dies. Because there is
exactly one owner, its claims are leases kept in memory (:mod:`relay.store.sqlite.held`): a
claimed delivery stays ``pending`` in the file, nothing is written to claim it, and a dead
owner's claims end with it. Leases still expire in :meth:`SqliteStore.claim`, as they must for
backends shared by several relays. (A file from a relay that wrote its claims has its
``inflight`` rows made due again when it is opened.)
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import pathlib
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

from relay.core.breaker import Circuit
from relay.core.budget import Charge
from relay.core.errors import StoreError, StoreFull, StoreLocked
from relay.core.journey import Journey, RecentAttempt, RecordQuery, RecordSummary
from relay.core.models import (
    AccountCursor,
    DeadLetter,
    Delivery,
    Finished,
    IngestBatch,
    IngestResult,
    Orphan,
    StoredRecord,
)
from relay.core.status import StoreStats
from relay.store.base import Store
from relay.store.sqlite import ledger, pace, queries, retention
from relay.store.sqlite import sql as q
from relay.store.sqlite.claims import ClaimReader
from relay.store.sqlite.held import Held, overlay_stats
from relay.store.sqlite.single import SingleOwnerMixin
from relay.store.sqlite.threads import ThreadOwned

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")


class SqliteStore(ThreadOwned, SingleOwnerMixin, Store):
    """:class:`Store` on one SQLite file. See the module docstring for the guarantees."""

    def __init__(self, path: str, *, synchronous: str = "NORMAL") -> None:
        if synchronous.upper() not in q.SYNCHRONOUS_MODES:
            raise StoreError(f"unknown sqlite synchronous mode {synchronous!r}")
        self.path = path
        self._synchronous = synchronous.upper()
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        self._claims = ClaimReader(path, self._error)
        self._held = Held()  # the owner's claims: shared by the writer and the claim thread

    # -- lifecycle ----------------------------------------------------------------------------

    async def open(self) -> None:
        if self._executor is not None:
            raise StoreError(f"state file {self.path} is already open")
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="relay-sqlite")
        try:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(executor, self._open_sync)
            await self._claims.open()
        except BaseException:
            executor.shutdown(wait=True)
            self._close_sync()  # in case open was cancelled after it succeeded
            raise
        self._executor = executor

    async def close(self) -> None:
        executor, self._executor = self._executor, None
        if executor is None:
            return
        try:
            await self._claims.close()
            # Queued behind every operation already submitted, so those finish first.
            await asyncio.get_running_loop().run_in_executor(executor, self._close_sync)
        finally:
            executor.shutdown(wait=True)
            self._close_sync()  # no-op unless the queued close was cancelled before it ran

    def _open_sync(self) -> None:
        directory = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(directory):
            raise StoreError(f"cannot open state file {self.path}: no directory {directory}")
        self._lock_fd = _take_lock(self.path)
        try:
            _create_private(self.path)
        except OSError as exc:
            self._close_sync()
            reason = exc.strerror or str(exc)
            raise StoreError(
                f"cannot open state file {self.path}: {reason} "
                "(check that the file and its directory are writable)"
            ) from exc
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            self._close_sync()
            raise self._open_error(exc) from exc
        # The worker thread is the only user; check_same_thread is off only so that close()
        # can still close the connection if the worker is gone.
        self._conn = conn
        try:
            # Check the file is ours before any PRAGMA that writes (WAL mode changes the header):
            # refusing another program's database must leave it exactly as it was.
            q.check_ours(conn, self.path)
            q.configure(conn, self._synchronous)
            _tighten(self.path)  # after check_ours: another program's file is left alone
            q.migrate(conn, self.path)
            queries.register_functions(conn)
            recovered = q.recover(conn)
        except sqlite3.Error as exc:
            self._close_sync()
            raise self._open_error(exc) from exc
        except BaseException:
            self._close_sync()
            raise
        if recovered:
            log.warning("%d deliveries left in flight by a previous run are due again", recovered)

    def _close_sync(self) -> None:
        self._claims.close_sync()
        self._held.clear()
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)  # also drops the flock

    def _open_error(self, exc: sqlite3.Error) -> StoreError:
        if q.is_full(exc):
            return StoreFull(f"cannot open state file {self.path}: the disk is full")
        hint = ""
        if "readonly" in str(exc) or "unable to open" in str(exc):
            hint = " (check that the file and its directory are writable)"
        return StoreError(f"cannot open state file {self.path}: {exc}{hint}")

    async def _on_thread(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn(…)`` on the writer's thread: releases and renewals of held claims, in order
        with the results queued before them."""
        if self._executor is None:
            raise StoreError(f"state file {self.path} is not open")
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, lambda: fn(*args, **kwargs)
        )

    def _error(self, op: str, exc: sqlite3.Error) -> StoreError:
        # sqlite's messages name the failure, never the bound parameter values.
        if q.is_full(exc):
            return StoreFull(f"state file {self.path}: disk full, {op} refused")
        return StoreError(f"state file {self.path}: {op} failed: {exc}")

    # -- ingest -------------------------------------------------------------------------------

    async def load_cursor(self, account: str) -> AccountCursor:
        return await self._run("load cursor", q.load_cursor, account)

    async def load_cursors(self, accounts: Sequence[str]) -> dict[str, AccountCursor]:
        return await self._run("load cursors", q.load_cursors, accounts)

    async def ingest(self, batch: IngestBatch) -> IngestResult:
        return await self._run("ingest", q.ingest, batch)

    async def mark_swept(self, account: str, at: float, anchor: str | None) -> None:
        await self._run("mark swept", q.execute, q.SQL_MARK_SWEPT, (account, at, anchor))

    async def prune_seen(self, account: str, older_than_ts: str, seen_before: float) -> int:
        return await self._run(
            "prune seen", q.execute, q.SQL_PRUNE_SEEN, (account, older_than_ts, seen_before)
        )

    # Durable here, not in SingleOwnerMixin's memory: a restart must not refill the bucket.
    async def spend_budget(
        self, key_id: str, now: float, requests: int, per: float, burst: int | None = None
    ) -> float:
        return await self._run(
            "spend budget", ledger.spend_budget, key_id, now, requests, per, burst
        )

    async def spend_budgets(self, charges: Sequence[Charge]) -> list[float]:
        # One trip to the store's thread and one commit for the accounts of one slot.
        return await self._run("spend budget", ledger.spend_budgets, charges)

    async def pause_budget(self, key_id: str, until: float) -> None:
        await self._run("pause budget", ledger.pause_budget, key_id, until)

    # -- delivery -----------------------------------------------------------------------------

    async def claim(self, subscriber: str, limit: int, now: float, lease: float) -> list[Delivery]:
        return await self._claims.run(
            "claim", q.claim, subscriber, limit, now, lease, self._claims.bodies, self._held
        )

    async def finish(self, results: Sequence[Finished]) -> None:
        if results:
            await self._run("finish", q.finish, results, self._held)

    async def release(self, delivery_ids: Sequence[int]) -> None:
        if delivery_ids:
            await self._on_thread(self._held.drop, delivery_ids)

    async def next_due(self, subscriber: str) -> float | None:
        return await self._claims.run("next due", q.next_due, subscriber, self._held)

    async def claim_head(self, subscriber: str, now: float, lease: float) -> Delivery | None:
        return await self._claims.run(
            "claim head", pace.claim_head, subscriber, now, lease, self._claims.bodies, self._held
        )

    async def head_due(self, subscriber: str) -> float | None:
        return await self._claims.run("head due", pace.head_due, subscriber, self._held)

    async def due_times(self) -> dict[str, float]:
        return await self._run("due times", pace.due_times, self._held)

    async def requeue_retries(self, subscriber: str) -> int:
        return await self._run("requeue retries", pace.requeue_retries, subscriber, self._held)

    async def load_circuits(self) -> dict[str, Circuit]:
        return await self._run("load circuits", pace.load_circuits)

    async def save_circuit(self, subscriber: str, circuit: Circuit, now: float) -> None:
        await self._run("save circuit", pace.save_circuit, subscriber, circuit, now)

    # -- operations ---------------------------------------------------------------------------

    async def set_account_status(
        self, account: str, status: str, error: str | None, now: float
    ) -> None:
        params = (account, status, error, now)
        await self._run("set account status", q.execute, q.SQL_ACCOUNT_STATUS, params)

    async def set_subscriber_disabled(
        self, subscriber: str, reason: str | None, now: float
    ) -> None:
        await self._run("set subscriber state", pace.set_disabled, subscriber, reason, now)

    async def disabled_subscribers(self) -> dict[str, str]:
        return await self._run("list disabled subscribers", q.disabled_subscribers)

    async def dead_letters(self, subscriber: str | None, limit: int) -> list[DeadLetter]:
        return await self._run("list dead letters", q.dead_letters, subscriber, limit)

    async def replay(self, subscriber: str | None, ids: Sequence[int] | None, now: float) -> int:
        return await self._run("replay", q.replay, subscriber, ids, now)

    async def prune_delivered(self, before: float) -> int:
        # One short transaction per chunk, each its own job, so claims and finishes queued on
        # the thread are not stuck behind a large prune.
        total, after = 0, (float("-inf"), 0)
        while True:
            pruned, last = await self._run("prune delivered", q.prune_chunk, before, after)
            total += pruned
            if last is None:
                return total
            after = last

    async def stats(self) -> StoreStats:
        return await self._run("stats", _stats, self._held)

    # -- retention: one chunk per job, so claims and finishes interleave ------------------------

    async def prune_dead(self, before: float) -> int:
        return await self._chunked("prune dead letters", retention.prune_dead_chunk, before)

    async def prune_quarantine(self, before: float) -> int:
        return await self._chunked("prune quarantine", retention.prune_quarantine_chunk, before)

    async def find_orphans(self, configured: Sequence[str], now: float) -> list[Orphan]:
        return await self._run("find orphans", retention.find_orphans, list(configured), now)

    async def purge_orphans(self, before: float) -> int:
        return await self._chunked("purge orphans", retention.purge_orphans_chunk, before)

    async def _chunked(
        self, op: str, chunk: Callable[[sqlite3.Connection, float], int], before: float
    ) -> int:
        total = 0
        while True:
            done = await self._run(op, chunk, before)
            total += done
            if done < retention.CHUNK:
                return total

    # -- claims held past their lease (the rest of the multi-instance part: single.py) ---------

    async def renew_claims(self, claims: Sequence[Delivery], now: float, lease: float) -> list[int]:
        # No fencing here: this process is the only one that can hold a claim.
        if not claims:
            return []
        return sorted(await self._on_thread(self._held.renew, [c.id for c in claims], now + lease))

    async def release_claims(self, claims: Sequence[Delivery]) -> None:
        await self.release([c.id for c in claims])

    async def recent_records(self, limit: int) -> list[StoredRecord]:
        return await self._run("list records", q.recent_records, limit)

    async def journey(self, account: str, rid: int) -> Journey:
        return await self._run("journey", queries.journey, account, rid, self._held.state)

    async def find_records(self, query: RecordQuery) -> list[RecordSummary]:
        return await self._run("find records", queries.find_records, query, self._held.state)

    async def redeliver(self, delivery_id: int, now: float) -> bool:
        return await self._run("redeliver", queries.redeliver, delivery_id, now)

    async def recent_attempts(self, limit: int) -> list[RecentAttempt]:
        return await self._run("recent attempts", queries.recent_attempts, limit, self._held.state)

    async def delivery_subscriber(self, delivery_id: int) -> str | None:
        return await self._run("find delivery", queries.delivery_subscriber, delivery_id)

    async def backup(self, target: str) -> None:
        try:
            await self._run("backup", queries.backup, target)
        except OSError as exc:
            raise StoreError(f"cannot write backup {target}: {exc.strerror or exc}") from exc


def _stats(conn: sqlite3.Connection, held: Held) -> StoreStats:
    return overlay_stats(conn, held, q.stats(conn))


def integrity_check(path: str) -> str:
    """Run ``PRAGMA integrity_check`` on a state file (read-only); ``"ok"`` when healthy."""
    uri = f"{pathlib.Path(path).absolute().as_uri()}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as conn:
        rows = conn.execute("PRAGMA integrity_check").fetchall()
    return "\n".join(str(row[0]) for row in rows)


# -- opening --------------------------------------------------------------------------------------


PRIVATE = 0o600
_COMPANIONS = ("", "-wal", "-shm", "-journal", ".lock")


def _create_private(path: str) -> None:
    """Create the state file, empty and 0600, unless it exists (then it is left as it is).

    Creating it ourselves, with an explicit mode, is what makes SQLite's ``-wal`` and ``-shm``
    private too: SQLite creates them with the main file's permissions. No umask change: the
    umask is process-wide and this runs on the store's thread.
    """
    os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, PRIVATE))


def _tighten(path: str) -> None:
    """Narrow the state file and its companions to the owner (a file made by an older relay,
    or copied in, may be world-readable). A file we may not chmod is reported, not fatal."""
    for suffix in _COMPANIONS:
        name = path + suffix
        try:
            mode = os.stat(name).st_mode
            if mode & 0o077:
                os.chmod(name, mode & 0o700)
                log.info("state file %s was readable by others: now 0600", name)
        except FileNotFoundError:
            continue
        except OSError as exc:
            log.warning("cannot make %s private: %s", name, exc.strerror or exc)


def _take_lock(path: str) -> int:
    lock_path = f"{path}.lock"
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, PRIVATE)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise StoreError(
            f"cannot open state file {path}: cannot create {lock_path}: {reason}"
        ) from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise StoreLocked(f"state file {path} is in use by another relay process") from None
        raise StoreError(f"cannot lock state file {path}: {exc.strerror}") from exc
    return fd
