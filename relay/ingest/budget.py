"""The upstream request budget of one API key: at most ``requests`` in any ``per`` seconds.

WebFones allows a fixed number of requests per window per API key (1000 per 15 minutes today).
Accounts that share a key share one :class:`KeyBudget`. Two layers keep the bound:

* a local leaky bucket (:mod:`relay.core.budget` has the arithmetic) spreads requests evenly;
  its time comes only from the event loop's clock, so tests drive it with virtual time;
* the same bucket kept durably in the store (:meth:`~relay.store.base.Store.spend_budget`):
  every request is paid for there, at wall-clock time, before it leaves. A restarted process
  starts with a fresh local bucket, but the store still holds what its predecessor spent, so
  the first poll after a restart waits if that budget is already spent.

The durable charges of every key go through one :class:`BudgetLedger`, which sends those that
arrive together (the accounts of one schedule slot wake in one turn of the loop) to the store
as one ``spend_budgets`` call: one transaction and one trip to the store's thread for a slot
instead of one per poll, with the same answers and the same commit-before-send guarantee.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from aiolimiter import AsyncLimiter

from relay.core.budget import MAX_PAUSE, Charge, bucket_params, default_burst
from relay.core.errors import StoreError
from relay.store.base import Store

log = logging.getLogger(__name__)

# The shortest sleep on a wait the store asks for: the store counts on the wall clock and we
# sleep on the loop's, so a wait can come back a hair short; this keeps that from spinning.
MIN_STORE_WAIT = 0.01


class BudgetLedger:
    """Sends the durable budget charges of many keys to the store in batches.

    A charge waits at most for the charges already on their way: the first one of a batch
    schedules it for the next turn of the loop (so the other accounts woken in this turn join
    it), and charges arriving while a batch is in the store form the next one, sent as soon as
    that one returns. Each charge is answered exactly as :meth:`Store.spend_budget` would have
    answered it one after the other, and only after the batch committed.
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self._pending: list[tuple[Charge, asyncio.Future[float]]] = []
        self._scheduled = False
        # The batch in the store. A task of its own for one store call (as a request's would
        # be): its answers must reach every charge in it even if the first caller is cancelled.
        self._inflight: asyncio.Task[list[float]] | None = None

    @property
    def queued(self) -> int:
        """Charges waiting for the next batch (for status and tests)."""
        return len(self._pending)

    async def spend(self, charge: Charge) -> float:
        """0.0 once ``charge`` is committed, else the seconds to wait (nothing charged)."""
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[float] = loop.create_future()
        self._pending.append((charge, answer))
        if not self._scheduled and self._inflight is None:
            self._scheduled = True
            loop.call_soon(self._send)
        # Cancelled here, the charge is dropped if its batch has not left yet; if it has, the
        # spend is recorded for a request that never goes out, which only lowers the rate.
        return await answer

    def _send(self) -> None:
        self._scheduled = False
        batch = [(c, answer) for c, answer in self._pending if not answer.done()]
        self._pending = []
        if not batch:
            return
        charges = [charge for charge, _ in batch]
        # Held in self._inflight until its done-callback has answered every charge.
        self._inflight = asyncio.ensure_future(self._store.spend_budgets(charges))
        self._inflight.add_done_callback(lambda done: self._answer(batch, done))

    def _answer(
        self, batch: list[tuple[Charge, asyncio.Future[float]]], done: asyncio.Task[list[float]]
    ) -> None:
        self._inflight = None
        if done.cancelled():
            error: BaseException | None = asyncio.CancelledError()
        else:
            error = done.exception()
        waits = done.result() if error is None else []
        for i, (_, answer) in enumerate(batch):
            if answer.done():
                continue
            if error is None:
                answer.set_result(waits[i])
            elif isinstance(error, asyncio.CancelledError):
                answer.cancel()
            else:
                answer.set_exception(error)
        if self._pending:
            self._send()  # what arrived while that batch was in the store


