"""Budget arithmetic for one API key: leaky-bucket parameters that admit at most ``requests``
in any window of ``per`` seconds (pure; the bucket itself lives in :mod:`relay.ingest.budget`)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

# The rate is shrunk by this fraction: it absorbs float rounding and, more usefully, jitter in
# how long a request takes to reach the upstream (1% of a 15-minute window is 9 s).
SAFETY = 0.01
MAX_PAUSE = 3600.0  # a Retry-After longer than this is not believed; we look again after it
MIN_WAIT = 0.001  # the shortest wait bucket_spend answers


@dataclass(frozen=True, slots=True)
class Charge:
    """One upstream request to pay for in key ``key_id``'s durable bucket at ``now`` (the
    arguments of :meth:`relay.store.base.Store.spend_budget`, for ``spend_budgets``)."""

    key_id: str
    now: float
    requests: int
    per: float
    burst: int | None = None


def key_id(api_key: str) -> str:
    """The name under which an API key's spends are stored: 16 hex digits of its SHA-256.

    Stable across restarts and processes (the store keys the durable window by it), and never
    the key itself: the state file and its backups are no place for a credential.
    """
    return hashlib.sha256(api_key.encode()).hexdigest()[:16]


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


def bucket_spend(
    level: float, at: float, now: float, capacity: float, rate: float
) -> tuple[float, float, float]:
    """Try one request against a leaky bucket that held ``level`` at time ``at``.

    The bucket drains at ``rate`` per second and holds at most ``capacity`` (see
    :func:`bucket_params`). Returns ``(level, at, wait)`` afterwards: ``wait`` is 0 when the
    request is admitted (the level is one higher), else the seconds until one would fit
    (nothing charged; never under :data:`MIN_WAIT`). Time never runs backwards: a ``now``
    before ``at`` drains nothing, so a caller whose clock lags cannot empty a bucket that
    another filled.
    """
    t = max(at, now)
    drained = max(0.0, level - rate * (t - at))
    if drained + 1 <= capacity:
        return drained + 1, t, 0.0
    # At least a millisecond: a float-rounding sliver of a wait would not move the clock.
    return drained, t, max((drained + 1 - capacity) / rate, MIN_WAIT)
