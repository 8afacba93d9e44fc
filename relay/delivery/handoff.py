"""What the claimer and its scheduler agree on: the :class:`Waker` interface a dispatcher uses
to run tasks and ask to be looked at again, and how many claimed deliveries a subscriber may
hold in memory."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, Protocol

MIN_BUFFER = 128  # claimed deliveries a subscriber may hold; claims of half of it amortise well
CLAIMS_PER_WORKER = 16  # buffered deliveries per worker: each claim hands every worker eight


class Waker(Protocol):
    """What a dispatcher needs from its scheduler."""

    def spawn(self, name: str, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` as a task the scheduler owns (logged if it fails, drained at stop)."""

    def wake(self, subscriber: str) -> None:
        """Make sure the subscriber's :meth:`SubscriberDispatcher.run` looks again soon."""

    def at(self, subscriber: str, when: float) -> None:
        """Wake the subscriber at epoch time ``when`` (the earliest request wins)."""


def buffer_size(max_in_flight: int, batch_size: int) -> int:
    """How many claimed deliveries one subscriber may hold in memory (in flight or waiting).

    Twice ``max_in_flight`` keeps every worker busy while the next claim is on its way. Beyond
    that, a claim (one store round trip, one statement, a hand-over to the store's thread and
    back) costs about the same whatever it carries, so the buffer grows with the workers that
    drain it: :data:`CLAIMS_PER_WORKER` per worker, at least :data:`MIN_BUFFER`, and no more
    than ``batch_size`` allows (a claim refills half of it). A slow subscriber with one worker
    keeps the small buffer, so it never holds hours of work it cannot send yet.
    """
    wanted = max(MIN_BUFFER, CLAIMS_PER_WORKER * max_in_flight)
    return max(2 * max_in_flight, min(wanted, 2 * batch_size))
