"""Claims on a thread and a read connection of their own, beside the store's writer.

A claim on an SQLite state file writes nothing (the owner's claims are leases in memory, see
:mod:`relay.store.sqlite.held`), so it need not wait for the writer. It used to: every
operation ran on the store's one thread, so a claim issued while the poller stored a large
answer waited for that whole transaction (about 190 ms for 10,000 records), and a subscriber
with its buffer drained sent nothing meanwhile. Measured from outside on one upstream answer
of 20,000 records (bench (10)): no request reached the receiver for 92–170 ms after the first
claim's 256, in every run. In WAL mode a reader never waits for the writer and sees every
commit made before its snapshot begins, so claims, head claims and their next-due questions
now run here, each on one snapshot of their own.

What stays on the writer: every write (ingest, results, releases, budgets), and every reader
that is not on the delivery path (stats, journeys, retention), which keeps its single-thread
view. The two threads share the held claims (:class:`Held` has a lock) and nothing else; the
body cache lives here, used only by claims.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from relay.core.errors import StoreError
from relay.store.bodies import BodyCache
from relay.store.sqlite.threads import ThreadOwned


class ClaimReader(ThreadOwned):
    """The claim thread and its connection (``query_only``: it cannot write the file)."""

    def __init__(self, path: str, error: Callable[[str, sqlite3.Error], StoreError]) -> None:
        self.path = path
        self._error = error  # the store's translation of sqlite errors (no parameter values)
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None
        self.bodies = BodyCache()  # one body object per record, shared by every claim of it

    async def open(self) -> None:
        """Connect (the writer has already created, checked and migrated the file)."""
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="relay-sqlite-claims")
        try:
            await asyncio.get_running_loop().run_in_executor(executor, self._open_sync)
        except BaseException:
            executor.shutdown(wait=True)
            self.close_sync()
            raise
        self._executor = executor

    def _open_sync(self) -> None:
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA query_only = ON")
            conn.execute("PRAGMA busy_timeout = 5000")
            conn.execute("PRAGMA cache_size = -16384")  # 16 MiB: the due index and bodies
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open state file {self.path} for claims: {exc}") from exc
        self._conn = conn

    async def close(self) -> None:
        """After every claim already submitted."""
        executor, self._executor = self._executor, None
        if executor is None:
            return
        try:
            await asyncio.get_running_loop().run_in_executor(executor, self.close_sync)
        finally:
            executor.shutdown(wait=True)
            self.close_sync()

    def close_sync(self) -> None:
        self.bodies.clear()
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    run = ThreadOwned._run  # for the store: claims, head claims, next-due
