"""The results writer: every worker's attempt results, written back in batched transactions."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from relay.core.aio import wait_any
from relay.core.errors import StoreError
from relay.core.models import Finished
from relay.store.base import Store

log = logging.getLogger(__name__)

STORE_RETRY = 1.0  # after the store refused a write, try again this much later


class ResultWriter:
    """Collects attempt results from every worker and writes them in batched transactions.

    One commit per delivery caps SQLite at a few thousand per second; batching keeps the store
    off the critical path. A crash between a POST and the flush only causes a redelivery with
    the same webhook-id (at-least-once), never a loss.
    """

    def __init__(self, store: Store, max_batch: int = 512, max_delay: float = 0.02) -> None:
        self._store = store
        self._max_batch = max_batch
        self._max_delay = max_delay
        self._pending: list[Finished] = []
        # delivery id -> subscriber to wake once that result is written (retries: until then
        # the store still shows the delivery leased, and nothing else would look again).
        self._wakes: dict[int, str] = {}
        self.on_written: Callable[[str], None] | None = None
        self._wake = asyncio.Event()
        self._full = asyncio.Event()
        self.written = 0

    def put(self, result: Finished, wake: str | None = None) -> None:
        """Queue a result; ``wake`` names a subscriber to wake (:attr:`on_written`) once it is
        in the store."""
        self._pending.append(result)
        if wake is not None:
            self._wakes[result.delivery_id] = wake
        self._wake.set()
        if len(self._pending) >= self._max_batch:
            self._full.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Flush continuously until ``stop``; then flush what is left and return."""
        while not stop.is_set():
            await wait_any([self._wake, stop], timeout=None)
            # A short pause lets a burst of results gather into one transaction.
            await wait_any([self._full, stop], timeout=self._max_delay)
            self._wake.clear()
            self._full.clear()
            # Only what has gathered so far: results that arrive during this write wait for
            # the next pause, so that each transaction carries a pause's worth of them rather
            # than the handful that arrived while the previous one was committing.
            if not await self.flush(len(self._pending)):
                await wait_any([stop], timeout=STORE_RETRY)
        if not await self.flush():
            # The store refuses writes at shutdown: these deliveries stay leased in the store
            # and are retried after a restart (at-least-once), never lost.
            log.error("could not record %d delivery results at shutdown", len(self._pending))

    async def flush(self, count: int | None = None) -> bool:
        """Write the first ``count`` pending results (default: all, including any that arrive
        meanwhile). Returns False if the store refused (they are kept for later)."""
        left = count
        while self._pending and (left is None or left > 0):
            batch = self._pending[: self._max_batch if left is None else min(left, self._max_batch)]
            try:
                await self._store.finish(batch)
            except StoreError as exc:
                log.error("cannot record delivery results (will retry): %s", exc)
                return False
            del self._pending[: len(batch)]
            self.written += len(batch)
            if self._wakes:
                self._woken(batch)
            if left is not None:
                left -= len(batch)
        return True

    def _woken(self, batch: list[Finished]) -> None:
        names = {self._wakes.pop(f.delivery_id, None) for f in batch}
        names.discard(None)
        if self.on_written is not None:
            for name in names:
                assert name is not None
                self.on_written(name)