class KeyBudget:
    """Admits upstream requests for one API key within its budget, and honours 429 pauses.

    ``acquire()`` waits for all of: no pause in force, room in the leaky bucket, and (with a
    ``store``) a charge committed to the durable bucket. ``pause()`` after a 429 stops every
    poller on the key until the pause ends.
    """

    def __init__(
        self,
        requests: int,
        per: float,
        burst: int | None = None,
        *,
        store: Store | None = None,
        key_id: str = "",
        clock: Callable[[], float] = time.time,
        ledger: BudgetLedger | None = None,
    ) -> None:
        self.burst = default_burst(requests) if burst is None else burst
        capacity, period = bucket_params(requests, per, self.burst)
        self.requests = requests
        self.per = per
        self._limiter = AsyncLimiter(capacity, period)
        self._paused_until = float("-inf")  # loop time
        self._store = store
        # Shared by the keys of one relay (the wiring passes it); alone, a ledger of its own.
        self._ledger = ledger if ledger is not None or store is None else BudgetLedger(store)
        self._key_id = key_id
        self._clock = clock  # wall clock, for the store: shared by processes and restarts
        self.waiting = 0  # acquirers currently blocked, for status and tests

    async def acquire(self) -> None:
        """Wait until a request on this key may be sent now (and, with a store, is paid for)."""
        loop = asyncio.get_running_loop()
        self.waiting += 1
        try:
            while True:
                remaining = self._paused_until - loop.time()
                if remaining > 0:
                    # Sleep, then look again: the pause may have been extended meanwhile.
                    await asyncio.sleep(remaining)
                    continue
                await self._limiter.acquire()
                if self._paused_until > loop.time():
                    # A pause began while we queued in the bucket. Sending after it ends would
                    # use a token taken before it, on top of the burst that builds up during the
                    # pause, and break the window bound; so this token is forfeited (which can
                    # only lower the rate) and a fresh one is taken once the pause is over.
                    continue
                wait = await self._pay()
                if wait <= 0:
                    return
                # The budget is spent (by a previous process, or by another relay on a shared
                # store): the token is forfeited too, and everything is checked again after.
                await asyncio.sleep(max(wait, MIN_STORE_WAIT))
        finally:
            # Reached on success and on cancellation alike: sleeping or queued waiters are
            # cancelled with their own timers or futures, and aiolimiter discards cancelled
            # futures without charging the bucket. A spend the store recorded for a request
            # that then never went out only lowers the rate.
            self.waiting -= 1

    async def _pay(self) -> float:
        """Record the spend durably before the request leaves; 0 or how long to wait first."""
        if self._ledger is None:
            return 0.0
        # The same bucket as the local one (its SAFETY absorbs requests reaching the upstream
        # a little unevenly after they were paid for), on the wall clock, kept in the store.
        return await self._ledger.spend(
            Charge(self._key_id, self._clock(), self.requests, self.per, self.burst)
        )

    def pause(self, seconds: float) -> None:
        """Stop all acquisitions on this key for ``seconds`` (capped at :data:`MAX_PAUSE`).

        A pause only ever extends: a shorter one while a longer one runs changes nothing.
        Non-positive (or NaN) durations are ignored.
        """
        if not seconds > 0:
            return
        until = asyncio.get_running_loop().time() + min(seconds, MAX_PAUSE)
        self._paused_until = max(self._paused_until, until)

    async def pause_shared(self, seconds: float) -> None:
        """:meth:`pause`, and the same pause kept in the store: every instance on a shared
        store honours it, and so does this one after a restart. A store that refuses only
        loses the durable half (logged); the local pause stands."""
        self.pause(seconds)
        if self._store is None or not seconds > 0:
            return
        until = self._clock() + min(seconds, MAX_PAUSE)
        try:
            await self._store.pause_budget(self._key_id, until)
        except StoreError as exc:
            log.warning("cannot record the 429 pause in the state store: %s", exc)

    def paused_for(self) -> float:
        """Seconds until the current pause ends (0 when not paused)."""
        return max(0.0, self._paused_until - asyncio.get_running_loop().time())
