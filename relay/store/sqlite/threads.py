"""A call on the thread that owns its SQLite connection, awaited from the event loop.

sqlite3 blocks, and a connection belongs to one thread: the store's writer, its claim thread
(:mod:`relay.store.sqlite.claims`) and a snapshot reader each own an executor of one worker
and one connection, and every call goes through :func:`run_on` (for an owner that keeps them
as attributes, :meth:`ThreadOwned._run`).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Concatenate, ParamSpec, TypeVar

from relay.core.errors import StoreError

P = ParamSpec("P")
T = TypeVar("T")


async def run_on(
    executor: ThreadPoolExecutor | None,
    conn: sqlite3.Connection | None,
    path: str,
    error: Callable[[str, sqlite3.Error], StoreError],
    op: str,
    fn: Callable[Concatenate[sqlite3.Connection, P], T],
    *args: P.args,
    **kwargs: P.kwargs,
) -> T:
    """Run ``fn(conn, …)`` on ``executor``'s thread; an sqlite error becomes ``error(op, exc)``
    (whose message names the failure, never a bound value). None for either: not open.

    If the awaiting task is cancelled, a call already running still completes (or rolls back)
    as a whole on the thread; one not yet started never runs.
    """
    if executor is None or conn is None:
        raise StoreError(f"state file {path} is not open")
    db = conn

    def call() -> T:
        try:
            return fn(db, *args, **kwargs)
        except sqlite3.Error as exc:
            raise error(op, exc) from exc

    return await asyncio.get_running_loop().run_in_executor(executor, call)


class ThreadOwned:
    """An owner of one executor and one connection: its ``_run`` is :func:`run_on` on them."""

    path: str
    _executor: ThreadPoolExecutor | None
    _conn: sqlite3.Connection | None
    _error: Callable[[str, sqlite3.Error], StoreError]

    async def _run(
        self,
        op: str,
        fn: Callable[Concatenate[sqlite3.Connection, P], T],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        """Run ``fn(conn, …)`` on the owner's thread (see :func:`run_on`)."""
        return await run_on(
            self._executor, self._conn, self.path, self._error, op, fn, *args, **kwargs
        )
