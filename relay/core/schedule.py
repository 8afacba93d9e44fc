"""When each account's polls start (pure; the poller sleeps, this only does the arithmetic).

Polls keep a schedule instead of waiting ``poll_interval`` after each poll ends: a poll due at
``t`` is followed by one due at ``t + poll_interval``, so the time a poll takes (a slow upstream,
a queue on the store) does not push every later poll back. The accounts of one relay start
spread over the interval, so that 10,000 of them are 10,000 polls spread evenly over it, not a
burst every interval that the last of them wait out.
"""

from __future__ import annotations

# Up to START_BURST accounts all poll at once at start-up (a burst the relay takes in well under
# a second); more start at most START_RATE per second, spread over at most one interval.
START_BURST = 100
START_RATE = 200.0
# Offsets are whole multiples of this: the accounts of one slot wake together, in one turn of
# the event loop. Spread one by one, 1,000 accounts at 5 s cost twice the CPU per poll (a turn
# of the loop, its timers and its epoll call, for each), for no gain a slot's width would not
# give.
SLOT = 0.1


def start_offset(index: int, count: int, interval: float) -> float:
    """Seconds after start-up at which account ``index`` of ``count`` polls first.

    Evenly spread over ``min(interval, count / START_RATE)`` when there are more than
    :data:`START_BURST`: never later than one interval, so the spread only decides the phase
    each account then keeps.
    """
    if count <= START_BURST or not interval > 0:
        return 0.0
    spread = min(interval, count / START_RATE)
    return round(int(spread * index / count / SLOT) * SLOT, 6)


def next_due(due: float, interval: float, now: float) -> float:
    """When the poll after the one due at ``due`` is due, on the loop clock, as of ``now``.

    One interval later, on the schedule; but never in the past: a relay that fell behind (a
    poll longer than an interval, a stalled machine) polls at once and keeps the new phase
    rather than sending a burst of the polls it missed.
    """
    return max(due + interval, now)
