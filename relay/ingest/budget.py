"""The upstream request budget of one API key: at most ``requests`` in any ``per`` seconds.

WebFones allows a fixed number of requests per window per API key (1000 per 15 minutes today).
Accounts that share a key share one :class:`KeyBudget`. Time comes only from the event loop's
clock, so tests drive it with virtual time instead of sleeping.
"""

from __future__ import annotations

import asyncio

from aiolimiter import AsyncLimiter

from relay.core.budget import MAX_PAUSE, bucket_params, default_burst


class KeyBudget:
    """Admits upstream requests for one API key within its budget, and honours 429 pauses.

    ``acquire()`` waits for both: no pause in force, and room in the leaky bucket. ``pause()``
    after a 429 stops every poller on the key until the pause ends.
    """

    def __init__(self, requests: int, per: float, burst: int | None = None) -> None:
        capacity, period = bucket_params(
            requests, per, default_burst(requests) if burst is None else burst
        )
        self.requests = requests
        self.per = per
        self._limiter = AsyncLimiter(capacity, period)
        self._paused_until = float("-inf")  # loop time
        self.waiting = 0  # acquirers currently blocked, for status and tests

    async def acquire(self) -> None:
        """Wait until a request on this key may be sent now."""
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
                if self._paused_until <= loop.time():
                    return
                # A pause began while we queued in the bucket. Sending after it ends would use
                # a token taken before it, on top of the burst that builds up during the pause,
                # and break the window bound; so this token is forfeited (which can only lower
                # the rate) and a fresh one is taken once the pause is over.
        finally:
            # Reached on success and on cancellation alike: sleeping or queued waiters are
            # cancelled with their own timers or futures, and aiolimiter discards cancelled
            # futures without charging the bucket.
            self.waiting -= 1

    def pause(self, seconds: float) -> None:
        """Stop all acquisitions on this key for ``seconds`` (capped at :data:`MAX_PAUSE`).

        A pause only ever extends: a shorter one while a longer one runs changes nothing.
        Non-positive (or NaN) durations are ignored.
        """
        if not seconds > 0:
            return
        until = asyncio.get_running_loop().time() + min(seconds, MAX_PAUSE)
        self._paused_until = max(self._paused_until, until)

    def paused_for(self) -> float:
        """Seconds until the current pause ends (0 when not paused)."""
        return max(0.0, self._paused_until - asyncio.get_running_loop().time())
