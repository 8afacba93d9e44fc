"""A subscriber's rate limit in the dispatcher: how many deliveries it may hold, for how long
it leases them, and the limiter every POST passes just before it is sent.

The limit is enforced where a request leaves, with the limiter's clock read at that moment, so
a worker delayed by a slow receiver can never send two requests closer together than the bucket
allows. Each POST is also charged to the same bucket in the store (``spend_budget``, keyed by
the subscriber's name), so the limit holds across a restart and, on PostgreSQL, across every
instance sending to that subscriber. What keeps a delivery from waiting in the limiter past its
lease is the claimer: it holds only what the limit lets out within :data:`PACE_WINDOW`, and the
lease covers that wait.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable

from aiolimiter import AsyncLimiter

from relay.config.pace import SubscriberRateLimit
from relay.core.budget import bucket_params
from relay.core.errors import StoreError
from relay.store.base import Store

log = logging.getLogger(__name__)

# A rate-limited subscriber holds no more deliveries than its limit lets out in this long: a
# Slack webhook (1/s) holds 10, so a 429 pause or an opened circuit has little to hand back.
PACE_WINDOW = 10.0
# Requests are admitted when they leave, but reach the receiver a little unevenly (one waits
# for a new connection, the next reuses one). The bucket is sized for a window this much longer
# than ``per``, so that jitter of up to this much never puts one request too many in a window.
PACE_SLACK = 0.05
STORE_RETRY = 1.0  # the store could not charge the shared bucket: ask again this much later


class Pace:
    """Admits POSTs to one subscriber within its ``rate_limit``: at most ``requests`` in any
    window of ``per`` seconds (the proof is in :func:`relay.core.budget.bucket_params`)."""

    def __init__(
        self,
        limit: SubscriberRateLimit,
        store: Store | None = None,
        key_id: str = "",
        clock: Callable[[], float] = time.time,
    ) -> None:
        per = limit.per + PACE_SLACK
        capacity, period = bucket_params(limit.requests, per, limit.bucket_burst)
        self.capacity = capacity
        self.rate = capacity / period  # requests per second once the burst is spent
        self._limiter = AsyncLimiter(capacity, period)
        self._shared = (limit.requests, per, limit.bucket_burst)
        self._store = store
        self._key_id = key_id
        self._clock = clock

    def holdable(self, within: float = PACE_WINDOW) -> int:
        """How many deliveries the limit lets out in ``within`` seconds, at least one."""
        return max(1, math.floor(self.rate * within))

    def drain_time(self, held: int) -> float:
        """The longest a delivery can wait in the limiter behind ``held`` others."""
        return held / self.rate

    async def acquire(self) -> None:
        """Wait until one more POST may be sent now (cancellation charges nothing).

        The local bucket spaces this process's POSTs without a store round trip each; the
        store's bucket then charges the POST where every process (and the next one, after a
        restart) sees it, and says how long to wait when another already spent the room.
        """
        await self._limiter.acquire()
        if self._store is None:
            return
        requests, per, burst = self._shared
        while True:
            try:
                wait = await self._store.spend_budget(
                    self._key_id, self._clock(), requests, per, burst
                )
            except StoreError as exc:
                log.warning("cannot charge the rate limit yet: %s", exc)
                wait = STORE_RETRY
            if wait <= 0:
                return
            await asyncio.sleep(wait)
