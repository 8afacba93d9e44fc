"""The upstream request budget of one API key: at most ``requests`` in any ``per`` seconds.

WebFones allows a fixed number of requests per window per API key (1000 per 15 minutes today).
Accounts that share a key share one :class:`KeyBudget`. Time comes only from the event loop's
clock, so tests drive it with virtual time instead of sleeping.
"""

from __future__ import annotations

import asyncio

from aiolimiter import AsyncLimiter

# The rate is shrunk by this fraction: it absorbs float rounding and, more usefully, jitter in
# how long a request takes to reach the upstream (1% of a 15-minute window is 9 s).
SAFETY = 0.01
MAX_PAUSE = 3600.0  # a Retry-After longer than this is not believed; we look again after it


def default_burst(requests: int) -> int:
    """How many requests may go out back to back: 5% of the budget, between 1 and 10."""
    return max(1, min(10, requests // 20))


def bucket_params(requests: int, per: float, burst: int) -> tuple[float, float]:
    """Leaky-bucket ``(capacity, time_period)`` for ``AsyncLimiter`` so that any closed window
    of ``per`` seconds admits at most ``requests``.

    aiolimiter's bucket has capacity ``b`` (= ``max_rate``) and drains ``b`` per
    ``time_period``, i.e. at rate ``r = b / time_period``. Each admission adds 1 to the level and
    is allowed only if the level is then at most ``b``.

    Proof. Take admissions ``1..N`` at times ``t_1 <= ... <= t_N`` inside a closed window of
    length ``per``, and let ``l_k`` be the level just before admission ``k``. Between two
    admissions the level falls by at most ``r`` times the elapsed time, so
    ``l_N >= l_1 + (N - 1) - r (t_N - t_1) >= N - 1 - r * per`` (as ``l_1 >= 0``). Admission
    ``N`` needs ``l_N + 1 <= b``, hence ``N <= b + r * per``. N is an integer, so
    ``b + r * per < requests + 1`` already guarantees ``N <= requests``.

    We take ``r = (requests + 1 - b) / (per * (1 + SAFETY))``. Then ``b + r * per`` falls short
    of ``requests + 1`` by ``(requests + 1 - b) * SAFETY / (1 + SAFETY)``, at least ~0.0099 for
    any ``b <= requests``: far above float rounding error. The same slack means any window of
    ``per * (1 + SAFETY)`` also holds at most ``requests``, so requests may reach the upstream
    up to ``per * SAFETY`` seconds more unevenly than they left. Using ``requests + 1`` rather
    than ``requests`` is what lets ``requests=1`` work (``b=1``, one request every
    ``per * (1 + SAFETY)`` seconds), where the non-integer bound would leave a rate of zero.
    """
    if requests < 1:
        raise ValueError("requests must be at least 1")
    if not per > 0:
        raise ValueError("per must be positive")
    if not 1 <= burst <= requests:
        raise ValueError("burst must be between 1 and requests")
    rate = (requests + 1 - burst) / (per * (1 + SAFETY))
    return float(burst), burst / rate


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
