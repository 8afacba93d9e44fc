"""One account's poller lease on a shared store: only the holder polls the account.

Several relay instances on one database each run a poller for every account; before each
request a poller makes sure it holds the account's lease (:meth:`AccountLease.hold`). The
holder renews it with every poll; one that dies stops renewing, and another instance takes the
account over once the lease has run out (within ``cluster.lease_ttl`` plus one retry).

The lease is judged on this process's own clock, conservatively: it is taken to end ``ttl``
after the moment we *asked* for it, which is never later than the store's expiry. A request
starts only inside that span, so two instances' requests for one account never interleave.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from relay.core.errors import RelayError, StoreError
from relay.core.fastlog import WRITE_NOW
from relay.store.base import Store

log = logging.getLogger(__name__)


class LeaseLost(RelayError):
    """The account's lease ran out before a request left: nothing was sent, and the instance
    that holds the lease now polls the account (internal to the poller)."""


class LeaseShare:
    """How many account leases this instance should hold: an even share of the accounts among
    the live instances, so that N instances split the polling instead of the first one taking
    every account.

    An instance below its share takes free accounts; one above it (it was alone when the
    others started) gives one back per poll until it is not. An instance at its share does not
    even ask about the accounts it does not hold, which keeps idle instances off the database.
    ``live`` is kept current by the heartbeat (:mod:`relay.runtime.cluster`), ``accounts`` by
    the wiring (a reload may add or remove accounts).
    """

    def __init__(self, accounts: int) -> None:
        self.accounts = accounts
        self.live = 1
        self.held = 0

    def quota(self) -> int:
        return -(-self.accounts // max(1, self.live))

    def may_take(self) -> bool:
        return self.held < self.quota()

    def over(self) -> bool:
        return self.held > self.quota()


class AccountLease:
    """The lease of ``account`` as held (or not) by ``owner``."""

    def __init__(
        self,
        store: Store,
        account: str,
        owner: str,
        ttl: float,
        clock: Callable[[], float] = time.time,
        share: LeaseShare | None = None,
    ) -> None:
        self._store = store
        self._share = share
        self._counted = False  # counted in share.held
        self.account = account
        self.owner = owner
        self.ttl = ttl
        self._clock = clock
        self._until = float("-inf")  # our conservative view of when the lease ends
        self.taken = 0  # how often we started holding it (for status and tests)

    @property
    def retry_every(self) -> float:
        """How often an instance that does not hold the lease asks again."""
        return self.ttl / 3

    def held(self) -> bool:
        """True while the lease, as last renewed, has not run out on our clock."""
        return self._clock() < self._until

    def remaining(self) -> float:
        """Seconds until the lease, as last renewed, runs out (0 when not held)."""
        return max(0.0, self._until - self._clock())

    def lapse(self) -> None:
        """Forget that we hold it (the instance was declared dead, or a poll was abandoned):
        the next :meth:`hold` is fresh."""
        self._until = float("-inf")
        self._uncount()

    def _uncount(self) -> None:
        if self._counted and self._share is not None:
            self._share.held -= 1
        self._counted = False

    def should_shed(self) -> bool:
        """True when we hold it but hold more than our share: give it to another instance."""
        return self._share is not None and self.held() and self._share.over()

    async def hold(self) -> tuple[bool, bool]:
        """Take or renew the lease. Returns ``(held, fresh)``: ``fresh`` when we did not hold it
        a moment ago, so another instance may have polled meanwhile and the caller must take up
        the account's durable position again. A store error counts as not held."""
        was_held = self.held()
        if not was_held:
            self._uncount()  # ran out on our clock since the last poll
            if self._share is not None and not self._share.may_take():
                return False, False  # our share is full: leave it to the others, unasked
        asked = self._clock()
        try:
            ok = await self._store.acquire_account_lease(self.account, self.owner, self.ttl, asked)
        except StoreError as exc:
            log.warning(
                "cannot renew the account lease: not polling until it can: %s",
                exc,
                extra={"account": self.account},
            )
            ok = False
        if not ok:
            if was_held:
                log.warning(
                    "account lease lost by instance %s: another instance polls this account",
                    self.owner,
                    extra={"account": self.account},
                )
            self._until = float("-inf")
            self._uncount()
            return False, False
        self._until = asked + self.ttl
        if not was_held:
            self.taken += 1
            if self._share is not None:
                self._share.held += 1
                self._counted = True
            log.info(
                "account lease taken by instance %s: it polls the account",
                self.owner,
                extra={"account": self.account, WRITE_NOW: True},
            )
        return True, not was_held

    async def turn(self, load: Callable[[], Awaitable[None]]) -> bool:
        """Whether this instance polls the account now. Hands it over when over our share;
        on taking it (again), ``load`` takes up the account's durable position, which another
        instance may have moved meanwhile."""
        if self.should_shed():
            log.info(
                "instance %s is over its share of accounts: handing this one over",
                self.owner,
                extra={"account": self.account, WRITE_NOW: True},
            )
            await self.release()
            return False
        held, fresh = await self.hold()
        if held and fresh:
            try:
                await load()
            except StoreError as exc:
                log.error("cannot load the cursor: %s", exc, extra={"account": self.account})
                await self.release()
                return False
        return held

    async def before_request(self) -> None:
        """Make sure the request about to leave starts well inside the lease: renewed when a
        third of it has passed (a long budget wait). :class:`LeaseLost` when it is gone."""
        if self.remaining() >= self.ttl * 2 / 3:
            return
        held, fresh = await self.hold()
        if not held or fresh:
            self.lapse()  # held again: take up the durable position first
            raise LeaseLost("account lease lost while waiting for the budget")

    async def release(self) -> None:
        """Give the lease up (shutdown) so another instance takes over at once."""
        self._until = float("-inf")
        self._uncount()  # before the await: another poller deciding to shed sees it at once
        try:
            await self._store.release_account_lease(self.account, self.owner)
        except StoreError as exc:
            # It runs out by itself within ttl.
            log.warning(
                "cannot release the account lease: %s", exc, extra={"account": self.account}
            )
