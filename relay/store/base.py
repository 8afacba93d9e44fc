"""The storage interface: the one narrow seam between the pipeline and a database.

The pipeline (poller, dispatcher, admin, CLI) talks only to :class:`Store`. Backends live in
sibling modules (``sqlite`` now, ``postgres`` later) and are picked from a URL by
:func:`relay.runtime.stores.open_store`. Every method is a coroutine: a backend whose driver
blocks runs it off the event loop. All times are wall-clock epoch seconds passed in by the
caller, so behaviour is reproducible in tests.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence

from relay.core.models import (
    AccountCursor,
    DeadLetter,
    Delivery,
    Finished,
    IngestBatch,
    IngestResult,
)
from relay.core.status import StoreStats


class Store(abc.ABC):
    """Durable state: cursors, de-dup memory, records, per-subscriber delivery queues."""

    @abc.abstractmethod
    async def open(self) -> None:
        """Create or migrate the schema and take ownership (single-writer backends lock here)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Flush and release everything; safe to call twice."""

    # -- ingest -------------------------------------------------------------------------------

    @abc.abstractmethod
    async def load_cursor(self, account: str) -> AccountCursor:
        """The account's durable poll position (empty for an account never polled)."""

    @abc.abstractmethod
    async def ingest(self, batch: IngestBatch) -> IngestResult:
        """In one transaction: store the new records, mark their rids seen, enqueue one delivery
        per (new record, subscriber), keep quarantined records aside, and advance the cursor.

        Records whose ``(account, rid)`` is already seen are skipped, as are repeats within the
        batch (the first occurrence wins). Only after this returns is a record received.
        """

    @abc.abstractmethod
    async def mark_swept(self, account: str, at: float, anchor: str | None) -> None:
        """Remember when the account's last full look-back sweep succeeded, and the cursor
        right after it (``anchor``), from which the next sweep reads back."""

    @abc.abstractmethod
    async def prune_seen(self, account: str, older_than_ts: str, seen_before: float) -> int:
        """Forget seen rids whose call_timestamp is older than ``older_than_ts`` and that were
        first seen before ``seen_before``. Returns how many were forgotten."""

    # -- delivery -----------------------------------------------------------------------------

    @abc.abstractmethod
    async def claim(self, subscriber: str, limit: int, now: float, lease: float) -> list[Delivery]:
        """Take up to ``limit`` due deliveries for one subscriber, oldest first, leasing them
        until ``now + lease``. A lease that expires makes the delivery claimable again."""

    @abc.abstractmethod
    async def finish(self, results: Sequence[Finished]) -> None:
        """Record attempts and their outcomes (delivered, retry at, dead, gone) in one commit.

        A GONE outcome (the receiver answered 410) also disables its subscriber, with the reason
        ``410 Gone`` and the attempt's time, in the same commit: its deliveries are kept, and
        none is claimed for it until it is re-enabled. The dispatcher relies on this and writes
        a GONE result at once rather than with the batch.
        """

    @abc.abstractmethod
    async def release(self, delivery_ids: Sequence[int]) -> None:
        """Hand claimed deliveries back untouched (shutdown): due again at once."""

    @abc.abstractmethod
    async def next_due(self, subscriber: str) -> float | None:
        """When the subscriber's earliest pending delivery is due (None if none is pending)."""

    # -- operations ---------------------------------------------------------------------------

    @abc.abstractmethod
    async def set_account_status(
        self, account: str, status: str, error: str | None, now: float
    ) -> None:
        """Record an account's health (``ok``, ``auth_failed``, ``backing_off``…) as of ``now``."""

    @abc.abstractmethod
    async def set_subscriber_disabled(
        self, subscriber: str, reason: str | None, now: float
    ) -> None:
        """Disable (reason given) or re-enable (None) a subscriber as of ``now``; disabled ones
        are not claimed for, and their deliveries are kept."""

    @abc.abstractmethod
    async def disabled_subscribers(self) -> dict[str, str]:
        """Names of disabled subscribers with the reason."""

    @abc.abstractmethod
    async def dead_letters(self, subscriber: str | None, limit: int) -> list[DeadLetter]:
        """Dead-lettered deliveries, newest first."""

    @abc.abstractmethod
    async def replay(self, subscriber: str | None, ids: Sequence[int] | None, now: float) -> int:
        """Put dead letters back in their queues (all, one subscriber's, or by id) with a fresh
        retry schedule. Returns how many."""

    @abc.abstractmethod
    async def prune_delivered(self, before: float) -> int:
        """Delete records (and their attempts) whose every delivery succeeded before ``before``."""

    @abc.abstractmethod
    async def stats(self) -> StoreStats:
        """Counts for status output, from one consistent snapshot: per account, per subscriber
        and per state."""
