"""The storage interface: the one narrow seam between the pipeline and a database.

The pipeline (poller, dispatcher, admin, CLI) talks only to :class:`Store`. Backends live in
sibling modules (``sqlite`` now, ``postgres`` later) and are picked from a URL by
:func:`relay.runtime.stores.open_store`. Every method is a coroutine: a backend whose driver
blocks runs it off the event loop. All times are wall-clock epoch seconds passed in by the
caller, so behaviour is reproducible in tests.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from typing import ClassVar

from relay.core.breaker import Circuit
from relay.core.budget import Charge
from relay.core.errors import StoreError
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

Wakeup = Callable[[str, str], None]
"""A wake-up callback of :meth:`Store.listen`: ``(kind, subject)``, called on the event loop."""


class StoreReader(abc.ABC):
    """The read-only queries the operator surfaces need (status, dead letters, a call's
    journey, record search). A :class:`Store` is one; so is a snapshot reader that inspects a
    state file owned by a running relay without taking it over.

    The journey and search queries are not abstract so that a backend can ship before it has
    them; such a backend answers them with :class:`StoreError`.
    """

    @abc.abstractmethod
    async def open(self) -> None:
        """Open (a :class:`Store` also creates or migrates the schema and takes ownership;
        single-writer backends lock here)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Flush and release everything; safe to call twice."""

    @abc.abstractmethod
    async def stats(self) -> StoreStats:
        """Counts for status output, from one consistent snapshot: per account, per subscriber
        and per state."""

    @abc.abstractmethod
    async def dead_letters(self, subscriber: str | None, limit: int) -> list[DeadLetter]:
        """Dead-lettered deliveries, newest first."""

    @abc.abstractmethod
    async def disabled_subscribers(self) -> dict[str, str]:
        """Names of disabled subscribers with the reason."""

    async def journey(self, account: str, rid: int) -> Journey:
        """Everything stored about ``(account, rid)``, from one snapshot: the record, each
        delivery with all its attempts (oldest first; webhook ids are left for the caller),
        quarantine entries whose raw record carries this rid, and whether the rid is seen.
        ``missing`` is left empty: explaining absences needs the configuration."""
        raise StoreError(f"{type(self).__name__} cannot show a record's journey yet")

    async def find_records(self, query: RecordQuery) -> list[RecordSummary]:
        """Stored records matching ``query``, newest ``call_timestamp`` first, at most
        ``query.limit``; each with its delivery state per subscriber."""
        raise StoreError(f"{type(self).__name__} cannot search records yet")

    async def recent_attempts(self, limit: int) -> list[RecentAttempt]:
        """The latest ``limit`` delivery attempts, newest first (cheap: by insertion order)."""
        raise StoreError(f"{type(self).__name__} cannot list recent attempts yet")

    async def delivery_subscriber(self, delivery_id: int) -> str | None:
        """The subscriber delivery ``delivery_id`` belongs to (None: no such delivery)."""
        raise StoreError(f"{type(self).__name__} cannot look up deliveries yet")

    async def recent_records(self, limit: int) -> list[StoredRecord]:
        """The ``limit`` records stored last, newest first, whatever their deliveries (for
        ``relay check-config --explain``). Not abstract: a backend without it says so."""
        raise StoreError("this state backend cannot list stored records")

    async def backup(self, target: str) -> None:
        """Write a consistent copy of the whole state to ``target`` while the relay runs."""
        raise StoreError(f"{type(self).__name__} cannot back up; use the database's own tools")


class Store(StoreReader):
    """Durable state: cursors, de-dup memory, records, per-subscriber delivery queues.

    The second half of the interface (instances, leases, fenced claims, budgets, wake-ups) is
    what several relay instances on one shared database need. A single-owner backend (SQLite)
    implements it trivially but with the same observable contract, so the pipeline calls it
    the same way whatever the backend. :meth:`open` also makes a single-owner backend's
    deliveries left in flight by a previous run due again; a shared one cannot know who holds
    them (see :meth:`recover_dead_instances`).
    """

    shared: ClassVar[bool] = False
    """True when several relay instances may use this store at once (PostgreSQL)."""

    # -- ingest -------------------------------------------------------------------------------

    @abc.abstractmethod
    async def load_cursor(self, account: str) -> AccountCursor:
        """The account's durable poll position (empty for an account never polled)."""

    @abc.abstractmethod
    async def load_cursors(self, accounts: Sequence[str]) -> dict[str, AccountCursor]:
        """:meth:`load_cursor` of every one of ``accounts``, keyed by account, in one query."""

    @abc.abstractmethod
    async def ingest(self, batch: IngestBatch) -> IngestResult:
        """In one transaction: store the new records, mark their rids seen, enqueue one delivery
        per (new record, subscriber), keep quarantined records aside, and advance the cursor.

        A record's subscribers are ``batch.subscribers`` unless its ``CallRecord.subscribers``
        is a tuple (filters at ingest): then exactly those, and none at all for an empty tuple --
        the record is still stored and marked seen. Within one subscriber, deliveries are queued
        in record order.

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
        until ``now + lease``. A lease that expires makes the delivery claimable again.

        Each claim is stamped with this store's instance and a fresh :attr:`Delivery.token`;
        on a shared store, concurrent claims from several instances never return the same
        delivery (rows being claimed elsewhere are skipped, not waited for).

        Deliveries of one record share one ``body`` object, across claims and subscribers,
        while it is recent (:class:`relay.store.bodies.BodyCache`): the memory a large record
        takes must not grow with the number of subscribers it goes to. Callers never mutate
        or concatenate a body."""

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

    # -- delivery pace: head of the queue, circuit breaker and pause --------------------------
    #
    # A subscriber with ``ordering: fifo``, or whose circuit is open, sends only the head of
    # its queue: its oldest unfinished delivery in queue order (ingest order, i.e. by id),
    # whatever the other deliveries' due times, one at a time.

    @abc.abstractmethod
    async def claim_head(self, subscriber: str, now: float, lease: float) -> Delivery | None:
        """Lease the subscriber's oldest pending delivery (queue order) until ``now + lease``
        if it is due at ``now``; None when it is not due yet, there is none, the subscriber is
        disabled, or another of its deliveries is leased (one in flight, across instances on a
        shared store). Deliveries behind the head are never returned, even when due."""

    @abc.abstractmethod
    async def head_due(self, subscriber: str) -> float | None:
        """When the subscriber's oldest pending delivery is due (None: none, or disabled)."""

    @abc.abstractmethod
    async def due_times(self) -> dict[str, float]:
        """Each enabled subscriber with pending or leased deliveries, and the earliest time
        one is due (``next_at``, or a lease's expiry): one query for a whole relay's start."""

    @abc.abstractmethod
    async def requeue_retries(self, subscriber: str) -> int:
        """Give the subscriber's pending deliveries that have failed before their place in the
        queue back (due from when their record was received): called when its circuit closes,
        so the backlog drains oldest first. Returns how many."""

    @abc.abstractmethod
    async def load_circuits(self) -> dict[str, Circuit]:
        """Every subscriber's saved breaker and pause state; absent ones are closed."""

    @abc.abstractmethod
    async def save_circuit(self, subscriber: str, circuit: Circuit, now: float) -> None:
        """Remember the subscriber's breaker and pause state as of ``now`` (a closed circuit
        without failures or pause may be stored as absent)."""

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
        are not claimed for, and their deliveries are kept. Re-enabling also resets the
        subscriber's circuit (closed, no failures, no pause) in the same commit."""

    @abc.abstractmethod
    async def replay(self, subscriber: str | None, ids: Sequence[int] | None, now: float) -> int:
        """Put dead letters back in their queues (all, one subscriber's, or by id) with a fresh
        retry schedule. Returns how many."""

    @abc.abstractmethod
    async def prune_delivered(self, before: float) -> int:
        """Delete records (and their attempts) whose every delivery succeeded before ``before``,
        in bounded batches. On a shared store only one instance prunes at a time: while another
        does, this returns 0 at once."""

    # -- retention (maintenance; every method works in bounded batches) -------------------------

    @abc.abstractmethod
    async def prune_dead(self, before: float) -> int:
        """Delete dead letters (and their attempts) that died before ``before``. Their records
        go with the next :meth:`prune_delivered` once nothing else needs them."""

    @abc.abstractmethod
    async def prune_quarantine(self, before: float) -> int:
        """Forget quarantined records last seen before ``before``."""

    @abc.abstractmethod
    async def find_orphans(self, configured: Sequence[str], now: float) -> list[Orphan]:
        """Subscribers with deliveries in the store that are not in ``configured``, sorted by name.

        Each is stamped orphaned at ``now`` the first time it is found (kept across restarts);
        a configured subscriber loses its stamp, so one configured again keeps its deliveries.
        """

    @abc.abstractmethod
    async def purge_orphans(self, before: float) -> int:
        """Delete the deliveries (and attempts) of subscribers orphaned before ``before``."""

    # -- several instances: registry ----------------------------------------------------------
    #
    # An instance registers once with a unique id and heartbeats well within ``ttl``. Its
    # claims carry that id as their owner. An instance whose heartbeat is older than its ttl is
    # dead: :meth:`recover_dead_instances`, run by any live instance now and then, makes its
    # claims due again and frees its account leases. Claims whose lease expires are claimable
    # anyway; recovery only makes a dead instance's work come back sooner.

    @abc.abstractmethod
    async def register_instance(self, instance_id: str, now: float, ttl: float) -> None:
        """Record ``instance_id`` as alive until ``now + ttl`` (again, if it was known), and
        stamp this store's claims with it from now on."""

    @abc.abstractmethod
    async def heartbeat(self, instance_id: str, now: float, ttl: float) -> bool:
        """Extend the instance's life to ``now + ttl``. False when it is not registered (it was
        declared dead and recovered): its claims and leases are gone, so it must stop what it
        holds and register again."""

    @abc.abstractmethod
    async def live_instances(self, now: float) -> list[str]:
        """Ids of the instances alive at ``now``, sorted (for status)."""

    @abc.abstractmethod
    async def recover_dead_instances(self, now: float) -> int:
        """Forget the instances dead at ``now`` (alive-until ``<= now``); in the same commit make
        their in-flight deliveries pending (due at once, attempts unchanged) and drop their
        account leases. Returns how many deliveries came back. Safe to run on several instances
        at once: each dead instance is recovered exactly once."""

    # -- several instances: one poller per account --------------------------------------------

    @abc.abstractmethod
    async def acquire_account_lease(self, account: str, owner: str, ttl: float, now: float) -> bool:
        """Try to become (or stay) the one poller of ``account`` until ``now + ttl``.

        True when ``owner`` holds the lease afterwards: there was none, ``owner`` already held
        it (this renews it), or the previous holder's expired (``expires <= now``; taken over).
        False while another owner's lease is live. Atomic across instances.
        """

    @abc.abstractmethod
    async def renew_account_lease(self, account: str, owner: str, ttl: float, now: float) -> bool:
        """Extend ``owner``'s lease to ``now + ttl``. False when ``owner`` no longer holds it
        (released, recovered, or taken over after it expired): the caller must stop polling
        the account before its next request."""

    @abc.abstractmethod
    async def release_account_lease(self, account: str, owner: str) -> None:
        """Give the lease up (shutdown) so another instance takes over at once; a no-op when
        ``owner`` does not hold it."""

    @abc.abstractmethod
    async def account_lease_holders(self, now: float) -> dict[str, str]:
        """Account -> owner of every lease live at ``now`` (for status)."""

    # -- several instances: fenced claims -----------------------------------------------------
    #
    # Every claim carries a fencing token (:attr:`Delivery.token`). A :class:`Finished` with
    # ``token`` set, and the two methods below, act only while that same claim still stands:
    # once a lease expires and another claim takes the delivery (or recovery resets it), the
    # old holder's late result or release changes nothing but the attempt log.

    @abc.abstractmethod
    async def renew_claims(self, claims: Sequence[Delivery], now: float, lease: float) -> list[int]:
        """Extend the lease of each claim still held to ``now + lease`` (while an attempt runs
        longer than the lease it was claimed with). Returns the ids renewed, sorted; a claim
        missing from the answer was lost, and its result will not be applied."""

    @abc.abstractmethod
    async def release_claims(self, claims: Sequence[Delivery]) -> None:
        """:meth:`release`, fenced: hand back only the claims still held."""

    # -- several instances: shared API budgets ------------------------------------------------

    @abc.abstractmethod
    async def spend_budget(
        self, key_id: str, now: float, requests: int, per: float, burst: int | None = None
    ) -> float:
        """Try to spend one upstream request of key ``key_id`` at ``now``, atomically across
        every instance on this store.

        Returns 0.0 when the request may be sent (it is charged), else the seconds to wait
        before asking again (nothing charged). The budget is the leaky bucket of
        :func:`relay.core.budget.bucket_params` (``burst`` defaults to
        :func:`~relay.core.budget.default_burst`), so no window of ``per`` seconds ever admits
        more than ``requests``, whichever instances spend. A pause (:meth:`pause_budget`) in
        force makes it answer the rest of the pause. ``key_id`` names the key without being it
        (never pass the API key itself). Instances' clocks must agree (NTP); time never runs
        backwards in the bucket. The bucket is durable: the charge is committed before this
        returns, so a restarted relay starts from what its predecessor spent (and a request
        is paid for before it leaves).
        """

    async def spend_budgets(self, charges: Sequence[Charge]) -> list[float]:
        """:meth:`spend_budget` for each of ``charges``, in order and exactly as if one after
        the other (a later charge of a key sees what an earlier one spent); the answers in the
        same order. A backend that can commits them together (SQLite: one transaction, one
        trip to its thread); either way each charge answered 0 is committed before this
        returns, so every window bound of :meth:`spend_budget` holds, across restarts too.
        This default spends them one by one."""
        return [
            await self.spend_budget(c.key_id, c.now, c.requests, c.per, c.burst) for c in charges
        ]

    @abc.abstractmethod
    async def pause_budget(self, key_id: str, until: float) -> None:
        """Refuse every spend on ``key_id`` until ``until`` (after a 429); a pause only ever
        extends, and is durable like the bucket."""

    # -- several instances: wake-ups ----------------------------------------------------------

    @abc.abstractmethod
    async def listen(self, callback: Wakeup) -> None:
        """Deliver wake-ups from every instance to ``callback(kind, subject)`` until cancelled.

        Kinds: ``due`` (subject: a subscriber that has new due deliveries: ingest, replay,
        release, recovery), ``subscriber`` (a subscriber was disabled or re-enabled), whatever
        :meth:`notify` sends, and ``listening`` (subject empty) each time listening (re)starts:
        wake-ups sent while not listening are lost, so on ``listening`` look at everything
        again. The callback must not block; an exception from it is logged and ignored. A
        lost connection is retried with back-off, never raised. Meant to be run as one
        supervised task. Single-owner backends report ``listening`` once and then just wait.
        """

    @abc.abstractmethod
    async def notify(self, kind: str, subject: str) -> None:
        """Send a wake-up to every listening instance (config changes, operator actions); a
        no-op on single-owner backends. ``kind`` must not contain ``:``."""

    async def redeliver(self, delivery_id: int, now: float) -> bool:
        """Queue a delivered or dead delivery again (due ``now``, a fresh retry schedule; its
        attempt history stays). False if there is no such delivery or it is pending or in
        flight already. The webhook id is derived from the record, so it stays the same."""
        raise StoreError(f"{type(self).__name__} cannot redeliver yet")
