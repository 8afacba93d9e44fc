"""Delivery retry policy and upstream back-off, as pure functions of their inputs.

Randomness is an input too: callers pass ``jitter`` (``random.random()`` in production, fixed
values in tests), so every decision here is reproducible.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Sequence
from datetime import UTC
from email.utils import parsedate_to_datetime

# A Retry-After beyond this is treated as this: a confused server must not park work for years,
# and callers apply their own, tighter caps on top.
RETRY_AFTER_CEILING = 86400.0
JITTER_SPREAD = 0.1  # a scheduled delay moves by up to ±10%

_DELTA_SECONDS = re.compile(r"[0-9]+(?:\.[0-9]+)?", re.ASCII)


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds from ``now`` that a ``Retry-After`` header asks for, or None if absent or garbage.

    Accepts delta-seconds (``"120"``; a decimal fraction is tolerated) and an HTTP-date
    (``"Wed, 21 Oct 2015 07:28:00 GMT"``). A date in the past gives 0. Negative numbers, ``inf``
    and ``nan`` are garbage (None). Results are capped at :data:`RETRY_AFTER_CEILING`.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if _DELTA_SECONDS.fullmatch(text):
        return min(float(text), RETRY_AFTER_CEILING)
    if not text[0].isalpha():
        return None  # "-5", "1e3", "12abc": an HTTP-date always starts with the day name
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)  # "-0000" means UTC with no claim about local time
    return min(max(when.timestamp() - now, 0.0), RETRY_AFTER_CEILING)


class Verdict(enum.Enum):
    """What an HTTP result means for a delivery."""

    SUCCESS = "success"
    RETRY = "retry"
    GONE = "gone"  # 410: the receiver asks us to stop; the subscriber is disabled
    FAIL = "fail"  # retrying cannot help: dead-letter now


def classify(status: int | None, *, retry_on_4xx: bool) -> Verdict:
    """Classify one delivery attempt by its HTTP status (None: no response at all).

    * None (timeout, refused, reset) -> RETRY
    * 2xx -> SUCCESS; 410 -> GONE
    * 408, 429, 5xx -> RETRY (the receiver is busy or broken, which passes)
    * 1xx/3xx -> RETRY: redirects are not followed, so they count as failed attempts
    * other 4xx -> FAIL, or RETRY when the subscriber sets ``retry_on_4xx`` (a receiver that
      answers 400 while it is being deployed, say)
    * anything outside 100-599 -> RETRY, like a server error
    """
    if status is None:
        return Verdict.RETRY
    if 200 <= status < 300:
        return Verdict.SUCCESS
    if status == 410:
        return Verdict.GONE
    if 400 <= status < 500 and status not in (408, 429):
        return Verdict.RETRY if retry_on_4xx else Verdict.FAIL
    return Verdict.RETRY


def next_attempt_at(
    schedule: Sequence[float],
    attempts_made: int,
    now: float,
    *,
    jitter: float,
    retry_after: float | None = None,
    max_retry_after: float = 3600,
) -> float | None:
    """When to make the next attempt, or None when the schedule is exhausted (dead letter).

    ``attempts_made`` counts every attempt so far, including the one that just failed, so the
    delay before attempt ``k + 1`` is ``schedule[k - 1]``; with ``len(schedule)`` retries the
    delivery gets ``len(schedule) + 1`` attempts in all.

    Jitter rule: the scheduled delay is multiplied by ``1 + 0.2 * (jitter - 0.5)``, i.e. spread
    uniformly over ``[0.9, 1.1)`` of itself, so receivers that failed together do not all come
    back in the same second. A receiver's ``retry_after`` (seconds) can only lengthen the delay,
    and is capped at ``max_retry_after``: ``delay = max(jittered, min(retry_after, cap))``.
    """
    if attempts_made < 1:
        raise ValueError("attempts_made counts the attempt that just failed, so it is >= 1")
    if not 0.0 <= jitter < 1.0:
        raise ValueError("jitter must be in [0, 1)")
    if attempts_made > len(schedule):
        return None
    delay = max(schedule[attempts_made - 1], 0.0) * (1.0 + 2 * JITTER_SPREAD * (jitter - 0.5))
    if retry_after is not None and retry_after > 0:  # also drops NaN
        delay = max(delay, min(retry_after, max_retry_after))
    return now + delay


def upstream_backoff(failures: int, *, base: float, cap: float, jitter: float) -> float:
    """Delay after ``failures`` consecutive failed polls (``failures >= 1``).

    Exponential: ``base * 2 ** (failures - 1)``, capped at ``cap``. "Equal jitter": half of that
    is fixed and the other half is scaled by ``jitter`` in [0, 1), so the result lies in
    ``[d/2, d)`` and never collapses to zero (which would hammer a struggling upstream).
    """
    if failures < 1:
        raise ValueError("failures must be >= 1")
    if not 0.0 <= jitter < 1.0:
        raise ValueError("jitter must be in [0, 1)")
    # Clamp the exponent: 2.0 ** 1100 overflows, and past 2 ** 64 the cap has long won anyway.
    delay = min(cap, base * math.ldexp(1.0, min(failures - 1, 64)))
    half = delay / 2
    return half + half * jitter
