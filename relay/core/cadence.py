"""How often each account is polled with ``poll_interval: auto`` (pure).

An API key's budget (``requests`` per ``per`` seconds) is spent on polls, split evenly among the
accounts that share the key, minus a :data:`RESERVE`. The floor for one key is the leaky bucket's
steady rate (:func:`relay.core.budget.bucket_params`), so with ``N`` accounts on the key::

    spacing  = per * (1 + SAFETY) / (requests + 1 - burst)     # seconds per request, the bucket
    interval = max(MIN_INTERVAL, N * spacing / (1 - RESERVE))   # seconds between polls, each

A call becomes visible at a uniformly random moment between two polls of its account, so it
waits for the next poll ``q * interval`` at the q-th quantile: p50 about ``interval / 2`` plus
the fetch, p99 about ``0.99 * interval`` plus the fetch (:func:`latency_floor`).

The accounts of one key poll in fixed slots, ``(n + k / N) * interval`` seconds since the Unix
epoch for the k-th of them by name: evenly apart in phase, so they do not all reach the bucket
at once and queue there, and the same slots on every instance that shares the key.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from relay.core.budget import bucket_params, default_burst

# The share of the budget auto leaves unspent. Sweeps cost no extra request (a sweep is a poll
# that reads further back), but the first retry after an error comes half to one interval after
# it (relay.core.retry.upstream_backoff), and a restart, a reload or a lease moving to another
# instance polls once out of its slot. The durable bucket bounds all of it anyway; the reserve
# keeps such extras from queueing the scheduled polls behind them.
RESERVE = 0.10
# Never faster than this per account, however large the budget: call_timestamp has whole-second
# resolution, and every poll re-reads the recent window.
MIN_INTERVAL = 1.0


def budget_spacing(requests: int, per: float, burst: int | None = None) -> float:
    """Seconds between requests at the key's steady rate: its leaky bucket's drain rate."""
    capacity, period = bucket_params(
        requests, per, default_burst(requests) if burst is None else burst
    )
    return period / capacity


def auto_interval(
    requests: int,
    per: float,
    accounts: int,
    burst: int | None = None,
    *,
    reserve: float = RESERVE,
    minimum: float = MIN_INTERVAL,
) -> float:
    """Seconds between two polls of each of ``accounts`` accounts that share one key's budget."""
    if accounts < 1:
        raise ValueError("accounts must be at least 1")
    if not 0.0 <= reserve < 1.0:
        raise ValueError("reserve must be in [0, 1)")
    return max(minimum, accounts * budget_spacing(requests, per, burst) / (1.0 - reserve))


def phase(name: str, names: Sequence[str]) -> float:
    """The fraction of an interval by which ``name`` is offset among the accounts ``names``
    of one key (sorted by name: every instance with the same configuration agrees)."""
    ordered = sorted(set(names))
    if name not in ordered:
        return 0.0
    return ordered.index(name) / len(ordered)


def next_slot(now: float, interval: float, offset: float) -> float:
    """The first instant strictly after ``now`` of the form ``(n + offset) * interval``."""
    if not interval > 0:
        raise ValueError("interval must be positive")
    shift = offset * interval
    slot = (math.floor((now - shift) / interval) + 1) * interval + shift
    # Float rounding can land a hair on the wrong side of `now`: one step either way fixes it.
    if slot <= now:
        slot += interval
    elif slot - interval > now:
        slot -= interval
    return slot


def latency_floor(interval: float, quantile: float, fetch: float = 0.0) -> float:
    """The ``quantile`` (0..1) of the wait from a call becoming visible to the poll that finds
    it, plus ``fetch`` (the request and ingest): a relay with no other delay gets this."""
    if not 0.0 <= quantile <= 1.0:
        raise ValueError("quantile must be in [0, 1]")
    return quantile * interval + fetch
