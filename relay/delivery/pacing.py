"""A subscriber's rate limit in the dispatcher: how many deliveries it may hold, for how long
it leases them, and the limiter every POST passes just before it is sent.

The limit is enforced where a request leaves, with the limiter's clock read at that moment, so
a worker delayed by a slow receiver can never send two requests closer together than the bucket
allows. What keeps a delivery from waiting in the limiter past its lease is the claimer: it holds
only what the limit lets out within :data:`PACE_WINDOW`, and the lease covers that wait.
"""

from __future__ import annotations

import math

from aiolimiter import AsyncLimiter

from relay.config.pace import SubscriberRateLimit
from relay.core.budget import bucket_params

# A rate-limited subscriber holds no more deliveries than its limit lets out in this long: a
# Slack webhook (1/s) holds 10, so a 429 pause or an opened circuit has little to hand back.
PACE_WINDOW = 10.0
# Requests are admitted when they leave, but reach the receiver a little unevenly (one waits
# for a new connection, the next reuses one). The bucket is sized for a window this much longer
# than ``per``, so that jitter of up to this much never puts one request too many in a window.
PACE_SLACK = 0.05


class Pace:
    """Admits POSTs to one subscriber within its ``rate_limit``: at most ``requests`` in any
    window of ``per`` seconds (the proof is in :func:`relay.core.budget.bucket_params`)."""

    def __init__(self, limit: SubscriberRateLimit) -> None:
        per = limit.per + PACE_SLACK
        capacity, period = bucket_params(limit.requests, per, limit.bucket_burst)
        self.capacity = capacity
        self.rate = capacity / period  # requests per second once the burst is spent
        self._limiter = AsyncLimiter(capacity, period)

    def holdable(self, within: float = PACE_WINDOW) -> int:
        """How many deliveries the limit lets out in ``within`` seconds, at least one."""
        return max(1, math.floor(self.rate * within))

    def drain_time(self, held: int) -> float:
        """The longest a delivery can wait in the limiter behind ``held`` others."""
        return held / self.rate

    async def acquire(self) -> None:
        """Wait until one more POST may be sent now (cancellation charges nothing)."""
        await self._limiter.acquire()
