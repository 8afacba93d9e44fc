"""How often each account is polled with ``poll_interval: auto`` (pure).

An API key's budget (``requests`` per ``per`` seconds) is spent on polls, split evenly among the
accounts that share the key, minus a :data:`RESERVE`. The floor for one key is the leaky bucket's
steady rate (:func:`relay.core.budget.bucket_params`), so with ``N`` accounts on the key::

    spacing  = per * (1 + SAFETY) / (requests + 1 - burst)     # seconds per request, the bucket
    interval = max(MIN_INTERVAL, N * spacing / (1 - RESERVE))   # seconds between polls, each

A call becomes visible at a uniformly random moment between two polls of its account, so it
waits for the next poll ``q * interval`` at the q-th quantile: p50 about ``interval / 2`` plus
the fetch, p99 about ``0.99 * interval`` plus the fetch (:func:`latency_floor`).

An instance that polls many keys is also bounded by its own cost: all its accounts together
poll at most ``host_rate`` times a second (``upstream.auto_max_polls_per_second``), so with
``A`` accounts on the instance ``interval >= A / host_rate``. One account per key, the default
budget and a cap of 200/s: 100 accounts poll every 1.13 s, 1,000 every 5 s, 10,000 every 50 s.

The accounts of one key poll in fixed slots, ``(n + (k + h) / N) * interval`` seconds since the
Unix epoch for the k-th of them by name, where ``h`` in [0, 1) is a stable hash of the key's
account names: evenly apart in phase, so they do not all reach the bucket at once and queue
there; keys spread over the interval, so a host with many keys does not poll them all in the
same instant; and the same slots on every instance that shares the key.
"""

from __future__ import annotations

import math
import zlib
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
# The default of ``upstream.auto_max_polls_per_second``: what 1,000 accounts cost at the fixed
# 5 s interval that was the default before auto (bench section 12 has the CPU per poll).
HOST_RATE = 200.0


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
    host_accounts: int = 0,
    host_rate: float = HOST_RATE,
) -> float:
    """Seconds between two polls of each of ``accounts`` accounts that share one key's budget,
    on an instance that polls ``host_accounts`` accounts in all at most ``host_rate`` a second."""
    if accounts < 1:
        raise ValueError("accounts must be at least 1")
    if not 0.0 <= reserve < 1.0:
        raise ValueError("reserve must be in [0, 1)")
    if not host_rate > 0:
        raise ValueError("host_rate must be positive")
    budget = accounts * budget_spacing(requests, per, burst) / (1.0 - reserve)
    return max(minimum, budget, max(host_accounts, accounts) / host_rate)


def phase(name: str, names: Sequence[str]) -> float:
    """The fraction of an interval by which ``name`` is offset among the accounts ``names``
    of one key (sorted by name: every instance with the same configuration agrees), shifted by
    the key's :func:`key_shift` so that keys do not share slots."""
    ordered = sorted(set(names))
    if name not in ordered:
        return 0.0
    return (ordered.index(name) + key_shift(ordered)) / len(ordered) % 1.0


def key_shift(names: Sequence[str]) -> float:
    """A stable fraction in [0, 1) for the accounts of one key (a hash of their sorted names,
    the same in every process: not Python's salted ``hash``)."""
    return zlib.crc32("\n".join(sorted(set(names))).encode()) / 2**32


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
