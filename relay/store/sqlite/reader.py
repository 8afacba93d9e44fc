"""A read-only view of a state file that a running relay owns: ``relay status``, ``inspect`` and
``dead-letters`` work while the relay runs.

The owner holds an exclusive lock on ``<path>.lock``; this reader does not take it. It opens the
file with ``mode=ro`` (WAL lets readers see the last commit while the owner writes) and never
writes, migrates or recovers anything.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import sqlite3
from concurrent.futures import ThreadPoolExecutor

from relay.core.errors import StoreError
from relay.core.journey import Journey, RecentAttempt, RecordQuery, RecordSummary
from relay.core.models import DeadLetter, StoredRecord
from relay.core.status import StoreStats
from relay.store.base import StoreReader
from relay.store.sqlite import queries
from relay.store.sqlite import sql as q
from relay.store.sqlite.threads import ThreadOwned


class SqliteSnapshotReader(ThreadOwned, StoreReader):
    """:class:`StoreReader` on a state file, read-only and without its lock."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None

    async def open(self) -> None:
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="relay-sqlite-ro")
        try:
            self._conn = await asyncio.get_running_loop().run_in_executor(executor, self._connect)
        except BaseException:
            executor.shutdown(wait=True)
            raise
        self._executor = executor

    def _connect(self) -> sqlite3.Connection:
        if not os.path.exists(self.path):
            raise StoreError(f"no state file {self.path} (has the relay run yet?)")
        uri = f"{pathlib.Path(self.path).absolute().as_uri()}?mode=ro"
        try:
            conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA busy_timeout = 5000")
            q.check_current(conn, self.path)
            queries.register_functions(conn)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read state file {self.path}: {exc}") from exc
        return conn

    async def close(self) -> None:
        executor, self._executor = self._executor, None
        conn, self._conn = self._conn, None
        if executor is not None:
            if conn is not None:
                await asyncio.get_running_loop().run_in_executor(executor, conn.close)
            executor.shutdown(wait=True)

    def _error(self, op: str, exc: sqlite3.Error) -> StoreError:
        return StoreError(f"state file {self.path}: {op} failed: {exc}")

    async def stats(self) -> StoreStats:
        return await self._run("stats", q.stats)

    async def dead_letters(self, subscriber: str | None, limit: int) -> list[DeadLetter]:
        return await self._run("list dead letters", q.dead_letters, subscriber, limit)

    async def disabled_subscribers(self) -> dict[str, str]:
        return await self._run("list disabled subscribers", q.disabled_subscribers)

    async def journey(self, account: str, rid: int) -> Journey:
        return await self._run("journey", queries.journey, account, rid)

    async def find_records(self, query: RecordQuery) -> list[RecordSummary]:
        return await self._run("find records", queries.find_records, query)

    async def recent_attempts(self, limit: int) -> list[RecentAttempt]:
        return await self._run("recent attempts", queries.recent_attempts, limit)

    async def delivery_subscriber(self, delivery_id: int) -> str | None:
        return await self._run("find delivery", queries.delivery_subscriber, delivery_id)

    async def recent_records(self, limit: int) -> list[StoredRecord]:
        return await self._run("list records", q.recent_records, limit)

    async def backup(self, target: str) -> None:
        # The online backup only reads the source: it needs neither the owner's lock nor write
        # access, and it copies one consistent snapshot while the relay keeps writing.
        try:
            await self._run("backup", queries.backup, target)
        except OSError as exc:
            raise StoreError(f"cannot write backup {target}: {exc.strerror or exc}") from exc
