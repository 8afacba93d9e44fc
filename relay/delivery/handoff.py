"""What the claimer and its scheduler agree on: the :class:`Waker` interface a dispatcher uses
to run tasks and ask to be looked at again, and how many claimed deliveries a subscriber may
hold in memory."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, Protocol

MIN_BUFFER = 128  # claimed deliveries a subscriber may hold; claims of half of it amortise well


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

    Twice ``max_in_flight`` keeps every worker busy while the next claim is on its way; at least
    :data:`MIN_BUFFER` (but no more than ``batch_size`` allows) makes each claim, one store round
    trip and one transaction, carry dozens of deliveries instead of a handful.
    """
    return max(2 * max_in_flight, min(MIN_BUFFER, 2 * batch_size))
