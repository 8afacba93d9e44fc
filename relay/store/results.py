"""What an attempt's result does to its delivery row, the same on every backend: the state it
leaves, when it is due again, and the ``updated_at`` it is stamped with."""

from __future__ import annotations

from collections.abc import Sequence

from relay.core.models import Finished, Outcome

GONE_REASON = "410 Gone"  # why a subscriber that answered 410 is disabled

STATE_AFTER = {
    Outcome.DELIVERED: "delivered",
    Outcome.RETRY: "pending",
    Outcome.DEAD: "dead",
    Outcome.GONE: "pending",  # kept for when the subscriber is re-enabled
}


def due_after(f: Finished) -> float | None:
    """When the delivery is due again: its retry time (a 410 without one: at once, for when the
    subscriber is re-enabled), or None to leave ``next_at`` as it is."""
    if f.outcome in (Outcome.RETRY, Outcome.GONE):
        return f.next_at if f.next_at is not None else f.attempt.at
    return None


def updated_stamps(results: Sequence[Finished]) -> list[float]:
    """The ``updated_at`` each result gives its delivery: the attempt's own time, except that
    the delivered results of one batch with the same status share the latest of theirs, so a
    backend writes them as one statement with nothing per row but the id. A batch spans
    milliseconds, and each attempt keeps its exact time in the attempts history."""
    latest: dict[int | None, float] = {}
    for f in results:
        if f.outcome is Outcome.DELIVERED:
            at, status = f.attempt.at, f.attempt.status
            seen = latest.get(status)
            latest[status] = at if seen is None or at > seen else seen
    return [
        latest[f.attempt.status] if f.outcome is Outcome.DELIVERED else f.attempt.at
        for f in results
    ]
