"""A subscriber's circuit breaker and 429 pause, as a pure state machine.

Every transition is a function of the current :class:`Circuit`, the policy and ``now`` (epoch
seconds), returning the next :class:`Circuit` and what changed (:class:`Change`). The
dispatcher applies them, persists the result in the store (so an open circuit or a pause
survives a restart) and logs the change.

* **Closed** (``opened_at`` None): deliveries go out at the subscriber's pace. Each failed
  attempt (no answer, 408, 5xx, or a 4xx that is retried) adds to ``failures``; a success resets
  it. ``threshold`` consecutive failures open the circuit.
* **Open**: one probe at a time, the oldest delivery, on its retry schedule; the others wait
  without spending attempts. A successful probe closes the circuit.
* A failure when the subscriber has been failing without a break for ``disable_after`` seconds
  (``failing_since``) asks for the subscriber to be disabled.
* A 429 is neither: the receiver is alive and asks us to slow down. It only sets a pause
  (``paused_until``) during which nothing at all is sent; a pause only ever extends.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace


class Change(enum.Enum):
    """What a transition did, for logging and for the dispatcher to react to."""

    NONE = "none"  # nothing worth persisting or logging
    COUNTED = "counted"  # one more (or no more) consecutive failure, circuit unchanged
    OPENED = "opened"
    CLOSED = "closed"
    DISABLE = "disable"  # failing for disable_after: the subscriber must be disabled
    PAUSED = "paused"


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    """When a circuit opens and when a subscriber that keeps failing is given up on."""

    threshold: int = 5
    disable_after: float = 5 * 86400.0

    def __post_init__(self) -> None:
        if self.threshold < 1:
            raise ValueError("threshold must be at least 1")
        if not self.disable_after > 0:
            raise ValueError("disable_after must be positive")


@dataclass(frozen=True, slots=True)
class Circuit:
    """One subscriber's breaker and pause state (what the store keeps)."""

    failures: int = 0  # consecutive failed attempts
    failing_since: float | None = None  # the first failure of the current run of failures
    opened_at: float | None = None  # None: closed
    paused_until: float | None = None  # a 429 asked for quiet until then

    @property
    def is_open(self) -> bool:
        """True while only probes may be sent."""
        return self.opened_at is not None

    def paused(self, now: float) -> bool:
        """True while a 429 pause is in force at ``now``."""
        return self.paused_until is not None and now < self.paused_until

    @property
    def state(self) -> str:
        """``closed`` or ``open``: the name status output shows."""
        return "open" if self.is_open else "closed"


CLOSED = Circuit()


def on_success(circuit: Circuit) -> tuple[Circuit, Change]:
    """A delivery succeeded: the run of failures ends and an open circuit closes.

    The pause is kept: a success from a request sent before a 429 arrived says nothing about
    the receiver's wish for quiet.
    """
    if circuit.is_open:
        return Circuit(paused_until=circuit.paused_until), Change.CLOSED
    if circuit.failures or circuit.failing_since is not None:
        return Circuit(paused_until=circuit.paused_until), Change.COUNTED
    return circuit, Change.NONE


def on_failure(circuit: Circuit, policy: BreakerPolicy, now: float) -> tuple[Circuit, Change]:
    """A delivery attempt failed in a way that says the receiver is not well.

    Disabling wins over opening: a subscriber failing for ``disable_after`` is given up on
    whatever its circuit does.
    """
    since = circuit.failing_since if circuit.failing_since is not None else now
    failures = circuit.failures + 1
    opened_at = circuit.opened_at
    change = Change.COUNTED
    if opened_at is None and failures >= policy.threshold:
        opened_at, change = now, Change.OPENED
    nxt = replace(circuit, failures=failures, failing_since=since, opened_at=opened_at)
    if now - since >= policy.disable_after:
        return nxt, Change.DISABLE
    return nxt, change


def on_pause(circuit: Circuit, now: float, seconds: float) -> tuple[Circuit, Change]:
    """A 429 asked for ``seconds`` of quiet (already capped by the caller); a pause only ever
    extends, and a non-positive or NaN request changes nothing."""
    if not seconds > 0:
        return circuit, Change.NONE
    until = now + seconds
    if circuit.paused_until is not None and circuit.paused_until >= until:
        return circuit, Change.NONE
    return replace(circuit, paused_until=until), Change.PAUSED


def on_reset() -> Circuit:
    """The subscriber was re-enabled by an operator: start again from a closed circuit."""
    return CLOSED


def probe_attempts(attempts_made: int, schedule_length: int) -> int:
    """The schedule position for an open circuit's probe: while the circuit is open a probe
    that fails again keeps the last retry interval instead of running out of schedule, so a
    receiver down longer than the schedule loses nothing to the dead-letter store."""
    return max(1, min(attempts_made, schedule_length))
